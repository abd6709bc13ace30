"""How stable is ``auto``'s first-batch choice, and how much does a different choice cost?

On one configuration of bench/speed_maml.py (default: workload (a), MAML's Omniglot setting, 1 second-order inner
step, where the choice once varied between runs: steps of 0.185 s in two runs, 0.246 s in a third), this script:

1. runs ``auto`` (``fastadapt.engine.strategy.choose_strategy``) ``--runs`` times, each in a fresh process as
   ``fastadapt train`` would, and records what each run measured for every candidate and what it chose, then
   times ``--steps`` training steps with that choice;
2. times every candidate (strategy, workers, layout) at steady state: one process per candidate with the choice
   fixed, ``--rounds`` interleaved rounds of ``--steps`` steps after a warm-up, the median (as the speed benchmark);

and reports how often each candidate was chosen, and each run's choice against the fastest at steady state.

    bench/.venv-peers/bin/python bench/auto_stability.py --threads 2 --runs 6

Writes bench/results/auto_stability.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import speed_maml as bench
import torch
from common import RESULTS, ROOT, machine, write_json


def learner_for(workload: str, steps: int, first_order: bool, choice: list | None):
    """fastadapt's MAML on the benchmark's network (torch's layers); ``choice``: [strategy, workers, channels_last]
    fixed, or None for auto."""
    from fastadapt.algorithms import MAML

    model = bench.make_model(workload)
    settings = {} if choice is None else dict(zip(("strategy", "workers", "channels_last"), choice))
    return model, MAML(model, bench.INNER_LR, steps, first_order=first_order, **{"strategy": "auto", **settings})


def worker(workload: str, steps: int, first_order: bool, choice: list | None, threads: int, variant: dict) -> None:
    """One process: auto's choice (``choice`` None) or a fixed one, then timed steps on command. ``variant``: auto's
    ``close_margin`` (fastadapt.engine.strategy.CLOSE_MARGIN; 0 is auto before close candidates took more turns) and
    ``trim`` (False: freed memory is not given back between trials)."""
    from fastadapt.engine import strategy
    from fastadapt.engine.strategy import choice_label, choose_strategy

    strategy.CLOSE_MARGIN = variant.get("close_margin", strategy.CLOSE_MARGIN)
    if not variant.get("trim", True):
        strategy.release_freed_memory = lambda: None
    torch.set_num_threads(threads)
    model, learner = learner_for(workload, steps, first_order, choice)
    batch = bench.make_batch(workload)
    started = time.perf_counter()
    measured = choose_strategy(learner, batch) if choice is None else {}
    measuring_s = time.perf_counter() - started
    optimizer = torch.optim.Adam(model.parameters(), lr=bench.OUTER_LR)

    def training_step():
        optimizer.zero_grad(set_to_none=True)
        learner.meta_backward(batch)
        optimizer.step()

    training_step()  # warm-up
    label = choice_label(learner.strategy, learner.workers, learner.channels_last)
    reply = {"chosen": label, "measured": measured.get("seconds", {}), "measuring_s": measuring_s}
    print(json.dumps(reply), flush=True)
    bench.serve_timing(training_step)


class Worker(bench.Worker):
    def __init__(self, workload, steps, first_order, choice, threads, variant=None):
        command = [sys.executable, __file__, "--worker", workload, str(steps), str(int(first_order))]
        command += ["--choice", json.dumps(choice), "--threads", str(threads), "--variant", json.dumps(variant or {})]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)

    def close(self):
        self.process.stdin.write(json.dumps({"op": "quit"}) + "\n")
        self.process.stdin.flush()
        self.process.wait()


def candidates(measured: dict[str, float]) -> list[list]:
    """The candidates auto timed, from their labels ("fold, 2 workers, channels-last")."""
    found = []
    for label in measured:
        parts = [p.strip() for p in label.split(",")]
        workers = next((int(p.split()[0]) for p in parts if p.endswith("workers")), 1)
        found.append([parts[0], workers, "channels-last" in parts])
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", nargs=3, metavar=("WORKLOAD", "STEPS", "FIRST_ORDER"), help=argparse.SUPPRESS)
    parser.add_argument("--choice", default="null", help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="{}", help=argparse.SUPPRESS)
    parser.add_argument("--close-margin", type=float, nargs="+", default=[0.0, 0.1], help="auto variants to run")
    parser.add_argument("--no-trim", action="store_true", help="also auto (margin 0) without trimming between trials")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workload", default="stride", choices=list(bench.WORKLOADS))
    parser.add_argument("--inner-steps", type=int, default=1)
    parser.add_argument("--order", default="second", choices=["second", "first"])
    parser.add_argument("--runs", type=int, default=6, help="fresh processes running auto")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--out", default=str(RESULTS / "auto_stability.json"))
    args = parser.parse_args()
    if args.worker:
        workload, steps, first_order = args.worker
        worker(
            workload, int(steps), first_order == "1", json.loads(args.choice), args.threads, json.loads(args.variant)
        )
        return
    first_order = args.order == "first"
    started = time.time()
    variants = [{"close_margin": m} for m in args.close_margin] + [{"close_margin": 0.0, "trim": False}] * args.no_trim
    runs = []
    for _ in range(args.runs):  # auto in a fresh process, then its choice's steps; the variants in turn
        for variant in variants:
            w = Worker(args.workload, args.inner_steps, first_order, None, args.threads, variant)
            w.wait_ready()
            times = [t for _ in range(args.rounds) for t in w.ask(op="time", steps=args.steps)["times"]]
            w.close()
            runs.append({"variant": variant, **w.ready, "median_s": statistics.median(times), "times_s": times})
            print(
                f"{json.dumps(variant)}: auto chose {w.ready['chosen']:<32} in {w.ready['measuring_s']:.1f} s, step "
                f"{runs[-1]['median_s']:.3f} s; measured {w.ready['measured']}",
                flush=True,
            )
    steady = {}
    workers = {}
    for choice in candidates(runs[0]["measured"]):  # each candidate at steady state, interleaved
        workers[json.dumps(choice)] = Worker(args.workload, args.inner_steps, first_order, choice, args.threads)
        workers[json.dumps(choice)].wait_ready()
    times = {key: [] for key in workers}
    for _ in range(args.rounds):
        for key, w in workers.items():
            times[key] += w.ask(op="time", steps=args.steps)["times"]
    for key, w in workers.items():
        w.close()
        steady[w.ready["chosen"]] = {"median_s": statistics.median(times[key]), "times_s": times[key]}
        print(f"steady state {w.ready['chosen']:<32} {steady[w.ready['chosen']]['median_s']:.3f} s")
    fastest = min(steady, key=lambda label: steady[label]["median_s"])
    record = {
        "command": " ".join(["python", *sys.argv]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "load_average_at_end": os.getloadavg(),
        "niceness": os.nice(0),
        "configuration": f"{args.workload}, {args.inner_steps} inner step(s), {args.order} order",
        "threads": args.threads,
        "wall_s": round(time.time() - started, 1),
        "choices": {json.dumps(v): dict(Counter(r["chosen"] for r in runs if r["variant"] == v)) for v in variants},
        "fastest_at_steady_state": fastest,
        "runs": runs,
        "steady_state": steady,
    }
    write_json(Path(args.out), record)
    print(f"choices {record['choices']}; fastest at steady state: {fastest}\nwrote {args.out}")


if __name__ == "__main__":
    main()
