"""Learned LSTM optimiser (Andrychowicz et al. 2016) against tuned SGD, Nesterov, Adam and RMSprop.

    python bench/learned_optimizer.py [--quadratic-iterations 150] [--mlp-iterations 60] [--seeds 3]

Two workloads, each: meta-train the optimiser (truncated BPTT, horizon 100, unroll 20, Adam on phi), tune each
baseline's learning rate on a grid at the trained horizon on separate tuning problems, then run everything on
fresh test problems (several seeds) for twice the trained horizon.

- random 10-dimensional quadratics ||W theta - y||^2, 128 problems per meta-iteration and per seed;
- a 1-hidden-layer sigmoid MLP (20 units) on a 10-class task of 14x14 Omniglot images (all 20 images of each
  class, full batch): meta-trained on tasks from the training characters, tuned on validation characters,
  tested on test characters; and the generalisation tests on a wider MLP (40 units) and on a ReLU MLP,
  baselines re-tuned for each.

Writes bench/results/learned_optimizer.json, docs/learned_optimizer_quadratic.png and
docs/learned_optimizer_mlp.png, and the trained optimisers to runs/learned_optimizer/.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from common import RESULTS, ROOT, machine, save_figure, write_json

from fastadapt.datasets import resolve_data_dir
from fastadapt.datasets.omniglot import load_omniglot
from fastadapt.learned_optim import (
    BASELINES,
    LSTMOptimizerNet,
    OmniglotMLPs,
    Quadratics,
    meta_train,
    run_baseline,
    run_learned,
    save_net,
    tune_learning_rate,
)

GRID = [1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0]
HORIZON = 100


def compare(net, tune_problem, test_problems, horizon: int, steps: int) -> dict:
    """Tune each baseline on ``tune_problem`` at ``horizon``; run all on each test batch for ``steps``."""
    result = {"tuned_lr": {}, "grid_final_loss": {}, "curves": {}}
    for name in BASELINES:
        lr, scores = tune_learning_rate(name, GRID, tune_problem, horizon)
        result["tuned_lr"][name] = lr
        result["grid_final_loss"][name] = {str(k): v for k, v in scores.items()}
    runners = {"LSTM (learned)": lambda p: run_learned(net, p, steps)}
    for name, lr in result["tuned_lr"].items():
        runners[f"{name} (lr {lr:g})"] = lambda p, name=name, lr=lr: run_baseline(name, lr, p, steps)
    per_problem = {}  # label -> (seeds * B, steps + 1): for paired comparisons on the same problems
    for label, run in runners.items():
        traces = [run(p) for p in test_problems]
        # Mean loss over the problems of each seed: (seeds, steps + 1).
        result["curves"][label] = [t.mean(dim=1).tolist() for t in traces]
        per_problem[label] = torch.cat([t.T for t in traces])
    learned = per_problem.pop("LSTM (learned)")
    result["paired"] = {}  # baseline loss minus learned loss, problem by problem: > 0 means the LSTM is lower
    for label, losses in per_problem.items():
        result["paired"][label] = {}
        for s in (horizon, steps):
            diff = losses[:, s] - learned[:, s]
            result["paired"][label][f"step_{s}"] = {
                "mean_difference": diff.mean().item(),
                "ci95": 1.96 * diff.std().item() / len(diff) ** 0.5,
                "learned_lower_fraction": (diff > 0).float().mean().item(),
                "problems": len(diff),
            }
    result["final"] = {}
    for label, curves in result["curves"].items():
        t = torch.tensor(curves)
        result["final"][label] = {
            f"step_{s}": {"mean": t[:, s].mean().item(), "std_over_seeds": t[:, s].std().item() if len(t) > 1 else 0.0}
            for s in (horizon, steps)
        }
    return result


def plot(panels: list[tuple[str, dict]], path: Path, horizon: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.2), squeeze=False)
    for ax, (title, result) in zip(axes[0], panels):
        for label, curves in result["curves"].items():
            t = torch.tensor(curves)
            mean = t.mean(0)
            style = dict(lw=2.2, color="k") if label.startswith("LSTM") else dict(lw=1.2)
            ax.plot(range(len(mean)), mean, label=label, **style)
            if len(t) > 1:
                ax.fill_between(
                    range(len(mean)),
                    t.min(0).values,
                    t.max(0).values,
                    alpha=0.12,
                    **{k: v for k, v in style.items() if k == "color"},
                )
        ax.axvline(horizon, color="grey", ls="--", lw=0.8)
        ax.set(yscale="log", xlabel="step", ylabel="loss (mean over problems)", title=title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quadratic-iterations", type=int, default=150)
    parser.add_argument("--mlp-iterations", type=int, default=60)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--meta-lr", type=float, default=1e-2)
    parser.add_argument("--meta-lr-schedule", default="constant", help="constant or cosine (to 0)")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    out_dir = ROOT / "runs" / "learned_optimizer"
    record: dict = {
        "args": vars(args),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
    }
    started = time.time()

    def log(tag):
        return lambda i, loss: (
            print(f"{tag} {i}: meta-loss {loss:.4f} ({time.time() - started:.0f}s)", flush=True)
            if i % 10 == 0
            else None
        )

    # --- quadratics -----------------------------------------------------------------------------------
    quadratics = Quadratics(10)
    net_q = LSTMOptimizerNet()
    t0 = time.time()
    record["quadratic_meta_loss"] = meta_train(
        net_q,
        quadratics,
        args.quadratic_iterations,
        HORIZON,
        20,
        batch=128,
        lr=args.meta_lr,
        seed=0,
        log=log("quadratic"),
        lr_schedule=args.meta_lr_schedule,
    )
    record["quadratic_meta_train_s"] = round(time.time() - t0, 1)
    save_net(net_q, out_dir / "quadratic.pt")
    tune = quadratics.sample(128, torch.Generator().manual_seed(1000))
    tests = [quadratics.sample(128, torch.Generator().manual_seed(2000 + s)) for s in range(args.seeds)]
    record["quadratic"] = compare(net_q, tune, tests, HORIZON, 2 * HORIZON)
    plot(
        [("10-d quadratics (trained horizon 100, dashed)", record["quadratic"])],
        ROOT / "docs" / "learned_optimizer_quadratic.png",
        HORIZON,
    )
    print(json.dumps({k: record["quadratic"][k] for k in ("final", "paired")}, indent=1), flush=True)

    # --- Omniglot MLPs ----------------------------------------------------------------------------------
    splits = load_omniglot(resolve_data_dir(args.data_dir), "vinyals", image_size=14)
    net_m = LSTMOptimizerNet()
    t0 = time.time()
    record["mlp_meta_loss"] = meta_train(
        net_m,
        OmniglotMLPs(splits["train"], hidden=20),
        args.mlp_iterations,
        HORIZON,
        20,
        batch=1,
        lr=args.meta_lr,
        seed=0,
        log=log("mlp"),
        lr_schedule=args.meta_lr_schedule,
    )
    record["mlp_meta_train_s"] = round(time.time() - t0, 1)
    save_net(net_m, out_dir / "mlp.pt")
    # The generalisation tests: a wider hidden layer (40 units), and ReLU instead of sigmoid (the paper's
    # failure case); each baseline re-tuned on validation-character problems of the same shape.
    for key, hidden, activation in (("mlp_20", 20, "sigmoid"), ("mlp_40", 40, "sigmoid"), ("mlp_20_relu", 20, "relu")):
        tune = OmniglotMLPs(splits["val"], hidden, activation=activation).sample(8, torch.Generator().manual_seed(1000))
        tests = [
            OmniglotMLPs(splits["test"], hidden, activation=activation).sample(
                8, torch.Generator().manual_seed(2000 + s)
            )
            for s in range(args.seeds)
        ]
        record[key] = compare(net_m, tune, tests, HORIZON, 2 * HORIZON)
        print(key, json.dumps({k: record[key][k] for k in ("final", "paired")}, indent=1), flush=True)
    plot(
        [
            ("MLP 196-20-10 sigmoid, Omniglot test characters", record["mlp_20"]),
            ("wider MLP 196-40-10 (optimiser trained on 20 units)", record["mlp_40"]),
            ("ReLU MLP 196-20-10 (optimiser trained on sigmoid)", record["mlp_20_relu"]),
        ],
        ROOT / "docs" / "learned_optimizer_mlp.png",
        HORIZON,
    )
    record["total_wall_s"] = round(time.time() - started, 1)
    path = RESULTS / "learned_optimizer.json"
    write_json(path, record, indent=1)
    print(f"wrote {path} in {record['total_wall_s']} s")


if __name__ == "__main__":
    main()
