"""MAML on linear regression tasks (fastadapt.datasets.linear): y = theta_0 + theta_1 x per task.

Meta-trains MAML with the linear preset (MLP 1-40-40-1, K=10, one inner step of 0.01, meta-batch 25, Adam 1e-3)
and scores it on 600 held-out lines: query MSE on 100 points after 0, 1, 5 and 10 inner steps from K=10 support
points, beside the same network untrained (adapted the same way). The run checkpoints every 500 steps
(atomically) and resumes from its checkpoint when started again.

    python bench/linear_regression.py --steps 5000 --out runs/bench/linear

Writes bench/results/linear_regression.json and docs/img/linear_regression.png.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from common import RESULTS, ROOT, machine, save_figure, write_json

from fastadapt.algorithms import MAML
from fastadapt.config import presets
from fastadapt.datasets.linear import LinearTasks
from fastadapt.evaluate import evaluate, mean_ci95
from fastadapt.nets import MLP
from fastadapt.tasks.episodes import TaskBatch

#: MAML's preset for lines (src/fastadapt/algorithms/optimization/maml.py)
PRESET = presets("maml", "linear")

TEST_STEPS = (0, 1, 5, 10)
CHECKPOINT_EVERY = 500


def build(seed: int) -> MAML:
    torch.manual_seed(seed)
    return MAML(MLP(1, (40, 40), 1), inner_lr=PRESET["inner_lr"], inner_steps=PRESET["inner_steps"], strategy="vmap")


def save_atomically(path: Path, state: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def train(steps: int, seed: int, out: Path) -> tuple[MAML, float, list[tuple[int, float]]]:
    """MAML meta-training, resumable from ``out/last.pt``; returns the learner, the training seconds and the
    (step, meta-loss) curve averaged over 100-step windows."""
    out.mkdir(parents=True, exist_ok=True)
    learner = build(seed)
    optimizer = torch.optim.Adam(learner.parameters(), lr=PRESET["lr"])
    tasks = LinearTasks(PRESET["shots"], PRESET["query"], seed=seed)
    step, seconds, curve = 0, 0.0, []
    checkpoint = out / "last.pt"
    if checkpoint.is_file():
        state = torch.load(checkpoint, weights_only=False)
        learner.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        tasks.load_state_dict(state["tasks"])
        torch.set_rng_state(state["torch_rng"])
        step, seconds, curve = state["step"], state["seconds"], state["curve"]
    window = []
    started = time.time()
    while step < steps:
        loss = learner.meta_loss(tasks.sample(PRESET["meta_batch_size"])).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
        window.append(loss.item())
        if step % 100 == 0:
            curve.append((step, sum(window) / len(window)))
            window = []
        if step % CHECKPOINT_EVERY == 0 or step == steps:
            state = {
                "model": learner.state_dict(),
                "optimizer": optimizer.state_dict(),
                "tasks": tasks.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "step": step,
                "seconds": seconds + time.time() - started,
                "curve": curve,
            }
            save_atomically(checkpoint, state)
    return learner, seconds + time.time() - started, curve


def score(learner: MAML, episodes: int, seed: int) -> dict[str, list[float]]:
    """Query MSE [mean, 95% CI] after each number of inner steps, on the same held-out tasks."""
    return {
        str(steps): list(
            mean_ci95(evaluate(learner, LinearTasks(10, 100, seed=seed), episodes, tasks_per_batch=50, steps=steps))
        )
        for steps in TEST_STEPS
    }


def plot(maml: MAML, results: dict, curve: list, episodes: int, path: Path, seed: int) -> None:
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.9))
    tasks = LinearTasks(10, 100, seed=seed)
    grid = torch.linspace(-5, 5, 100).reshape(1, -1, 1)
    for ax in axes[:2]:
        intercept, slope = tasks.sample_functions(1)
        x = torch.from_numpy(tasks.rng.uniform(-5, 5, size=(1, 10, 1))).float()
        a, b = float(intercept.squeeze()), float(slope.squeeze())
        batch = TaskBatch(x, a + b * x, grid, a + b * grid, None)
        ax.plot(grid.squeeze(), (a + b * grid).squeeze(), color="red", label="true line")
        for steps, style in ((0, ":"), (1, "--"), (10, "-.")):
            with torch.no_grad():
                pred = maml.predict(batch, steps=steps)
            label = "MAML, before adapting" if steps == 0 else f"MAML, {steps} inner step{'s' if steps > 1 else ''}"
            ax.plot(grid.squeeze(), pred.squeeze(), style, color="green", alpha=0.45 if steps == 0 else 1, label=label)
        ax.scatter(x.squeeze(), (a + b * x).squeeze(), marker="^", color="purple", zorder=3, label="K=10 support")
        ax.set(title=f"held-out task: y = {a:.2f} + {b:.2f} x", xlabel="x", ylabel="y")
    axes[0].legend(fontsize=7, loc="best")
    for name, color in (("maml", "tab:green"), ("untrained", "tab:gray")):
        means = [results[name][str(s)][0] for s in TEST_STEPS]
        cis = [results[name][str(s)][1] for s in TEST_STEPS]
        axes[2].errorbar(TEST_STEPS, means, yerr=cis, marker="o", capsize=3, color=color, label=name)
    axes[2].set(title=f"query MSE, {episodes} held-out tasks (95% CI)", xlabel="inner steps at test", yscale="log")
    axes[2].legend()
    axes[2].grid(alpha=0.3)
    steps, losses = zip(*curve)
    axes[3].plot(steps, losses, color="tab:green")
    axes[3].set(title="meta-training loss (query MSE after 1 step)", xlabel="outer step", yscale="log")
    axes[3].grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=PRESET["steps"])
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/bench/linear")
    args = parser.parse_args()

    maml, seconds, curve = train(args.steps, args.seed, Path(args.out))
    untrained = build(args.seed)
    test_seed = args.seed + 424_242
    results = {"maml": score(maml, args.episodes, test_seed), "untrained": score(untrained, args.episodes, test_seed)}
    plot(maml, results, curve, args.episodes, ROOT / "docs" / "img" / "linear_regression.png", test_seed + 1)
    record = {
        "name": "linear_regression",
        "command": f"python bench/linear_regression.py --steps {args.steps} --out {args.out}",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "preset": PRESET,
        "train_wall_s": round(seconds, 1),
        "test_tasks": args.episodes,
        "support_points": 10,
        "query_points": 100,
        "query_mse": results,  # model -> inner steps -> [mean, ci95]
    }
    write_json(RESULTS / "linear_regression.json", record)
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
