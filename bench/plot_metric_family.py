"""Plot the metric family's Omniglot results beside the published numbers: docs/metric_family_omniglot.png.

Reads the training records (bench/results/NAME.json, written by bench/train_eval.py) and the extra
evaluations (bench/results/evals.json, written by bench/record_evals.py).

    python bench/plot_metric_family.py
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from common import ROOT, save_figure  # noqa: E402

RESULTS = ROOT / "bench" / "results"
SETTINGS = [(5, 1), (5, 5), (20, 1), (20, 5)]
#: Published Omniglot accuracies (%), for comparison only: Snell et al. 2017, Vinyals et al. 2016, Sung et al. 2018.
PUBLISHED = {
    "ProtoNet": [98.8, 99.7, 96.0, 98.9],
    "Matching Nets": [98.1, 98.9, 93.8, 98.5],
    "Relation Nets": [99.6, 99.8, 97.6, 99.1],
}
#: The training records whose checkpoints the bars may use, per method; each bar shows the highest of them
#: (every run is in the tables of docs/RESULTS.md).
RUNS = {
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
}


def measured(method: str) -> dict[tuple[int, int], tuple[float, float, str]]:
    """Best measured (accuracy %, CI %, run) per (ways, shots) over the method's runs."""
    evals = json.loads((RESULTS / "evals.json").read_text()) if (RESULTS / "evals.json").exists() else []
    out: dict[tuple[int, int], tuple[float, float, str]] = {}
    for name in RUNS[method]:
        path = RESULTS / f"{name}.json"
        if not path.exists():
            continue
        record = json.loads(path.read_text())
        run_dir = str(Path(record["eval"]["checkpoint"]).parent)
        results = [record["eval"]] + [e["eval"] for e in evals if str(Path(e["eval"]["checkpoint"]).parent) == run_dir]
        for r in results:
            key = (r["ways"], r["shots"])
            value = (100 * r["accuracy_mean"], 100 * r["accuracy_ci95"], name)
            if key not in out or value[0] > out[key][0]:
                out[key] = value
    return out


def main() -> None:
    fig, axes = plt.subplots(1, len(SETTINGS), figsize=(14, 4), sharey=False)
    for ax, (ways, shots) in zip(axes, SETTINGS):
        for i, method in enumerate(PUBLISHED):
            got = measured(method).get((ways, shots))
            published = PUBLISHED[method][SETTINGS.index((ways, shots))]
            ax.bar(i - 0.2, published, 0.4, color="lightgray", edgecolor="gray", hatch="//",
                   label="published" if i == 0 else None)  # fmt: skip
            if got:
                ax.bar(
                    i + 0.2, got[0], 0.4, yerr=got[1], capsize=3, color=f"C{i}", label="measured" if i == 0 else None
                )
                ax.text(i + 0.2, got[0] + got[1] + 0.1, f"{got[0]:.1f}", ha="center", fontsize=8)
        ax.set_xticks(range(len(PUBLISHED)), list(PUBLISHED), rotation=15, fontsize=8)
        ax.set_ylim(85, 100.5)
        ax.set_title(f"{ways}-way {shots}-shot")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("test accuracy (%), 600 episodes, 95% CI")
    axes[0].legend(loc="lower left", fontsize=8)
    fig.suptitle("Metric-based methods on Omniglot (Vinyals split), CPU budgets of <= 45 min per run")
    fig.tight_layout()
    target = ROOT / "docs" / "metric_family_omniglot.png"
    save_figure(fig, target)
    print(f"wrote {target.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
