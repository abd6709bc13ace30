"""Kill a training run with SIGKILL, resume it, and check that it ends exactly where an uninterrupted run ends.

Shared by ``tests/test_kill.py`` (a few kills of a tiny sinusoid run) and ``bench/kill_soak.py`` (20 kills of the
Omniglot presets, and under torchrun). Runs are launched through this file as a script::

    python tests/killing.py MARKERS train --algorithm maml ...          # or under torchrun, one per process

which runs ``fastadapt.cli.main`` unchanged except that it appends a line to ``MARKERS`` when the run's phases
begin and end (start, the training loop, each validation, each checkpoint write, the final meta-test), so that a
kill can be aimed at a phase and each kill can be told afterwards which phase it landed in. The markers only
observe: no number the run computes depends on them. ``KILLING_SLOW_SAVE=SECONDS`` makes each checkpoint write pause
that long after its bytes are written and before they are flushed and renamed (a slow disk), and
``KILLING_SLOW_VALIDATION=SECONDS`` each validation pause that long after it starts, so that a test can land a kill
inside a tiny run's checkpoint write or validation every time.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()

#: What a kill is aimed at: a checkpoint being written, a validation in progress, or any moment.
TARGETS = ("checkpoint", "validation", "random")


# --- the child: a run that leaves markers ------------------------------------------------------------


def child_main(argv: list[str]) -> int:
    markers, args = Path(argv[0]), argv[1:]
    rank = os.environ.get("RANK", "0")

    def mark(event: str) -> None:
        with open(markers, "a") as f:
            f.write(f"{time.time():.6f} {rank} {os.getpid()} {event}\n")

    mark("start")
    import fastadapt.atomic as atomic
    import fastadapt.evaluate as evaluate
    import fastadapt.train as train
    from fastadapt.cli import main

    original_validate, original_save, original_bar = train._validate, train.save_checkpoint, train.tqdm
    original_write, original_eval = atomic.write_with, evaluate.evaluate_checkpoint
    original_source, original_plot = train.task_source, train.plot_learning_curve
    pause = float(os.environ.get("KILLING_SLOW_SAVE", "0"))
    validation_pause = float(os.environ.get("KILLING_SLOW_VALIDATION", "0"))

    def validate(*args: Any, **kwargs: Any) -> Any:
        mark("val-start")
        time.sleep(validation_pause)
        result = original_validate(*args, **kwargs)
        mark("val-end")
        return result

    def save(path: Path, state: dict[str, Any]) -> None:
        mark(f"save-start {Path(path).name}")
        original_save(path, state)
        mark("save-end")

    def write_with(path: Path, write: Any) -> None:
        def slow(f: Any) -> None:
            write(f)
            if pause and Path(path).suffix == ".pt":
                f.flush()
                time.sleep(pause)

        original_write(path, slow)

    def bar(*args: Any, **kwargs: Any) -> Any:
        mark("loop-start")
        return original_bar(*args, **kwargs)

    def final_eval(*args: Any, **kwargs: Any) -> Any:
        mark("final-eval")
        return original_eval(*args, **kwargs)

    def task_source(config: Any, splits: Any, part: str, seed: int) -> Any:
        source = original_source(config, splits, part, seed)
        if part == "train":  # each training step draws its meta-batch once
            draw = source.sample

            def sample(*args: Any, **kwargs: Any) -> Any:
                mark("step")
                return draw(*args, **kwargs)

            source.sample = sample
        return source

    def plot(*args: Any, **kwargs: Any) -> Any:
        mark("plot")
        return original_plot(*args, **kwargs)

    train._validate, train.save_checkpoint, train.tqdm = validate, save, bar
    atomic.write_with, evaluate.evaluate_checkpoint = write_with, final_eval
    train.task_source, train.plot_learning_curve = task_source, plot
    code = main(args)
    mark(f"exit {code}")
    return code


# --- the parent: kill, resume, compare ------------------------------------------------------------------


@dataclasses.dataclass
class Marker:
    time: float
    rank: int
    pid: int
    event: str


def read_markers(path: Path) -> list[Marker]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        parts = line.split(" ", 3)
        if len(parts) == 4:
            out.append(Marker(float(parts[0]), int(parts[1]), int(parts[2]), parts[3]))
    return out


def phase_at(markers: list[Marker], moment: float) -> str:
    """The phase rank 0 of a run was in at ``moment``, from its markers."""
    last = None
    for marker in markers:
        if marker.rank == 0 and marker.time <= moment:
            last = marker.event
    if last is None or last == "start":
        return "start-up (imports, data, resume)"
    if last.startswith("save-start"):
        return "checkpoint write"
    if last == "val-start":
        return "validation"
    if last in ("loop-start", "step", "val-end", "save-end"):
        return "training step"
    if last == "plot":
        return "learning curve"
    if last == "final-eval":
        return "final meta-test"
    return "after training"


def launch(markers: Path, argv: list[str], log: Path, processes: int = 1, env: dict[str, str] | None = None):
    """Start ``fastadapt <argv>`` through this file (under torchrun with ``processes`` > 1)."""
    if processes > 1:
        torchrun = Path(sys.executable).with_name("torchrun")
        command = [str(torchrun), "--standalone", "--nproc-per-node", str(processes), str(HERE), str(markers), *argv]
    else:
        command = [sys.executable, str(HERE), str(markers), *argv]
    environment = {**os.environ, **(env or {})}
    with open(log, "a") as handle:
        return subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=environment)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie of ours counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def run_pids(markers: list[Marker], since: float) -> dict[int, int]:
    """rank -> pid of the fastadapt processes started after ``since``."""
    return {m.rank: m.pid for m in markers if m.event == "start" and m.time >= since}


def wait_for(condition, process: subprocess.Popen, timeout: float, poll: float = 0.001) -> bool:
    """Poll ``condition()`` until it holds (True) or the process ends or time runs out (False)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return True
        if process.poll() is not None:
            return bool(condition())
        time.sleep(poll)
    return False


