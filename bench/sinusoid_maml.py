"""MAML on sinusoid regression, as in Finn et al. (2017), section 5.1 and Figure 2.

Meta-trains MAML (K=10, one inner step of 0.01, meta-batch 25, Adam 1e-3) and, on the same task
distribution, a baseline pretrained on all tasks jointly (plain regression on points of random
sinusoids). Both are then adapted by gradient descent (step 0.01) on K = 5, 10, 20 support points of
600 test tasks and scored by MSE on 100 query points per task after 0, 1 and 10 steps.

    python bench/sinusoid_maml.py --steps 70000 --out runs/bench/sinusoid

Writes bench/results/sinusoid_maml.json, docs/sinusoid_maml.png (fits like the paper's Figure 2) and
docs/sinusoid_mse.png (MSE against number of gradient steps).
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timezone
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from common import RESULTS, ROOT, machine, save_figure, write_json

from fastadapt.algorithms import MAML
from fastadapt.config import make_config
from fastadapt.datasets.sinusoid import SinusoidTasks
from fastadapt.evaluate import evaluate, mean_ci95
from fastadapt.nets import MLP
from fastadapt.tasks.episodes import TaskBatch
from fastadapt.train import train

SHOTS, STEPS = (5, 10, 20), (0, 1, 10)


def pretrain_baseline(steps: int, seed: int) -> tuple[MLP, float]:
    """The paper's "pretrained" baseline: one network regressed on all tasks jointly."""
    torch.manual_seed(seed)
    net = MLP(1, (40, 40), 1)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    tasks = SinusoidTasks(shots=10, query=10, seed=seed + 7)
    started = time.time()
    for _ in range(steps):
        batch = tasks.sample(25)
        x = torch.cat([batch.support_x, batch.query_x], 1)
        y = torch.cat([batch.support_y, batch.query_y], 1)
        loss = (net(x) - y).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net, time.time() - started


def score_table(learner: MAML, episodes: int, seed: int) -> dict[str, dict[str, list[float]]]:
    table = {}
    for shots in SHOTS:
        row = {}
        for steps in STEPS:
            source = SinusoidTasks(shots=shots, query=100, seed=seed + shots)  # same tasks for every model
            row[str(steps)] = list(mean_ci95(evaluate(learner, source, episodes, tasks_per_batch=50, steps=steps)))
        table[str(shots)] = row
    return table


def plot_fits(maml: MAML, baseline: MAML, path: Path, seed: int) -> None:
    tasks = SinusoidTasks(shots=10, query=10, seed=seed)
    amplitude, phase = tasks.sample_functions(1)
    grid = torch.linspace(-5, 5, 200).reshape(1, -1, 1)
    truth = float(amplitude.squeeze()) * torch.sin(grid - float(phase.squeeze()))
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True, sharey=True)
    for col, shots in enumerate((5, 10)):
        x = torch.from_numpy(tasks.rng.uniform(-5, 5, size=(1, shots, 1))).float()
        y = float(amplitude.squeeze()) * torch.sin(x - float(phase.squeeze()))
        batch = TaskBatch(x, y, grid, truth, None)
        for row, (name, learner) in enumerate((("MAML", maml), ("pretrained", baseline))):
            ax = axes[row, col]
            ax.plot(grid.squeeze(), truth.squeeze(), color="red", label="ground truth")
            for steps, style in ((0, ":"), (1, "--"), (10, "-.")):
                with torch.no_grad():
                    pred = learner.predict(batch, steps=steps)
                ax.plot(
                    grid.squeeze(),
                    pred.squeeze(),
                    style,
                    color="green" if steps else "lightgreen",
                    label=f"{'pre-update' if steps == 0 else f'{steps} grad step' + ('s' if steps > 1 else '')}",
                )
            ax.scatter(x.squeeze(), y.squeeze(), marker="^", color="purple", zorder=3, label="used for grad")
            ax.set_title(f"{name}, K={shots}")
            ax.set_ylim(-5.5, 5.5)
    axes[0, 0].legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


def plot_mse(results: dict, path: Path) -> None:
    fig, axes = plt.subplots(1, len(SHOTS), figsize=(12, 3.6), sharey=True)
    for ax, shots in zip(axes, SHOTS):
        for name, color in (("maml", "tab:green"), ("pretrained", "tab:blue")):
            means = [results[name][str(shots)][str(s)][0] for s in STEPS]
            cis = [results[name][str(shots)][str(s)][1] for s in STEPS]
            ax.errorbar(STEPS, means, yerr=cis, marker="o", capsize=3, color=color, label=name)
        ax.set(title=f"K={shots}", xlabel="gradient steps at test time", xticks=STEPS)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("query MSE (600 tasks, 95% CI)")
    axes[0].legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=70000)
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strategy", default="vmap")
    parser.add_argument("--out", default="runs/bench/sinusoid")
    args = parser.parse_args()

    config = make_config(
        "maml",
        "sinusoid",
        steps=args.steps,
        seed=args.seed,
        strategy=args.strategy,
        val_every=max(args.steps // 10, 1),
        out=args.out,
    )
    started = time.time()
    result = train(config, progress=False)
    maml_seconds = time.time() - started
    baseline_net, baseline_seconds = pretrain_baseline(args.steps, args.seed)
    baseline = MAML(baseline_net, inner_lr=config.inner_lr)  # adapted by the same plain SGD

    test_seed = args.seed + 424_242
    results = {
        "maml": score_table(result.learner, args.episodes, test_seed),
        "pretrained": score_table(baseline, args.episodes, test_seed),
    }
    docs = ROOT / "docs"
    plot_fits(result.learner, baseline, docs / "sinusoid_maml.png", test_seed)
    plot_mse(results, docs / "sinusoid_mse.png")
    record = {
        "name": "sinusoid_maml",
        "command": f"python bench/sinusoid_maml.py --steps {args.steps} --strategy {args.strategy} --out {args.out}",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "maml_train_wall_s": round(maml_seconds, 1),
        "baseline_train_wall_s": round(baseline_seconds, 1),
        "test_tasks": args.episodes,
        "query_points": 100,
        "mse": results,  # shots -> steps -> [mean, ci95]
    }
    write_json(RESULTS / "sinusoid_maml.json", record)
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
