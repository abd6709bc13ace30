"""La-MAML against sequential fine-tuning, experience replay and joint training on task streams of
scikit-learn's digits, scored by the accuracy matrix and ACC / BWT / FWT (Lopez-Paz & Ranzato 2017).

    /work/bin/bench-slot .venv/bin/python bench/continual_stream.py --work runs/stream [--seeds 10]

For each stream (rotated digits and permuted digits, 10 tasks each, single pass, batches of 10):

1. every method's settings are chosen on a separate search run (stream and model seed 100) by final ACC, from a
   small grid (the La-MAML authors' MNIST settings are one of La-MAML's candidates);
2. the chosen settings run with seeds 0..N-1 (a new model and a new train/test split each); ACC, BWT and FWT
   with 95% CIs over the runs, and the mean accuracy matrix.

All methods use the same MLP (64 -> 100 -> 100 -> 10) and take ``glances`` = 5 steps on each incoming batch;
ER and La-MAML replay from the same 200-example reservoir buffer. Joint training sees all tasks at once (5
epochs): an upper bound on ACC, without an accuracy matrix. Every finished run is kept under ``--work`` and
reused, so a stopped benchmark resumes. Writes ``bench/results/continual_stream.json`` and, per stream,
``docs/img/continual_<stream>_matrices.png`` and ``docs/img/continual_<stream>_first_tasks.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from common import RESULTS, ROOT, machine, write_json

from fastadapt.algorithms.continual.baselines import ExperienceReplay, SequentialFineTuning, joint_training
from fastadapt.algorithms.continual.la_maml import LaMAMLOptions, build, mlp
from fastadapt.continual.metrics import mean_ci, plot_accuracy_matrices, plot_first_tasks, summarise_runs
from fastadapt.continual.protocol import run_task_stream
from fastadapt.tasks.streams import digits_stream

IMG = ROOT / "docs" / "img"
SEARCH_SEED = 100
GLANCES = 5
GRIDS = {
    "fine-tuning": [{"lr": lr} for lr in (0.3, 0.1, 0.03, 0.01)],
    "er": [{"lr": lr} for lr in (0.3, 0.1, 0.03)],
    # (alpha_init, alpha_lr): the authors' MNIST settings first (0.15, 0.3), then one other (a La-MAML run costs
    # 20x a fine-tuning run on one thread: the grid is kept small)
    "la-maml": [
        {"alpha_init": 0.15, "alpha_lr": 0.3},
        {"alpha_init": 0.1, "alpha_lr": 0.1},
    ],  # fmt: skip
    "joint": [{"lr": lr} for lr in (0.1, 0.03)],
}
NAMES = {"fine-tuning": "fine-tuning", "er": "ER", "la-maml": "La-MAML"}


def model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return mlp(64, 100, 2, 10)


def learner(method: str, config: dict, seed: int):
    if method == "fine-tuning":
        return SequentialFineTuning(model(seed), lr=config["lr"], glances=GLANCES)
    if method == "er":
        return ExperienceReplay(model(seed), lr=config["lr"], glances=GLANCES, memory=200, replay_batch=10, seed=seed)
    return build(LaMAMLOptions(**config, glances=GLANCES, seed=seed), model=model(seed))


def one_run(work: Path, stream_name: str, tasks: int, method: str, config: dict, seed: int) -> dict:
    """One run, cached as JSON under ``work``."""
    key = "_".join(f"{k}{v}" for k, v in sorted(config.items()))
    path = work / stream_name / method / f"{key}_seed{seed}.json"
    if path.is_file():
        return json.loads(path.read_text())
    stream = digits_stream(stream_name, tasks, seed=seed)
    started = time.perf_counter()
    if method == "joint":
        out = joint_training(model(seed), stream, epochs=GLANCES, lr=config["lr"], batch_size=10, seed=seed)
    else:
        r, b = run_task_stream(learner(method, config, seed), stream, batch_size=10)
        out = {"matrix": r.tolist(), "initial": b.tolist(), "acc": float(r[-1].mean())}
    out.update(seconds=time.perf_counter() - started, config=config, seed=seed)
    write_json(path, out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="runs/stream")
    parser.add_argument("--streams", nargs="+", default=["rotated-digits", "permuted-digits"])
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--methods", nargs="+", default=list(GRIDS))
    parser.add_argument("--name", default="continual_stream")
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = Path(args.work)
    started = time.time()
    record = {"benchmark": "continual_stream", "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
              "machine": machine(), "tasks": args.tasks, "glances": GLANCES, "batch_size": 10, "memory": 200,
              "seeds": list(range(args.seeds)), "search_seed": SEARCH_SEED, "streams": {}}  # fmt: skip
    for stream_name in args.streams:
        per_method = {}
        for method in args.methods:
            search = [one_run(work, stream_name, args.tasks, method, c, SEARCH_SEED) for c in GRIDS[method]]
            best = max(search, key=lambda r: r["acc"])["config"]
            print(f"{stream_name} {method}: search " + ", ".join(f"{r['config']}: {r['acc']:.3f}" for r in search)
                  + f" -> {best}", flush=True)  # fmt: skip
            runs = [one_run(work, stream_name, args.tasks, method, best, s) for s in range(args.seeds)]
            entry = {"config": best, "search": [{"config": r["config"], "acc": r["acc"]} for r in search],
                     "seconds_per_run": mean_ci([r["seconds"] for r in runs])}  # fmt: skip
            if method == "joint":
                entry["acc"] = mean_ci([r["acc"] for r in runs])
                entry["final"] = [r["final"] for r in runs]
            else:
                entry.update(
                    summarise_runs([np.array(r["matrix"]) for r in runs], [np.array(r["initial"]) for r in runs])
                )
                entry.pop("runs")
                entry["matrices"] = [r["matrix"] for r in runs]
                entry["initial"] = [r["initial"] for r in runs]
            per_method[method] = entry
            fmt = lambda s: "n/a" if s is None else f"{s['mean']:.3f} +- {s['ci95']:.3f}"  # noqa: E731
            print(f"  {method}: ACC {fmt(entry['acc'])}  BWT {fmt(entry.get('bwt'))}  FWT {fmt(entry.get('fwt'))}",
                  flush=True)  # fmt: skip
        record["streams"][stream_name] = per_method
        matrices = {NAMES[m]: np.array(per_method[m]["mean_matrix"]) for m in NAMES if m in per_method}
        title = f"{stream_name}: accuracy on task j after training through task i (mean of {args.seeds} runs)"
        plot_accuracy_matrices(matrices, IMG / f"continual_{stream_name}_matrices.png", title=title)
        runs = {NAMES[m]: [np.array(x) for x in per_method[m]["matrices"]] for m in NAMES if m in per_method}
        plot_first_tasks(runs, IMG / f"continual_{stream_name}_first_tasks.png", first=3,
                         title=f"{stream_name}: the first tasks as the stream goes on (mean, 95% CI)")  # fmt: skip
    record["wall_s"] = round(time.time() - started, 1)
    write_json(RESULTS / f"{args.name}.json", record)
    print(f"wall {record['wall_s']} s", flush=True)


if __name__ == "__main__":
    main()
