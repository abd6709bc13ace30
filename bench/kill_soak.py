"""Kill soak: training runs killed with SIGKILL at 20 moments each and resumed with --resume must end bitwise where
an uninterrupted run ends (parameters, optimiser state, the rest of last.pt, best.pt, metrics.jsonl less wall-clock
fields).

For each preset (ProtoNet and MAML on Omniglot, small budgets, the strategy fixed so that runs are reproducible):
an uninterrupted reference run, then one chain of runs into another folder, each started with --resume and killed
at its planned moment (a quarter aimed at a checkpoint write: the kill lands while the temporary file exists; a
quarter into a validation; the rest at random moments), then resumed once more to the end. The same for MAML under
``torchrun --standalone --nproc-per-node 2``, killing one of the two processes at random. Each kill records the
phase it landed in (from the markers the run leaves, tests/killing.py). Each kill's moment is drawn when its process
starts, from the step it resumes at, so that every kill lands before the run could finish.
Writes bench/results/kill_soak.json.

    FASTADAPT_DATA=/work/shared/data OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python bench/kill_soak.py
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from common import RESULTS, ROOT, commit, machine, write_json  # noqa: E402
from killing import Plan, compare_runs, finish, launch, read_markers, soak, timings  # noqa: E402

BUDGET = ["--steps", "40", "--val-every", "8", "--val-episodes", "20", "--test-episodes", "20", "--quiet"]
#: What auto would otherwise measure on the first meta-batch (a choice by timing, which two runs may make differently).
FIXED = ["--strategy", "loop", "--workers", "1", "--no-channels-last"]
RUNS = {
    "protonet-omniglot": (["train", "--algorithm", "protonet", "--dataset", "omniglot", *BUDGET], 1),
    "maml-omniglot": (
        ["train", "--algorithm", "maml", "--dataset", "omniglot", *BUDGET, *FIXED],
        1,
    ),
    "maml-omniglot-torchrun-2": (
        ["train", "--algorithm", "maml", "--dataset", "omniglot", *BUDGET, *FIXED],
        2,
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--kills", type=int, default=20, help="kills per run")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill plan")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "kill_soak")
    parser.add_argument("--results", type=Path, default=RESULTS / "kill_soak.json")
    args = parser.parse_args()

    command = "FASTADAPT_DATA=/work/shared/data OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python bench/kill_soak.py "
    command += " ".join(sys.argv[1:])
    record = {"budget": BUDGET, "runs": {}}
    if args.results.exists():  # the runs not asked for this time keep their records
        record["runs"] = {k: v for k, v in json.loads(args.results.read_text()).get("runs", {}).items()
                          if k not in args.runs}  # fmt: skip
    rng = random.Random(args.seed)
    for name in args.runs:
        argv, processes = RUNS[name]
        work = args.work / name
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        started = time.time()
        reference_markers = work / "reference_markers.txt"
        process = launch(
            reference_markers, [*argv, "--out", str(work / "reference")], work / "reference.log", processes
        )
        code = finish(process, reference_markers, started, timeout=3600)
        if code != 0:
            raise SystemExit(f"{name}: the reference run failed (exit {code}); see {work / 'reference.log'}")
        measured = timings(read_markers(reference_markers))
        plan = Plan(int(argv[argv.index("--steps") + 1]), int(argv[argv.index("--val-every") + 1]), measured, rng,
                    processes)  # fmt: skip
        moments = [lambda resumed, t=t, p=plan: p.moment(t, resumed) for t in plan.targets(args.kills)]
        print(f"{name}: reference {measured['run_s']:.0f} s; {len(moments)} kills", flush=True)
        chain_dir = work / "chain"
        chain_dir.mkdir()
        outcome = soak(argv, work / "killed", moments, chain_dir, processes, steps=plan.steps)
        comparisons = [compare_runs(work / "reference", Path(chain)) for chain in outcome["chains"]]
        comparison = {**comparisons[-1], "identical": all(c["identical"] for c in comparisons)}
        landed = [k for k in outcome["kills"] if k["killed"]]
        record["runs"][name] = {
            "argv": argv,
            "processes": processes,
            "reference_timings_s": {k: round(v, 2) for k, v in measured.items()},
            "kills_planned": len(moments),
            "kills_landed": len(landed),
            "phases_hit": dict(collections.Counter(k["phase"] for k in landed)),
            "checkpoint_kills_with_temporary_file_left": sum(bool(k.get("temporary_file_left")) for k in landed),
            "final_exit_code": outcome["final_exit_code"],
            "chains": len(comparisons),
            "identical": comparison,
            "identical_per_chain": [c["identical"] for c in comparisons],
            "kills": outcome["kills"],
            "wall_s": round(time.time() - started, 1),
            "command": command,
            "commit": commit(),
            "machine": machine(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        }
        print(
            f"{name}: {len(landed)} kills landed {record['runs'][name]['phases_hit']}; identical: "
            f"{comparison['identical']}; {record['runs'][name]['wall_s']} s",
            flush=True,
        )
        write_json(args.results, record)


if __name__ == "__main__":
    main()
