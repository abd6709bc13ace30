"""MAML-RL benchmark (Finn et al. 2017, Figure 5): train MAML and the pretrained baseline, then report the mean
return after 0..3 adaptation steps on 40 new tasks for MAML, pretrained, random (and the oracle on 2D navigation).

    python bench/maml_rl.py train --env navigation-2d --method maml --out runs/rl/navigation-2d/maml
    python bench/maml_rl.py train --env navigation-2d --method pretrained --out runs/rl/navigation-2d/pretrained
    python bench/maml_rl.py eval --env navigation-2d --runs runs/rl/navigation-2d \
        --json bench/results/maml_rl_navigation-2d.json --png docs/img/maml_rl_navigation-2d.png

Training resumes from ``<out>/checkpoint.pt`` when rerun (run it again after an interruption).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from fastadapt import atomic
from fastadapt.algorithms.optimization.maml_rl import MAMLRLOptions, build, options_for
from fastadapt.rl import runner


def method_options(env: str, method: str, iterations: int | None, **policy: float | None):
    """The preset for ``env`` with ``iterations`` and the policy's settings (init_std, action_scale) where given."""
    changes = {"checkpoint_every": 5, **({"iterations": iterations} if iterations else {})}
    changes.update({name: value for name, value in policy.items() if value is not None})
    if method == "pretrained":  # one policy trained on all tasks jointly with the same TRPO step and budget
        changes["inner_steps"] = 0
    return options_for(env, **changes)


def cmd_train(args: argparse.Namespace) -> None:
    options = method_options(
        args.env, args.method, args.iterations, init_std=args.init_std, action_scale=args.action_scale
    )
    run = runner.train(
        options,
        args.out,
        build,
        resume=True,
        progress=sys.stderr.isatty(),
        log=lambda m: print(json.dumps(m), flush=True),
        time_budget_s=args.time_budget,
    )
    steps = sum(m["env_steps"] for m in run.history)
    print(f"done: {run.iteration} iterations, {run.wall_time:.0f} s, {steps / run.wall_time:.0f} env steps/s")


def cmd_eval(args: argparse.Namespace) -> None:
    runs = Path(args.runs)
    maml = runner.load_run(runs / "maml" / runner.CHECKPOINT_NAME, MAMLRLOptions, build)
    pretrained = runner.load_run(runs / "pretrained" / runner.CHECKPOINT_NAME, MAMLRLOptions, build)
    options = maml.options
    policies = {"maml": maml.learner, "pretrained": pretrained.learner, "random": runner.random_learner(options, build)}
    start = time.perf_counter()
    results = runner.evaluate(policies, options, tasks=args.tasks, steps=args.steps)
    eval_s = time.perf_counter() - start
    print(runner.format_table(results))
    training = {}
    for name, run in (("maml", maml), ("pretrained", pretrained)):
        steps = sum(m["env_steps"] for m in run.history)
        training[name] = {
            "iterations": run.iteration,
            "wall_s": run.wall_time,
            "env_steps": steps,
            "env_steps_per_s": steps / run.wall_time,
            "sample_s": sum(m["sample_s"] for m in run.history),
            "update_s": sum(m["update_s"] for m in run.history),
            # the process's CPU time, over the iterations that recorded it (the runner records it per iteration)
            "cpu_s": sum(m["cpu_s"] for m in run.history if "cpu_s" in m),
            "cpu_s_iterations": sum("cpu_s" in m for m in run.history),
            "env_steps_per_cpu_s": per_cpu_second(run.history),
            "history": run.history,
        }
    record = {
        "benchmark": "maml_rl",
        "env": options.env,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "threads": torch.get_num_threads(),
        "load_average_at_eval": os.getloadavg(),
        "command": " ".join(sys.argv),
        "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(options).items()},
        "training": training,
        "eval_s": eval_s,
        "results": results,
    }
    if "oracle" in results:
        record["target"] = target(results)
        print(json.dumps(record["target"]))
    atomic.write_text(Path(args.json), json.dumps(record, indent=1) + "\n")
    if args.png:
        plot(results, training, args.png)


