"""The weight-generating hypernetwork against MAML (sinusoid) and ProtoNet (Omniglot), on the same tasks.

Each run trains (resumably: run the same command again after an interruption) and then meta-tests, writing
``<out>/<run>/result.json``; ``report`` gathers them into bench/results/hypernet.json and the plots in docs/img/.

    python bench/hypernet.py run maml-sinusoid          # MAML, K = 10, one inner step, 70000 meta-batches of 25
    python bench/hypernet.py run hypernet-sinusoid      # the same budget and tasks
    python bench/hypernet.py run protonet-omniglot      # 60-way 1-shot training episodes, vinyals-trainval
    python bench/hypernet.py run hypernet-omniglot      # the same episodes and budget
    python bench/hypernet.py time                       # CPU seconds per training step of each
    python bench/hypernet.py report

Sinusoid: both models are scored on the same 600 test tasks per K = 5, 10, 20 (100 query points each) after 0, 1
and 10 gradient steps of 0.01 on the support points (MAML: its inner loop; the hypernetwork: steps on the
generated weights). Omniglot: both best checkpoints on the same 600 test episodes of 5-way and 20-way 1-shot
(15 queries per class), as `fastadapt eval` draws them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from common import RESULTS, ROOT, machine, save_figure, validation_curve, write_json

from fastadapt.algorithms import build_algorithm
from fastadapt.checkpoint import load_checkpoint
from fastadapt.config import make_config
from fastadapt.datasets import load_splits, task_source
from fastadapt.datasets.sinusoid import SinusoidTasks
from fastadapt.evaluate import evaluate, evaluate_checkpoint, load_learner, mean_ci95
from fastadapt.tasks.episodes import TaskBatch
from fastadapt.train import outer_optimizer, train

RUNS = ("maml-sinusoid", "hypernet-sinusoid", "protonet-omniglot", "hypernet-omniglot")
SHOTS, STEPS = (5, 10, 20), (0, 1, 10)
#: Test tasks of the sinusoid table: the seed offset of bench/sinusoid_maml.py, so its figures are comparable.
SINUSOID_TEST_SEED = 424_242
#: ProtoNet's schedule from its hypernetwork preset (the budget at which ProtoNet met these targets).
OMNIGLOT = dict(split="vinyals-trainval", steps=4800, lr_decay_every=1600, val_every=800)
OMNIGLOT_WAYS = (5, 20)


def sinusoid_table(learner: torch.nn.Module, episodes: int, seed: int) -> dict[str, Any]:
    """MSE mean and 95% CI per K and number of test-time gradient steps, on the same tasks for every model.

    Returns ``{"mse": K -> steps -> [mean, ci95] (None if a task's MSE overflowed), "diverged": K -> steps ->
    {"tasks": count, "rest": [mean, ci95] over the others}}`` (only where some task diverged)."""
    table: dict[str, dict[str, Any]] = {}
    diverged: dict[str, dict[str, Any]] = {}
    for shots in SHOTS:
        table[str(shots)] = {}
        for steps in STEPS:
            source = SinusoidTasks(shots, 100, seed=seed + shots)
            scores = evaluate(learner, source, episodes, steps=steps, tasks_per_batch=50)
            finite = np.isfinite(scores)
            table[str(shots)][str(steps)] = list(mean_ci95(scores)) if finite.all() else None
            if not finite.all():
                rest = {"tasks": int((~finite).sum()), "rest": list(mean_ci95(scores[finite]))}
                diverged.setdefault(str(shots), {})[str(steps)] = rest
    return {"mse": table, "diverged": diverged}


def train_seconds(checkpoint: Path) -> float:
    return round(float(load_checkpoint(checkpoint)["elapsed_s"]), 1)


def run(name: str, out: Path, steps: int | None, episodes: int, data_dir: str | None) -> dict[str, Any]:
    folder = out / name
    command = f"python bench/hypernet.py run {name} --out {out}" + (f" --steps {steps}" if steps else "")
    record: dict[str, Any] = {"run": name, "command": command, "machine": machine()}
    started = time.time()
    if name.endswith("sinusoid"):
        if name == "maml-sinusoid":
            config = make_config("maml", "sinusoid", steps=steps, strategy="vmap", out=str(folder))
            learner = train(config, resume=True, progress=False).learner
        else:
            config = make_config("hypernet", "sinusoid", steps=steps, out=str(folder))
            learner = train(config, resume=True, progress=False).learner
            record["options"] = config.to_dict()
        record["train_steps"], record["meta_batch_size"] = config.steps, config.meta_batch_size
        record["train_wall_s"] = train_seconds(folder / "last.pt")
        record.update(sinusoid_table(learner, episodes, config.seed + SINUSOID_TEST_SEED))
        record["test_tasks"], record["query_points"] = episodes, 100
    else:
        settings = dict(OMNIGLOT, steps=steps or OMNIGLOT["steps"], data_dir=data_dir, out=str(folder))
        record["accuracy"] = {}
        if name == "protonet-omniglot":
            config = make_config("protonet", "omniglot", **settings)
            train(config, resume=True, progress=False)
            for ways in OMNIGLOT_WAYS:
                result = evaluate_checkpoint(
                    folder / "best.pt",
                    episodes,
                    folder / f"eval_{ways}w1s",
                    progress=False,
                    ways=ways,
                    shots=1,
                    data_dir=data_dir,
                )
                record["accuracy"][f"{ways}w1s"] = [result["accuracy_mean"], result["accuracy_ci95"]]
        else:
            config = make_config("hypernet", "omniglot", **settings)
            train(config, resume=True, progress=False)
            record["options"] = config.to_dict()
            for ways in OMNIGLOT_WAYS:
                for eval_steps in (0, 10):  # generated weights as they are, and after 10 steps on the support set
                    result = evaluate_checkpoint(
                        folder / "best.pt",
                        episodes,
                        folder / f"eval_{ways}w1s_{eval_steps}",
                        progress=False,
                        ways=ways,
                        shots=1,
                        eval_inner_steps=eval_steps,
                        data_dir=data_dir,
                    )
                    key = f"{ways}w1s" + (f"_{eval_steps}steps" if eval_steps else "")
                    record["accuracy"][key] = [result["accuracy_mean"], result["accuracy_ci95"]]
        record["train_steps"], record["train_ways"], record["split"] = config.steps, config.train_ways, config.split
        record["train_wall_s"] = train_seconds(folder / "last.pt")
        record["best_step"] = int(load_checkpoint(folder / "best.pt")["step"])
        record["test_episodes"] = episodes
    record["wall_s"] = round(time.time() - started, 1)
    record["date"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_json(folder / "result.json", record)
    return record


def plot_sinusoid(results: dict[str, Any], path: Path) -> None:
    fig, axes = plt.subplots(1, len(SHOTS), figsize=(12, 3.6), sharey=True)
    for ax, shots in zip(axes, SHOTS):
        for name, label, color in (
            ("maml-sinusoid", "MAML", "tab:green"),
            ("hypernet-sinusoid", "hypernetwork", "tab:purple"),
        ):
            if name in results:
                row = results[name]["mse"][str(shots)]
                done = [s for s in STEPS if row[str(s)] is not None]  # a diverged task makes the mean infinite
                ax.errorbar(
                    done, [row[str(s)][0] for s in done], yerr=[row[str(s)][1] for s in done],
                    marker="o", capsize=3, color=color, label=label,
                )  # fmt: skip
        ax.set(title=f"K={shots}", xlabel="gradient steps at test time", xticks=STEPS, yscale="log")
        ax.grid(alpha=0.3)
    tasks = next(results[n]["test_tasks"] for n in ("maml-sinusoid", "hypernet-sinusoid") if n in results)
    axes[0].set_ylabel(f"query MSE ({tasks} tasks, 95% CI)")
    axes[0].legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


def plot_fits(out: Path, path: Path) -> None:
    """One test task at K = 5 and 10: MAML after one step beside the hypernetwork's generated network."""
    maml, _ = load_learner(out / "maml-sinusoid" / "last.pt")
    hypernet, _ = load_learner(out / "hypernet-sinusoid" / "last.pt")
    tasks = SinusoidTasks(10, 10, seed=SINUSOID_TEST_SEED)
    amplitude, phase = (float(v.squeeze()) for v in tasks.sample_functions(1))
    grid = torch.linspace(-5, 5, 200).reshape(1, -1, 1)
    truth = amplitude * torch.sin(grid - phase)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    for ax, shots in zip(axes, (5, 10)):
        x = torch.from_numpy(tasks.rng.uniform(-5, 5, size=(1, shots, 1))).float()
        batch = TaskBatch(x, amplitude * torch.sin(x - phase), grid, truth, None)
        ax.plot(grid.squeeze(), truth.squeeze(), color="red", label="ground truth")
        with torch.no_grad():
            ax.plot(
                grid.squeeze(), maml.predict(batch, steps=1).squeeze(), "--", color="tab:green", label="MAML, 1 step"
            )
            ax.plot(
                grid.squeeze(), hypernet.predict(batch, steps=0).squeeze(), color="tab:purple", label="hypernetwork"
            )
        ax.scatter(x.squeeze(), batch.support_y.squeeze(), marker="^", color="black", zorder=3, label="support")
        ax.set(title=f"K={shots}", ylim=(-5.5, 5.5))
    axes[0].legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


def plot_omniglot(results: dict[str, Any], out: Path, path: Path) -> None:
    """Test accuracy of both models beside their validation accuracy during training."""
    fig, (ax, ax_curve) = plt.subplots(1, 2, figsize=(11, 3.8))
    names = [n for n in ("protonet-omniglot", "hypernet-omniglot") if n in results]
    for name in names:
        curve = validation_curve(out / name / "metrics.jsonl")
        ax_curve.plot(curve["step"], curve["accuracy"], marker="o", label=name.split("-")[0])
    ax_curve.set(xlabel="training episodes (60-way 1-shot)", ylabel="validation accuracy % (5-way 1-shot)")
    ax_curve.grid(alpha=0.3)
    ax_curve.legend()
    for offset, name in enumerate(names):
        acc = results[name]["accuracy"]
        xs = [i + 0.3 * offset for i in range(len(OMNIGLOT_WAYS))]
        ax.bar(
            xs, [100 * acc[f"{w}w1s"][0] for w in OMNIGLOT_WAYS], width=0.3,
            yerr=[100 * acc[f"{w}w1s"][1] for w in OMNIGLOT_WAYS], capsize=3,
            label="ProtoNet" if name.startswith("protonet") else "hypernetwork",
        )  # fmt: skip
    for target, ways_index in ((98.0, 0), (94.0, 1)):
        ax.hlines(target, ways_index - 0.2, ways_index + 0.5, colors="black", linestyles=":")
    ax.set_xticks([i + 0.15 for i in range(len(OMNIGLOT_WAYS))], [f"{w}-way 1-shot" for w in OMNIGLOT_WAYS])
    ax.set(
        ylim=(85, 100),
        ylabel=f"test accuracy % ({results[names[0]]['test_episodes']} episodes, 95% CI)",
        title="Omniglot (dotted: targets)",
    )
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


def step_cost(out: Path, data_dir: str | None, steps: int = 20, warmup: int = 3) -> dict[str, Any]:
    """CPU seconds (process time, one thread) per meta-training step of each run's learner and episodes: a cost
    that other processes on a shared machine inflate far less than the wall time."""
    torch.set_num_threads(1)
    costs = {}
    for name in RUNS:
        dataset = name.split("-")[1]
        settings = dict(OMNIGLOT, data_dir=data_dir) if dataset == "omniglot" else {}
        method = name.split("-")[0]
        config = make_config(method, dataset, **settings, **({} if method == "hypernet" else {"strategy": "vmap"}))
        learner = build_algorithm(config)
        tasks = task_source(config, load_splits(config), "train", config.seed)
        optimizer, _ = outer_optimizer(learner, config)
        for i in range(warmup + steps):
            if i == warmup:
                started = time.process_time()
            optimizer.zero_grad()
            learner.meta_backward(tasks.sample(config.meta_batch_size))
            optimizer.step()
        costs[name] = round((time.process_time() - started) / steps, 4)
    record = {"cpu_s_per_step": costs, "steps": steps, "machine": machine(), "command": "python bench/hypernet.py time"}
    record["date"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_json(out / "step_cost.json", record)
    return record


def report(out: Path) -> dict[str, Any]:
    results = {
        name: json.loads((out / name / "result.json").read_text())
        for name in RUNS
        if (out / name / "result.json").is_file()
    }
    record = {"name": "hypernet", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "runs": results}
    if (out / "step_cost.json").is_file():
        record["step_cost"] = json.loads((out / "step_cost.json").read_text())
    write_json(RESULTS / "hypernet.json", record)
    images = ROOT / "docs" / "img"
    if "maml-sinusoid" in results or "hypernet-sinusoid" in results:
        plot_sinusoid(results, images / "hypernet_sinusoid_mse.png")
    if "maml-sinusoid" in results and "hypernet-sinusoid" in results:
        plot_fits(out, images / "hypernet_sinusoid_fits.png")
    if any(name.endswith("omniglot") for name in results):
        plot_omniglot(results, out, images / "hypernet_omniglot.png")
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("run", "time", "report"))
    parser.add_argument("name", nargs="?", choices=RUNS)
    parser.add_argument("--steps", type=int, help="meta-training steps (default: the preset's)")
    parser.add_argument("--episodes", type=int, default=600, help="test tasks/episodes per setting")
    parser.add_argument("--data-dir", default=None, help="default: $FASTADAPT_DATA")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/hypernet"))
    args = parser.parse_args()
    if args.action == "run":
        if not args.name:
            parser.error(f"run needs a name: {', '.join(RUNS)}")
        print(json.dumps(run(args.name, args.out, args.steps, args.episodes, args.data_dir), indent=2))
    elif args.action == "time":
        print(json.dumps(step_cost(args.out, args.data_dir), indent=2))
    else:
        print(json.dumps(report(args.out), indent=2))


if __name__ == "__main__":
    sys.exit(main())
