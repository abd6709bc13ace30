"""Plot a family's Omniglot results beside the published numbers, and its validation curves.

Reads the training records (bench/results/NAME.json, written by bench/train_eval.py), the extra
evaluations (bench/results/evals.json, written by bench/record_evals.py) and, for the curves, each run's
metrics.jsonl. Writes docs/<family>_family_omniglot.png (test accuracy beside the papers') and, for the
optimisation family, docs/optimization_family_curves.png (validation accuracy against training time).

    python bench/plot_family.py metric
    python bench/plot_family.py optimization
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from common import RESULTS, ROOT, save_figure, validation_curve  # noqa: E402


@dataclass(frozen=True)
class Family:
    title: str
    settings: list[tuple[int, int]]
    #: Published Omniglot accuracies (%) per setting, for comparison only (None: not published).
    published: dict[str, list[float | None]]
    #: The training records whose checkpoints the bars may use, per method; each bar shows the highest of
    #: them (every run is in the tables of docs/results.md).
    runs: dict[str, list[str]]
    y_min: float


FAMILIES = {
    # Snell et al. 2017, Vinyals et al. 2016, Sung et al. 2018.
    "metric": Family(
        title="Metric-based methods on Omniglot (Vinyals split), CPU budgets of <= 45 min per run",
        settings=[(5, 1), (5, 5), (20, 1), (20, 5)],
        published={
            "ProtoNet": [98.8, 99.7, 96.0, 98.9],
            "Matching Nets": [98.1, 98.9, 93.8, 98.5],
            "Relation Nets": [99.6, 99.8, 97.6, 99.1],
        },
        runs={
            "ProtoNet": [
                "protonet_omniglot_1shot_long",
                "protonet_omniglot_1shot_trainval",
                "protonet_omniglot_1shot_trainval_4800",
            ],
            "Matching Nets": ["matching_omniglot_5w1s_scaled"],
            "Relation Nets": [
                "relation_omniglot_5w1s_long",
                "relation_omniglot_5w1s_fast",
                "relation_omniglot_20w1s",
                "relation_omniglot_5w5s",
                "relation_omniglot_5w1s_trainval",
                "relation_omniglot_20w1s_trainval",
                "relation_omniglot_20w5s_trainval",
            ],
        },
        y_min=85,
    ),
    # Finn et al. 2017 (MAML, first-order MAML), Nichol et al. 2018 (Reptile, transductive), Li et al. 2017
    # (Meta-SGD), Raghu et al. 2020 (ANIL reports 20-way only).
    "optimization": Family(
        title="Optimisation-based methods on Omniglot, <= 60 min per run on a 2-core CPU (one core unless '2proc')",
        settings=[(5, 1), (20, 1)],
        published={
            "MAML": [98.7, 95.8],
            "MAML (paper's split)": [98.7, 95.8],
            "first-order MAML": [98.3, 89.4],
            "Reptile": [97.68, 89.43],
            "Meta-SGD": [99.53, 95.93],
            "ANIL": [None, 96.2],
        },
        runs={
            "MAML": [
                "maml_omniglot_5w1s_trainval",
                "maml_omniglot_20w1s_trainval",
                "maml_omniglot_20w1s_trainval_2proc",
            ],
            # Test characters drawn at random from every alphabet, as in Finn et al.'s code (--split maml).
            "MAML (paper's split)": ["maml_omniglot_5w1s_mamlsplit", "maml_omniglot_5w1s_mamlsplit_90min"],
            "first-order MAML": ["fomaml_omniglot_5w1s_trainval", "fomaml_omniglot_20w1s_trainval"],
            "Reptile": [
                "reptile_omniglot_5w1s_trainval",
                "reptile_omniglot_5w1s_trainval_carried",
                "reptile_omniglot_20w1s_trainval",
            ],
            "Meta-SGD": ["metasgd_omniglot_5w1s_trainval", "metasgd_omniglot_20w1s_trainval"],
            "ANIL": ["anil_omniglot_5w1s_trainval", "anil_omniglot_20w1s_trainval"],
        },
        y_min=65,
    ),
}


def _records(names: list[str]) -> list[dict]:
    return [json.loads(p.read_text()) for p in (RESULTS / f"{n}.json" for n in names) if p.exists()]


def measured(family: Family, method: str) -> dict[tuple[int, int], tuple[float, float, str]]:
    """Best measured (accuracy %, CI %, run) per (ways, shots) over the method's runs."""
    evals = json.loads((RESULTS / "evals.json").read_text()) if (RESULTS / "evals.json").exists() else []
    out: dict[tuple[int, int], tuple[float, float, str]] = {}
    for record in _records(family.runs[method]):
        run_dir = str(Path(record["eval"]["checkpoint"]).parent)
        results = [record["eval"]] + [e["eval"] for e in evals if str(Path(e["eval"]["checkpoint"]).parent) == run_dir]
        for r in results:
            key = (r["ways"], r["shots"])
            value = (100 * r["accuracy_mean"], 100 * r["accuracy_ci95"], record["name"])
            if key not in out or value[0] > out[key][0]:
                out[key] = value
    return out


