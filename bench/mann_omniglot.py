"""MANN (Santoro et al., ICML 2016) and its LSTM baseline on Omniglot, beside the paper's Table 1.

    # each training resumes where it stopped when run again
    OMP_NUM_THREADS=1 .venv/bin/fastadapt train --algorithm mann --dataset omniglot --out runs/mann_omniglot/mann \
        --data-dir /work/shared/data --resume
    OMP_NUM_THREADS=1 .venv/bin/fastadapt train --algorithm mann --dataset omniglot --out runs/mann_omniglot/lstm \
        --data-dir /work/shared/data --no-memory --resume
    .venv/bin/python bench/mann_omniglot.py report --data-dir /work/shared/data
    # a later stage started with --init-from (e.g. a lower --lr) is reported with --mann DIR: its learning curve
    # follows the stages back to the first (docs/mann.md gives the commands of the published run)

Training is fastadapt's trainer with the ``omniglot`` preset of ``mann``: episodes of 5 classes x 10 instances (1
support + 9 query examples per class, presented as one shuffled sequence, every step in the loss; the 1200
training characters in four rotations; 20x20 images), 16 episodes per update. ``report``: accuracy by instance
(1st, 2nd, 3rd, 4th, 5th, 10th) of both on 1000 test sequences (the 423 test characters in four rotations), MANN's
5-way 1- and 5-shot accuracy on 600 standard test episodes, training throughput, into
``bench/results/mann_omniglot.json`` and ``docs/img/mann_omniglot.png``.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from pathlib import Path

from common import RESULTS, ROOT, machine, save_figure, write_json

from fastadapt.checkpoint import load_checkpoint
from fastadapt.datasets.omniglot import load_omniglot
from fastadapt.datasets.paths import resolve_data_dir
from fastadapt.evaluate import evaluate_by_instance, evaluate_checkpoint, load_learner

PNG = ROOT / "docs" / "img" / "mann_omniglot.png"
JSON = RESULTS / "mann_omniglot.json"
INSTANCES = ("1", "2", "3", "4", "5", "10")
# Santoro et al. 2016, Table 1 (Omniglot, 5 classes, one-hot labels), test accuracy in % by instance.
PAPER = {
    "MANN": [36.4, 82.8, 91.0, 92.6, 94.9, 98.1],
    "LSTM": [24.4, 49.5, 55.3, 61.0, 63.6, 62.5],
}
# snowkylin/ntm (TensorFlow re-implementation), its README's table: MANN, 5 classes, one-hot labels.
TENSORFLOW_REIMPLEMENTATION = [35.58, 88.81, 94.97, 96.51, 97.34, 97.55]
TARGETS = {"2": 0.80, "10": 0.95}


def curve(metrics: Path, last_step: int | None = None) -> dict[str, list]:
    """Training loss and accuracy, validation accuracy (5-way 1-shot episodes) and wall time by step (up to
    ``last_step``)."""
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line]
    rows = [r for r in rows if last_step is None or r["step"] <= last_step]
    train_rows = [r for r in rows if "loss" in r]
    val_rows = [r for r in rows if "val_acc" in r]
    return {
        "step": [r["step"] for r in train_rows],
        "elapsed_s": [r["elapsed_s"] for r in train_rows],
        "train_acc": [r["train_acc"] for r in train_rows],
        "lr": [r.get("lr") for r in train_rows],
        "val_step": [r["step"] for r in val_rows],
        "val_acc": [r["val_acc"] for r in val_rows],
    }


def stages(checkpoint: Path) -> list[dict]:
    """The runs that trained ``checkpoint``'s weights, first to last: a run started with ``--init-from`` continues
    the run whose checkpoint it names (up to that checkpoint's step)."""
    chain = []
    while True:
        saved = load_checkpoint(checkpoint)
        chain.append({"run": str(checkpoint.parent), "last_step": saved["step"], "lr": saved["config"].get("lr"),
                      "lr_schedule": saved["config"].get("lr_schedule")})  # fmt: skip
        init_from = saved["config"].get("init_from")
        if not init_from:
            return chain[::-1]
        checkpoint = Path(init_from)


def staged_curve(checkpoint: Path) -> tuple[dict[str, list], list[dict]]:
    """The learning curve of every stage that trained ``checkpoint`` end to end: steps and seconds add up."""
    joined: dict[str, list] = {}
    runs = stages(checkpoint)
    step_offset, time_offset = 0, 0.0
    for stage in runs:
        part = curve(Path(stage["run"]) / "metrics.jsonl", stage["last_step"])
        part["step"] = [s + step_offset for s in part["step"]]
        part["val_step"] = [s + step_offset for s in part["val_step"]]
        part["elapsed_s"] = [t + time_offset for t in part["elapsed_s"]]
        for key, values in part.items():
            joined.setdefault(key, []).extend(values)
        stage["steps"] = stage["last_step"]
        step_offset += stage["last_step"]
        time_offset = joined["elapsed_s"][-1] if joined.get("elapsed_s") else time_offset
    return joined, runs


def report(args: argparse.Namespace) -> None:
    work = Path(args.work)
    splits = load_omniglot(resolve_data_dir(args.data_dir), "vinyals-trainval", 20)
    record = {
        "benchmark": "MANN and LSTM on Omniglot sequences (Santoro et al. 2016, Table 1, 5 classes one-hot)",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "note": "training ran on one thread of a 2-core machine shared with other jobs",
        "paper_table_1": PAPER,
        "tensorflow_reimplementation_mann": TENSORFLOW_REIMPLEMENTATION,
        "models": {},
    }
    for model in ("mann", "lstm"):
        run = Path(getattr(args, model) or work / model)
        checkpoint = run / "last.pt"
        if not checkpoint.is_file():
            print(f"no {checkpoint}: train it first", flush=True)
            continue
        learner, config = load_learner(checkpoint, data_dir=args.data_dir)
        learner.eval()
        entry: dict = {"memory": config.memory, "config": config.to_dict()}
        entry["curve"], entry["stages"] = staged_curve(checkpoint)
        steps, wall = entry["curve"]["step"][-1], entry["curve"]["elapsed_s"][-1]
        entry["training"] = {"steps": steps, "episodes": steps * config.meta_batch_size, "wall_s": wall,
                             "episodes_per_s": round(steps * config.meta_batch_size / wall, 2)}  # fmt: skip
        entry["test_sequences"] = evaluate_by_instance(learner, splits["test"], args.episodes)
        entry["train_sequences"] = evaluate_by_instance(learner, splits["train"], args.episodes // 2)
        if model == "mann":
            entry["few_shot"] = {
                f"5-way {shots}-shot": evaluate_checkpoint(checkpoint, episodes=600, out=run / f"eval_{shots}",
                                                           progress=False, shots=shots, data_dir=args.data_dir)
                for shots in (1, 5)
            }  # fmt: skip
        record["models"][model] = entry
        shown = " / ".join(f"{100 * entry['test_sequences'][k]['accuracy_mean']:.1f}" for k in INSTANCES)
        print(f"{model}: {shown} after {steps} steps", flush=True)
    if "mann" in record["models"]:
        mann = record["models"]["mann"]["test_sequences"]
        record["targets"] = {
            **{f"instance {k} >= {100 * v:.0f}%": mann[k]["accuracy_mean"] >= v for k, v in TARGETS.items()},
        }
        if "lstm" in record["models"]:
            lstm = record["models"]["lstm"]["test_sequences"]
            record["targets"]["above LSTM at every instance"] = all(
                mann[k]["accuracy_mean"] > lstm[k]["accuracy_mean"] for k in INSTANCES
            )
    write_json(JSON, record)
    plot(record)
    print(f"wrote {JSON} and {PNG}", flush=True)


def plot(record: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax_curve) = plt.subplots(1, 2, figsize=(12, 4.5))
    x = [int(k) for k in INSTANCES]
    colours = {"mann": "tab:blue", "lstm": "tab:orange"}
    for model, entry in record["models"].items():
        acc = [100 * entry["test_sequences"][k]["accuracy_mean"] for k in INSTANCES]
        ci = [100 * entry["test_sequences"][k]["accuracy_ci95"] for k in INSTANCES]
        ax.errorbar(x, acc, yerr=ci, marker="o", color=colours[model], label=f"{model.upper()} (fastadapt)")
        c = entry["curve"]
        per_update = entry["config"]["meta_batch_size"] / 1000
        ax_curve.plot([s * per_update for s in c["val_step"]], [100 * a for a in c["val_acc"]], "-",
                      color=colours[model], label=f"{model.upper()} validation, 5-way 1-shot")  # fmt: skip
    ax.plot(x, PAPER["MANN"], "s:", color="tab:blue", alpha=0.6, label="MANN (paper, Table 1)")
    ax.plot(x, PAPER["LSTM"], "s:", color="tab:orange", alpha=0.6, label="LSTM (paper, Table 1)")
    ax.set_xticks(x)
    ax.set_xlabel("instance of the class in the sequence")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Omniglot, 5 classes x 10 instances, 1000 test sequences")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax_curve.set_xlabel("training episodes (thousands)")
    ax_curve.set_ylabel("validation accuracy (%)")
    ax_curve.set_ylim(0, 100)
    ax_curve.set_title("learning curves")
    ax_curve.grid(alpha=0.3)
    ax_curve.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    save_figure(fig, PNG)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("report",))
    parser.add_argument("--work", default="runs/mann_omniglot", help="folder of the runs (mann/, lstm/)")
    parser.add_argument("--mann", help="the MANN run (default: <work>/mann), its --init-from stages followed")
    parser.add_argument("--lstm", help="the LSTM baseline's folder (default: <work>/lstm)")
    parser.add_argument("--data-dir", default=None, help="folder holding omniglot/ (default: $FASTADAPT_DATA)")
    parser.add_argument("--episodes", type=int, default=1000, help="test sequences")
    report(parser.parse_args())


if __name__ == "__main__":
    main()