def count(markers_path: Path, since: float, prefix: str) -> tuple[int, str | None]:
    """How many of rank 0's markers since ``since`` start with ``prefix``, and its last marker."""
    events = [m.event for m in read_markers(markers_path) if m.time >= since and m.rank == 0]
    return sum(e.startswith(prefix) for e in events), (events[-1] if events else None)


def aim(moment: Moment, out: Path, markers_path: Path, since: float, process: subprocess.Popen) -> bool:
    """Wait until ``moment`` of the run started at ``since``; False if the run ended first."""
    if moment.target == "checkpoint":  # the nth checkpoint write of this process, while its temporary file exists

        def writing() -> bool:
            return count(markers_path, since, "save-start")[0] >= moment.nth and any(out.glob(".*.pt.tmp-*"))

        return wait_for(writing, process, timeout=900)
    if moment.target == "validation":  # delay seconds into its nth validation

        def validating() -> bool:
            started, last = count(markers_path, since, "val-start")
            return started >= moment.nth and last == "val-start"

        if not wait_for(validating, process, timeout=900, poll=0.002):
            return False
        ended = count(markers_path, since, "val-end")[0] + 1
        # delay seconds into it, or at once when it ends sooner: the checkpoint that follows is not written yet
        wait_for(lambda: count(markers_path, since, "val-end")[0] >= ended, process, moment.delay, poll=0.002)
        return process.poll() is None
    elif moment.nth:  # delay seconds into its nth training step
        if not wait_for(lambda: count(markers_path, since, "step")[0] >= moment.nth, process, 900, poll=0.002):
            return False
    time.sleep(moment.delay)
    return process.poll() is None


def kill_one(process: subprocess.Popen, markers_path: Path, since: float, rank: int, processes: int) -> int | None:
    """SIGKILL the process of ``rank`` (under torchrun, one of the workers); the launcher then ends. Returns the pid
    killed, or None when it had already ended."""
    if processes == 1:
        pid = process.pid
    else:
        pids = run_pids(read_markers(markers_path), since)
        if rank not in pids:
            wait_for(lambda: rank in run_pids(read_markers(markers_path), since), process, timeout=120)
            pids = run_pids(read_markers(markers_path), since)
        pid = pids.get(rank)
    if pid is None or not alive(pid):
        return None
    os.kill(pid, signal.SIGKILL)
    return pid