def plot_accuracy(name: str, family: Family) -> None:
    fig, axes = plt.subplots(
        1, len(family.settings), figsize=(max(3.5 * len(family.settings) + 1, 10), 4.2), squeeze=False
    )
    best = {method: measured(family, method) for method in family.published}  # read each record once
    for ax, setting in zip(axes[0], family.settings):
        for i, method in enumerate(family.published):
            got = best[method].get(setting)
            published = family.published[method][family.settings.index(setting)]
            if published is not None:
                ax.bar(i - 0.2, published, 0.4, color="lightgray", edgecolor="gray", hatch="//",
                       label="published" if i == 0 else None)  # fmt: skip
            if got:
                ax.bar(
                    i + 0.2, got[0], 0.4, yerr=got[1], capsize=3, color=f"C{i}", label="measured" if i == 0 else None
                )
                ax.text(i + 0.2, got[0] + got[1] + 0.1, f"{got[0]:.1f}", ha="center", fontsize=8)
        ax.set_xticks(range(len(family.published)), list(family.published), rotation=20, fontsize=8)
        ax.set_ylim(family.y_min, 100.5)
        ax.set_title(f"{setting[0]}-way {setting[1]}-shot")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (%), 600 episodes, 95% CI")
    axes[0][0].legend(loc="lower left", fontsize=8)
    fig.suptitle(family.title)
    fig.tight_layout()
    target = ROOT / "docs" / f"{name}_family_omniglot.png"
    save_figure(fig, target)
    print(f"wrote {target.relative_to(ROOT)}")


def plot_curves(name: str, family: Family) -> None:
    """Validation accuracy against training minutes, one panel per episode shape, one line per run."""
    fig, axes = plt.subplots(1, len(family.settings), figsize=(6 * len(family.settings), 4.2), squeeze=False)
    for i, method in enumerate(family.published):
        for record in _records(family.runs[method]):
            setting = (record["eval"]["ways"], record["eval"]["shots"])
            if setting not in family.settings:
                continue
            metrics_path = ROOT / Path(record["eval"]["checkpoint"]).parent / "metrics.jsonl"
            if "validation_curve" in record:  # kept in the record by bench/train_eval.py
                curve = record["validation_curve"]
            elif metrics_path.exists():
                curve = validation_curve(metrics_path)
            else:
                continue
            ax = axes[0][family.settings.index(setting)]
            style = "--" if "trainval" not in record["name"] else "-"
            label = f"{method} ({record['name']})"
            ax.plot(curve["minutes"], curve["accuracy"], style, marker="o", ms=3, color=f"C{i}", label=label)
    for ax, setting in zip(axes[0], family.settings):
        ax.set_title(f"{setting[0]}-way {setting[1]}-shot: validation accuracy (100-200 episodes)", fontsize=10)
        ax.set_xlabel("training time (min; one CPU core, both for '2proc' runs)")
        ax.set_ylabel("validation accuracy (%)")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7, loc="lower right")
        else:
            ax.text(0.5, 0.5, "no run yet", ha="center", transform=ax.transAxes, color="gray")
    footnote = (
        "solid: trained on train + validation characters (the papers' 1200), so validation is optimistic; "
        "dashed: validation characters unseen in training (--split maml: 1100 / 100 / 423)"
    )
    fig.text(0.5, 0.01, footnote, ha="center", fontsize=8)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    target = ROOT / "docs" / f"{name}_family_curves.png"
    save_figure(fig, target)
    print(f"wrote {target.relative_to(ROOT)}")


def main() -> None:
    names = sys.argv[1:] or list(FAMILIES)
    for name in names:
        plot_accuracy(name, FAMILIES[name])
        if name == "optimization":
            plot_curves(name, FAMILIES[name])


if __name__ == "__main__":
    main()
