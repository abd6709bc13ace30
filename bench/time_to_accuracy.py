"""Time to accuracy: each method's validation accuracy against wall-clock training time, beside its paper's number.

Reads the training records that bench/train_eval.py writes (bench/results/NAME.json: the command, the machine, the
training wall time, the 600-episode test result and the validation curve) for the runs listed in ``FAMILIES`` and
writes, per family, ``docs/img/time_to_accuracy_<family>.png`` (one panel per setting: validation accuracy against
minutes, the final test accuracy with its 95% CI at the end of each curve, the published number as a dashed line)
and a markdown table on standard output (measured, published, the gap, the training wall time, and the first
validation at or above the published number, if any).

    python bench/time_to_accuracy.py                 # every family with a record
    python bench/time_to_accuracy.py optimization

Validation accuracy is a progress signal (100-200 episodes, on the validation characters), not the reported
number: the test accuracy at the end is.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from common import RESULTS, ROOT, save_figure  # noqa: E402


@dataclass(frozen=True)
class Run:
    method: str
    record: str  # bench/results/<record>.json
    published: float  # the paper's Omniglot test accuracy (%), for comparison only
    source: str  # where the published number is from


FAMILIES: dict[str, list[Run]] = {
    "optimization": [
        # Finn et al. 2017, Table 1 (Omniglot 5-way 1-shot, MAML): 98.7 +- 0.4; the test characters of its split
        # procedure (--split maml).
        Run("MAML, second order", "maml_omniglot_5w1s_mamlsplit_90min", 98.7, "Finn et al. 2017, Table 1"),
    ],
}


def load(run: Run) -> dict | None:
    path = RESULTS / f"{run.record}.json"
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return record if "validation_curve" in record else None


def first_at_or_above(curve: dict[str, list[float]], level: float) -> float | None:
    """Minutes of training at the first validation whose accuracy is at least ``level`` (%), if any."""
    for minutes, accuracy in zip(curve["minutes"], curve["accuracy"]):
        if accuracy >= level:
            return minutes
    return None


def setting(record: dict) -> str:
    e = record["eval"]
    return f"{e['ways']}-way {e['shots']}-shot"


def plot(family: str, runs: list[tuple[Run, dict]]) -> None:
    settings = sorted({setting(r) for _, r in runs})
    fig, axes = plt.subplots(1, len(settings), figsize=(6.5 * len(settings), 4.4), squeeze=False)
    for i, (run, record) in enumerate(runs):
        ax = axes[0][settings.index(setting(record))]
        curve, e = record["validation_curve"], record["eval"]
        color = f"C{i}"
        ax.plot(
            curve["minutes"], curve["accuracy"], "-", marker="o", ms=3, color=color, label=f"{run.method}: validation"
        )
        end = record["train_wall_s"] / 60
        ax.errorbar([end], [100 * e["accuracy_mean"]], yerr=[100 * e["accuracy_ci95"]], fmt="s", color=color,
                    capsize=4, label=f"{run.method}: test, 600 episodes ({100 * e['accuracy_mean']:.2f}%)")  # fmt: skip
        ax.axhline(run.published, ls="--", color=color, alpha=0.6, label=f"{run.source}: {run.published}%")
    for ax, name in zip(axes[0], settings):
        ax.set_title(f"Omniglot {name}: accuracy against training time", fontsize=10)
        ax.set_xlabel("wall-clock training time (min)")
        ax.set_ylabel("accuracy (%)")
        lowest = min(min(r["validation_curve"]["accuracy"], default=100.0) for _, r in runs)
        ax.set_ylim(max(50.0, lowest - 1), 100)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    target = ROOT / "docs" / "img" / f"time_to_accuracy_{family}.png"
    save_figure(fig, target)
    print(f"wrote {target.relative_to(ROOT)}")


def table(runs: list[tuple[Run, dict]]) -> str:
    lines = [
        "| method | setting | measured (600 episodes) | published | gap | training wall time "
        "| first validation >= published |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for run, record in runs:
        e = record["eval"]
        measured = 100 * e["accuracy_mean"]
        reached = first_at_or_above(record["validation_curve"], run.published)
        lines.append(
            f"| {run.method} | {setting(record)} | {measured:.2f}% ± {100 * e['accuracy_ci95']:.2f}% "
            f"| {run.published}% | {measured - run.published:+.2f} | {record['train_wall_s'] / 60:.1f} min | "
            + (f"{reached:.1f} min" if reached is not None else "never")
            + " |"
        )
    return "\n".join(lines)


def main() -> None:
    for family in sys.argv[1:] or list(FAMILIES):
        runs = [(run, record) for run in FAMILIES[family] if (record := load(run)) is not None]
        if not runs:
            print(f"{family}: no record with a validation curve yet")
            continue
        plot(family, runs)
        print(table(runs))


if __name__ == "__main__":
    main()