def finish(process: subprocess.Popen, markers_path: Path, since: float, timeout: float = 300) -> int:
    """Wait for the launcher to end; end what remains of the processes it started (by pid), if it does not."""
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        for pid in run_pids(read_markers(markers_path), since).values():
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        process.kill()
        return process.wait()


def _load(path: Path) -> dict[str, Any]:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def _same(a: Any, b: Any, where: str, differences: list[str]) -> None:
    import torch

    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.dtype != b.dtype or a.shape != b.shape or not torch.equal(a, b):
            differences.append(where)
    elif isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            if key == "elapsed_s":  # wall clock
                continue
            if key not in a or key not in b:
                differences.append(f"{where}.{key} (missing)")
            else:
                _same(a[key], b[key], f"{where}.{key}", differences)
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            differences.append(f"{where} (length)")
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]", differences)
    elif type(a) is not type(b) or a != b:
        differences.append(where)


def metrics_without_times(path: Path) -> list[dict[str, Any]]:
    return [{k: v for k, v in json.loads(line).items() if k != "elapsed_s"} for line in path.read_text().splitlines()]


def compare_runs(reference: Path, candidate: Path) -> dict[str, Any]:
    """Bitwise comparison of two finished runs' outputs: parameters, optimiser, the rest of last.pt, best.pt's
    parameters and metrics.jsonl (wall-clock fields left out). Each: True when identical."""
    result: dict[str, Any] = {}
    if not (candidate / "last.pt").is_file():
        return {"identical": False, "why": "no last.pt"}
    a, b = _load(reference / "last.pt"), _load(candidate / "last.pt")
    for part in ("model", "optimizer"):
        differences: list[str] = []
        _same(a[part], b[part], part, differences)
        result[{"model": "parameters", "optimizer": "optimizer_state"}[part]] = not differences
    rest: list[str] = []
    for state in (a, b):  # the output folder is the one setting that differs
        state["config"] = {k: v for k, v in state["config"].items() if k != "out"}
    _same({k: v for k, v in a.items() if k not in ("model", "optimizer")},
          {k: v for k, v in b.items() if k not in ("model", "optimizer")}, "last.pt", rest)  # fmt: skip
    result["training_state"] = not rest
    best: list[str] = []
    _same(_load(reference / "best.pt")["model"], _load(candidate / "best.pt")["model"], "best", best)
    result["best_parameters"] = not best
    result["metrics"] = metrics_without_times(reference / "metrics.jsonl") == metrics_without_times(
        candidate / "metrics.jsonl"
    )
    result["differences"] = (rest + best)[:10]
    result["identical"] = all(result[k] for k in ("parameters", "optimizer_state", "training_state", "metrics"))
    result["identical"] = result["identical"] and result["best_parameters"]
    return result


@dataclasses.dataclass
class Moment:
    """When to kill one process of a run: ``delay`` seconds after it starts (``nth`` 0), or into its ``nth`` training
    step, or into its ``nth`` validation, or during its ``nth`` checkpoint write."""

    target: str
    nth: int = 0
    delay: float = 0.0
    rank: int = 0