def per_cpu_second(history: list[dict]) -> float | None:
    """Environment steps per second of the process's CPU time (the rate on a thread of its own), over the
    iterations that recorded their CPU time."""
    timed = [m for m in history if "cpu_s" in m]
    cpu = sum(m["cpu_s"] for m in timed)
    return sum(m["env_steps"] for m in timed) / cpu if cpu > 0 else None


def target(results: dict) -> dict:
    """The issue's 2D-navigation target: MAML after one step at least twice as close to the oracle's return as
    the pretrained policy after one step, and MAML improving at steps 2 and 3."""
    oracle = results["oracle"]["mean"][1]
    maml, pretrained = results["maml"]["mean"], results["pretrained"]["mean"]
    gap_maml, gap_pretrained = oracle - maml[1], oracle - pretrained[1]
    improving = len(maml) > 3 and maml[2] > maml[1] and maml[3] > maml[2]
    return {
        "gap_to_oracle_after_one_step": {"maml": gap_maml, "pretrained": gap_pretrained},
        "closeness_ratio": gap_pretrained / gap_maml if gap_maml > 0 else float("inf"),
        "maml_improves_at_steps_2_and_3": improving,
        "met": gap_pretrained >= 2 * gap_maml and improving,
    }


def plot(results: dict, training: dict, png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4))
    steps = list(range(results["steps"] + 1))
    styles = {"maml": "C0-o", "pretrained": "C1-s", "random": "C2-^", "oracle": "k--"}
    for name, style in styles.items():
        if name not in results:
            continue
        mean, ci = results[name]["mean"], results[name]["ci95"]
        ax.errorbar(steps, mean, yerr=ci, fmt=style, capsize=3, label=name)
    ax.set_xlabel("number of gradient steps")
    ax.set_ylabel("average return")
    ax.set_xticks(steps)
    ax.set_title(f"{results['env']}: {results['tasks']} new tasks (95% CI)")
    ax.legend()
    maml = training["maml"]["history"]
    bx.plot([m["iteration"] for m in maml], [m["return_after"] for m in maml], "C0", label="maml, after the inner step")
    bx.plot([m["iteration"] for m in maml], [m["return_before"] for m in maml], "C0:", label="maml, before")
    pretrained = training["pretrained"]["history"]
    bx.plot([m["iteration"] for m in pretrained], [m["return_after"] for m in pretrained], "C1", label="pretrained")
    bx.set_xlabel("meta-iteration")
    bx.set_ylabel("mean training return")
    bx.set_title("training curves")
    bx.legend()
    fig.tight_layout()
    atomic.write_with(Path(png), lambda f: fig.savefig(f, format="png", dpi=110))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train")
    train.add_argument("--env", required=True)
    train.add_argument("--method", choices=("maml", "pretrained"), required=True)
    train.add_argument("--out", required=True)
    train.add_argument("--iterations", type=int)
    train.add_argument("--init-std", type=float, help="the policy's initial standard deviation (default: preset)")
    train.add_argument("--action-scale", type=float, help="the policy's units of action (default: preset)")
    train.add_argument("--time-budget", type=float, help="stop after this many seconds (at an iteration's end)")
    done = sub.add_parser("iterations", help="print the iterations a run's checkpoint has done")
    done.add_argument("--out", required=True)
    ev = sub.add_parser("eval")
    ev.add_argument("--env", required=True)
    ev.add_argument("--runs", required=True, help="folder holding maml/ and pretrained/ runs")
    ev.add_argument("--tasks", type=int, default=40)
    ev.add_argument("--steps", type=int, default=3)
    ev.add_argument("--json", required=True)
    ev.add_argument("--png")
    args = parser.parse_args()
    if args.command == "iterations":
        print(runner.load_run(Path(args.out) / runner.CHECKPOINT_NAME, MAMLRLOptions, build).iteration)
        return
    {"train": cmd_train, "eval": cmd_eval}[args.command](args)


if __name__ == "__main__":
    main()
