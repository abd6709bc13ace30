"""Fuzz every loader of fastadapt and every value of its command line: at least 1,000 hypothesis cases per loader
(tests/fuzzing.py), plus 3,000 random 3 KB files handed to load_checkpoint. Each case runs in a worker process under
a time bound (an alarm inside it; the worker is killed and replaced if it does not answer 30 s after that) and a
limit on its address space (so that an absurd allocation fails in the worker instead of exhausting the machine).
Counts per loader: cases tried, read or accepted, clean one-line errors, and each kind of failure (tracebacks,
hangs, errors of several lines or naming neither file nor option, warnings, leftover files, wrong data read).
Writes bench/results/fuzz_loaders.json.

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python bench/fuzz_loaders.py      # everything (about an hour)
    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python bench/fuzz_loaders.py --cases 50 --targets cli_train
"""

from __future__ import annotations

import argparse
import collections
import json
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from common import RESULTS, commit, machine, write_json  # noqa: E402

#: Bytes of address space a worker may map: an absurd allocation then fails there instead of exhausting memory.
ADDRESS_SPACE = 8 * 2**30
RANDOM_FILE_BYTES = 3 * 1024


def serve(connection: Any, fixtures_root: str, bound: float) -> None:
    """The worker: run each case it is sent, answer with its outcome."""
    import resource
    import shutil

    import torch

    torch.set_num_threads(1)
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))
    import fuzzing

    fixtures = fuzzing.Fixtures(Path(fixtures_root)).make()
    while True:
        message = connection.recv()
        if message is None:
            return
        name, case = message
        root = Path(tempfile.mkdtemp(prefix="fuzz-"))
        try:
            outcome = fuzzing.run_case(fuzzing.TARGETS[name], case, root / "case", fixtures, bound=bound)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        connection.send((outcome.kind, outcome.detail))