@dataclasses.dataclass
class Plan:
    """Kills aimed at the phases of a run of ``steps`` steps validated every ``val_every``, which took the times of
    ``timing`` uninterrupted (:func:`timings`). Each moment is drawn when its process starts, from the step it
    resumes at, and always lies before the run could finish: kills keep landing until all are spent."""

    steps: int
    val_every: int
    timing: dict[str, float]
    rng: random.Random
    processes: int = 1

    def targets(self, count: int) -> list[str]:
        """A quarter aimed at checkpoint writes, a quarter into validations, the rest at random moments."""
        targets = ["checkpoint"] * (count // 4) + ["validation"] * (count // 4)
        targets += ["random"] * (count - len(targets))
        self.rng.shuffle(targets)
        return targets

    def moment(self, target: str, resumed: int | None) -> Moment:
        done = resumed or 0
        validations_left = self.steps // self.val_every - done // self.val_every + (self.steps % self.val_every > 0)
        rank = self.rng.randrange(self.processes)
        if target == "checkpoint":
            return Moment(target, self.rng.randint(1, max(1, validations_left)), rank=rank)
        if target == "validation":
            delay = self.rng.uniform(0, 0.5 * self.timing["validation_s"])  # validations vary with the load
            return Moment(target, self.rng.randint(1, max(1, validations_left)), delay, rank)
        # a moment drawn uniformly over the time the rest of the run takes: start-up, or into one of its steps
        startup, per_step = self.timing["startup_s"], self.timing["step_with_validation_s"]
        moment = self.rng.uniform(0, startup + (self.steps - done) * per_step)
        if moment < startup:
            return Moment("random", 0, moment, rank)
        step = min(int((moment - startup) // per_step), self.steps - done - 1)
        delay = moment - startup - step * per_step
        if step == self.steps - done - 1:  # the last step: before its validation, which would finish the run
            delay = min(delay, 0.9 * self.timing["step_s"])
        return Moment("random", step + 1, delay, rank)


def soak(
    argv: list[str],
    out: Path,
    moments: list[Callable[[int | None], Moment]],
    work: Path,
    processes: int = 1,
    env: dict[str, str] | None = None,
    steps: int | None = None,
) -> dict[str, Any]:
    """Run ``fastadapt <argv> --out <out> --resume`` again and again, each time killed at the moment the next of
    ``moments`` draws for it (given the step it resumes from), then once more to the end. Should a run of ``steps``
    steps finish before the kills are spent (a kill that came too late), the next kills go to a new chain in
    ``<out>-2``, and so on (each a run to compare). Returns what each kill hit and the chains."""
    markers_path = work / "markers.txt"
    log = work / "log.txt"
    record: list[dict[str, Any]] = []
    chains = [out]
    for draw in moments:
        resumed_from = _step_of(out / "last.pt")
        if steps is not None and resumed_from == steps:  # a run finished before the kills were spent: a new chain
            out = out.with_name(f"{chains[0].name}-{len(chains) + 1}")
            chains.append(out)
            resumed_from = None
        moment = draw(resumed_from)
        since = time.time()
        process = launch(markers_path, [*argv, "--out", str(out), "--resume"], log, processes, env)
        aimed = aim(moment, out, markers_path, since, process)
        killed_at = time.time()
        pid = kill_one(process, markers_path, since, moment.rank, processes) if aimed else None
        code = finish(process, markers_path, since)
        markers = [m for m in read_markers(markers_path) if m.time >= since]
        entry = {
            **dataclasses.asdict(moment),
            "resumed_from_step": resumed_from,
            "killed": pid is not None,
            "seconds_after_start": round(killed_at - since, 3),
            "phase": phase_at(markers, killed_at) if pid is not None else None,
            "exit_code": code,
        }
        if moment.target == "checkpoint" and pid is not None:
            entry["temporary_file_left"] = bool(list(out.glob(".*.pt.tmp-*")))
        entry["chain"] = len(chains)
        record.append(entry)
    since = time.time()
    process = launch(markers_path, [*argv, "--out", str(out), "--resume"], log, processes, env)
    final = finish(process, markers_path, since, timeout=3600)
    return {"kills": record, "final_exit_code": final, "chains": [str(c) for c in chains]}


def _step_of(path: Path) -> int | None:
    if not path.is_file():
        return None
    try:
        return int(_load(path)["step"])
    except Exception:  # a checkpoint the run itself refuses; the resume will say so
        return None


def timings(markers: list[Marker]) -> dict[str, float]:
    """From an uninterrupted run's markers: its start-up (until the training loop), one training step, one step
    with its share of the validations and checkpoint writes, and one validation."""
    rank0 = [m for m in markers if m.rank == 0]
    loop = next(m.time for m in rank0 if m.event == "loop-start")
    end = next(m.time for m in rank0 if m.event == "plot")
    vals = [b.time - a.time for a, b in zip(rank0, rank0[1:]) if a.event == "val-start" and b.event == "val-end"]
    saves = [b.time - a.time for a, b in zip(rank0, rank0[1:]) if a.event.startswith("save-start")]
    steps = sum(m.event == "step" for m in rank0)
    return {
        "startup_s": loop - rank0[0].time,
        "step_s": (end - loop - sum(vals) - sum(saves)) / steps,
        "step_with_validation_s": (end - loop) / steps,
        "validation_s": sum(vals) / len(vals),
        "run_s": max(m.time for m in rank0) - rank0[0].time,
    }


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