class Worker:
    """A worker process; replaced when a case does not come back in time."""

    def __init__(self, fixtures_root: Path, bound: float) -> None:
        self.fixtures_root, self.bound = fixtures_root, bound
        self.context = multiprocessing.get_context("spawn")
        self.process = None
        self.start()

    def start(self) -> None:
        self.connection, child = self.context.Pipe()
        self.process = self.context.Process(target=serve, args=(child, str(self.fixtures_root), self.bound))
        self.process.start()

    def run(self, name: str, case: Any) -> tuple[str, str]:
        try:
            self.connection.send((name, case))
            if self.connection.poll(self.bound + 30 + (120 if not self.warm else 0)):
                self.warm = True
                return self.connection.recv()
            detail = f"no answer within {self.bound + 30:.0f} s"
        except (EOFError, BrokenPipeError, ConnectionResetError) as error:  # the worker died (e.g. killed for memory)
            detail = f"the worker died ({type(error).__name__}, exit code {self.process.exitcode})"
            self.process.join(5)
            self.restart()
            return "traceback", detail
        self.restart()
        return "hang", detail

    warm = False

    def restart(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join()
        self.warm = False
        self.start()

    def close(self) -> None:
        try:
            self.connection.send(None)
        except (BrokenPipeError, OSError):
            pass
        self.process.join(30)
        if self.process.is_alive():
            self.process.kill()


def fuzz_target(worker: Worker, name: str, cases: int, seed: int) -> dict[str, Any]:
    from fuzzing import FAILURES, TARGETS
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hypothesis_seed

    counts: collections.Counter[str] = collections.Counter()
    examples: dict[str, list[str]] = collections.defaultdict(list)
    started = time.time()

    @hypothesis_seed(seed)
    @settings(max_examples=cases, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=TARGETS[name].strategy)
    def one(case: Any) -> None:
        kind, detail = worker.run(name, case)
        counts[kind] += 1
        if kind in FAILURES and len(examples[kind]) < 5:
            examples[kind].append(detail)
        if kind == "clean" and len(examples["clean"]) < 3:
            examples["clean"].append(detail)

    one()
    return summary(counts, examples, time.time() - started)


def summary(counts: collections.Counter, examples: dict[str, list[str]], seconds: float) -> dict[str, Any]:
    from fuzzing import FAILURES

    return {
        "cases": sum(counts.values()),
        "read_or_accepted": counts["ok"],
        "clean_errors": counts["clean"],
        "tracebacks": counts["traceback"],
        "hangs": counts["hang"],
        "other_failures": {k: counts[k] for k in FAILURES if k not in ("traceback", "hang") and counts[k]},
        "failures": sum(counts[k] for k in FAILURES),
        "examples": dict(examples),
        "wall_s": round(seconds, 1),
    }


def random_files(worker: Worker, count: int, seed: int) -> dict[str, Any]:
    """``count`` files of 3 KB random bytes handed to load_checkpoint (what `eval --checkpoint` and --resume call)."""
    import numpy as np
    from fuzzing import FAILURES, Case

    rng = np.random.default_rng(seed)
    counts: collections.Counter[str] = collections.Counter()
    examples: dict[str, list[str]] = collections.defaultdict(list)
    started = time.time()
    for _ in range(count):
        kind, detail = worker.run("checkpoint_file", Case({"model.pt": rng.bytes(RANDOM_FILE_BYTES)}, {}))
        counts[kind] += 1
        if kind in FAILURES and len(examples[kind]) < 5:
            examples[kind].append(detail)
    return summary(counts, examples, time.time() - started)


def main() -> None:
    from fuzzing import TARGETS, Fixtures

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=1000, help="hypothesis cases per loader")
    parser.add_argument("--targets", nargs="+", default=[t for t in TARGETS if t != "checkpoint_file"],
                        choices=list(TARGETS))  # fmt: skip
    parser.add_argument("--random-files", type=int, default=3000, help="random 3 KB files for load_checkpoint")
    parser.add_argument("--bound", type=float, default=60.0, help="seconds one case may take")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", type=Path, default=RESULTS / "fuzz_loaders.json")
    args = parser.parse_args()

    record: dict[str, Any] = {
        "command": "OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python bench/fuzz_loaders.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "commit": commit(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "time_bound_s": args.bound,
        "address_space_limit_gib": ADDRESS_SPACE / 2**30,
        "loaders": {},
    }
    if args.results.exists():  # the loaders not fuzzed this time keep their records, with their commit and date
        previous = json.loads(args.results.read_text())
        for name, result in previous.get("loaders", {}).items():
            if name not in args.targets:
                record["loaders"][name] = {"commit": previous.get("commit"), "date": previous.get("date"), **result}
        if not args.random_files and "random_3kb_checkpoints" in previous:
            record["random_3kb_checkpoints"] = {"commit": previous.get("commit"), "date": previous.get("date"),
                                                **previous["random_3kb_checkpoints"]}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="fuzz-fixtures-") as fixtures_root:
        Fixtures(Path(fixtures_root)).make()
        worker = Worker(Path(fixtures_root), args.bound)
        try:
            if args.random_files:
                record["random_3kb_checkpoints"] = {"commit": record["commit"], "date": record["date"],
                                                    **random_files(worker, args.random_files, args.seed)}  # fmt: skip
                print("random 3 KB checkpoints:", _line(record["random_3kb_checkpoints"]), flush=True)
                write_json(args.results, record)
            for name in args.targets:
                result = fuzz_target(worker, name, args.cases, args.seed)
                record["loaders"][name] = {"what": TARGETS[name].what, "commit": record["commit"],
                                           "date": record["date"], **result}  # fmt: skip
                print(f"{name}: {_line(result)}", flush=True)
                write_json(args.results, record)
        finally:
            worker.close()
    totals = [r for r in record["loaders"].values()]
    record["total"] = {
        "cases": sum(r["cases"] for r in totals),
        "failures": sum(r["failures"] for r in totals),
        "tracebacks": sum(r["tracebacks"] for r in totals),
        "hangs": sum(r["hangs"] for r in totals),
    }
    write_json(args.results, record)


def _line(result: dict[str, Any]) -> str:
    return (
        f"{result['cases']} cases, {result['read_or_accepted']} read/accepted, {result['clean_errors']} clean errors, "
        f"{result['tracebacks']} tracebacks, {result['hangs']} hangs, other failures {result['other_failures']} "
        f"({result['wall_s']} s)"
    )


if __name__ == "__main__":
    main()
