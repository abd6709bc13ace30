"""Choosing how inner loops run: a per-task loop, or a chunk of tasks at once (``vmap``, or for the MAML family
"fold": tasks folded into the channels of one network pass, fastadapt.engine.folding), on one worker or one per CPU
thread (fastadapt.engine.taskpool), and on images in the standard or the channels-last layout, by measuring them.

Which is faster depends on the workload (measured on a 2-core CPU: vmap ~1.8x faster than a loop for
MAML's Omniglot setting with one query per class, 2-3x slower with 15), so ``strategy="auto"`` times
whole training steps (forward, inner loops and the meta-gradient's backward pass) with each on the
first meta-batch, before any update, and keeps the faster. The choice is stored in checkpoints, so a
resumed run continues with it. With ``workers=None`` (the MAML family), one worker is timed against one per
thread in the same way: two workers were 1.2-2x faster on the Omniglot-shaped workloads, but up to 2x slower
on a small sinusoid MLP. With ``channels_last=None`` (the MAML family, image batches), both layouts are timed
too: channels-last made a MAML step with 15 queries per class 1.17-1.39x faster on a CPU, and changed
nothing measurable with one query per class (docs/performance.md). A network that cannot take channels-last
inputs (a ``.view`` of its input, say) keeps the standard layout.

Before timing, it measures how much one task's meta-loss saves for the backward pass. Above
``VMAP_TRIAL_LIMIT_MIB`` the task is arithmetic-bound, and the loop is kept without trying vmap: vmap
lost on every such workload measured (2.2-2.5x slower with 15 queries per class, 63-92 MiB per task),
and its trial alone, a chunk of tasks vectorised at once, raised the process's peak memory 4-fold
(docs/performance.md). Folding lost there too (1.2x slower than the loop, channels-last, one
thread). MAML's one-query Omniglot setting, where vmap and folding win, saves 3-11 MiB.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from fastadapt.engine.execution import Learner
from fastadapt.engine.guard import GradientCheck, check_meta_gradient
from fastadapt.engine.taskpool import release_freed_memory
from fastadapt.tasks.episodes import TaskBatch


def _open_choices(learner: Learner) -> tuple[bool, bool, bool]:
    """Whether the strategy ("auto"), the number of workers (None) and the layout (None) are left for measuring."""
    execution = learner.execution
    if execution is None:
        return False, False, False
    return execution.strategy == "auto", execution.workers is None, execution.channels_last is None


def needs_measuring(learner: Learner) -> bool:
    """Whether :func:`choose_strategy` has anything to choose for ``learner``."""
    return any(_open_choices(learner))


def choice_label(strategy: str, workers: int | None, channels_last: bool | None = None) -> str:
    """How a measured choice is named in logs and benchmark tables: "vmap", "loop, 2 workers, channels-last"."""
    label = strategy if workers in (None, 1) else f"{strategy}, {workers} workers"
    return f"{label}, channels-last" if channels_last else label


#: One task's saved activations (MiB) above which ``auto`` keeps the loop untimed (module docstring).
VMAP_TRIAL_LIMIT_MIB = 32.0


@contextmanager
def _measuring(learner: Learner) -> Iterator[None]:
    """Leaves the engine's settings, gradients and buffers as they were (a meta-loss may update buffers: Reptile's
    carried Adam moments)."""
    execution = learner.execution
    original = (execution.strategy, execution.workers, execution.channels_last)
    buffers = {name: b.detach().clone() for name, b in learner.named_buffers()}
    try:
        yield
        learner.zero_grad(set_to_none=True)
    finally:
        execution.strategy, execution.workers, execution.channels_last = original
        with torch.no_grad():
            for name, b in learner.named_buffers():
                b.copy_(buffers[name])


def saved_activation_mib(learner: Learner, batch: TaskBatch) -> float:
    """MiB of the distinct tensors that the first task's meta-loss (per-task loop) saves for backward."""
    storages: dict[tuple[int, torch.dtype], int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[(storage.data_ptr(), tensor.dtype)] = storage.nbytes()
        return tensor

    with _measuring(learner), torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        learner.strategy = "loop"
        learner.meta_loss(batch.task(0))
    return sum(storages.values()) / 2**20


def synchronize(batch: TaskBatch) -> None:
    """Wait for the kernels queued on the batch's GPU, so that a timing covers them (a no-op on the CPU, whose
    operations finish when they return)."""
    if batch.support_x.is_cuda:
        torch.cuda.synchronize(batch.support_x.device)


def generators_of(batch: TaskBatch) -> list[int]:
    """``fork_rng``'s ``devices`` for the batch's device: its GPU's random generator too, so that measuring there
    leaves what training draws unchanged (``[]`` covers only the CPU's)."""
    return [batch.support_x.device.index or 0] if batch.support_x.is_cuda else []


Candidate = tuple[str, int | None, bool | None]  # strategy, workers, channels_last (None: the learner's own)
#: Timing per candidate that :func:`time_strategies` aims for, and its cap on trials. Three runs of a 0.1 s step
#: (MAML's Omniglot setting, first order) chose 2 workers at 0.117 s over one at 0.101 s.
SECONDS_PER_CANDIDATE, MAX_TRIALS = 1.0, 12
#: Candidates whose median is within CLOSE_MARGIN of the fastest's after that are timed again, in turn, for
#: CLOSE_SECONDS more each (at most CLOSE_TRIALS more trials), and ranked on all their trials: where two candidates
#: are that close, a few trials rank them by chance (docs/performance.md, "auto's choice"). 0 turns it off.
CLOSE_MARGIN, CLOSE_SECONDS, CLOSE_TRIALS = 0.1, 2.0, 24


def _median(times: list[float]) -> float:
    return sorted(times)[len(times) // 2]


def time_strategies(
    learner: Learner, batch: TaskBatch, trials: int = 2, candidates: list[Candidate] | None = None
) -> dict[str, float]:
    """Median seconds of a meta-loss forward + backward pass under each candidate (strategy, workers, layout;
    None: the learner's own), after one warm-up of each; by default loop and vmap. The candidates take turns,
    trial by trial, so a burst of load from elsewhere on the machine falls on all rather than on whichever
    ran at that moment. At least ``trials`` trials each, and more for short steps, until every candidate has
    run ``SECONDS_PER_CANDIDATE`` (at most ``MAX_TRIALS``); then the candidates within ``CLOSE_MARGIN`` of the fastest
    take more turns (``CLOSE_SECONDS``, ``CLOSE_TRIALS``). After each trial, malloc's freed memory goes back to the
    system (fastadapt.engine.taskpool.release_freed_memory), so that the trials' peak memory is one candidate's.
    Gradients are cleared afterwards, and no parameter or buffer changes."""
    candidates = candidates or [("loop", None, None), ("vmap", None, None)]
    times: dict[Candidate, list[float]] = {candidate: [] for candidate in candidates}

    def take_turns(turn: list[Candidate], enough) -> None:
        while not enough():
            for strategy, workers, channels_last in turn:
                learner.execution.strategy = strategy
                if workers is not None:
                    learner.execution.workers = workers
                if channels_last is not None:
                    learner.execution.channels_last = channels_last
                synchronize(batch)
                started = time.perf_counter()
                learner.meta_backward(batch)
                synchronize(batch)
                times[strategy, workers, channels_last].append(time.perf_counter() - started)
                release_freed_memory()  # so that the peak memory is one candidate's, not all of theirs

    def measured_enough() -> bool:
        done = len(times[candidates[0]]) - 1  # the first run of each is its warm-up
        timed = min(sum(t[1:]) for t in times.values())
        return done >= trials and (done >= MAX_TRIALS or timed >= SECONDS_PER_CANDIDATE)

    with _measuring(learner):
        take_turns(candidates, measured_enough)
        fastest = min(_median(t[1:]) for t in times.values())
        close = [c for c in candidates if _median(times[c][1:]) <= fastest * (1 + CLOSE_MARGIN)]
        if CLOSE_MARGIN > 0 and len(close) > 1:
            before = {c: (len(times[c]), sum(times[c])) for c in close}

            def ranked_enough() -> bool:
                more = len(times[close[0]]) - before[close[0]][0]
                timed = min(sum(times[c]) - before[c][1] for c in close)
                return more >= CLOSE_TRIALS or timed >= CLOSE_SECONDS

            take_turns(close, ranked_enough)
    return {choice_label(*candidate): _median(t[1:]) for candidate, t in times.items()}


def takes_channels_last(learner: Learner, batch: TaskBatch) -> bool:
    """Whether the learner's network runs on channels-last images: one task's prediction is tried (a ``.view`` of
    a channels-last input fails, for one)."""
    with _measuring(learner), torch.no_grad():
        learner.channels_last = True
        try:
            learner.predict(batch.task(0))
        except RuntimeError:
            return False
    return True


def vectorised_strategies(learner: Learner) -> list[str]:
    """The strategies that run a chunk of tasks at once, in the order to try them against the loop: "fold" where the
    learner can fold its network (the MAML family, fastadapt.engine.folding), then "vmap". Folding was 1.2-1.6x faster
    than vmap on MAML's Omniglot setting, in all four configurations of inner steps and order (docs/performance.md), so
    vmap is timed only where fold cannot run or fails the gradient guard: each candidate adds seconds."""
    if learner.execution.compile:  # the compiled program is torch.func's
        return ["vmap"]
    return ["fold", "vmap"] if learner.fold_problem() is None else ["vmap"]


def checked_vectorised_strategy(
    learner: Learner, batch: TaskBatch, gradient_check: bool = True
) -> tuple[str | None, list[GradientCheck]]:
    """The first of :func:`vectorised_strategies` whose meta-gradient agrees with the loop's (fastadapt.engine.guard)
    on ``batch``, None if none does, and the checks made. Without ``gradient_check``, the first, unchecked."""
    candidates = vectorised_strategies(learner)
    if not gradient_check:
        return candidates[0], []
    checks = []
    for candidate in candidates:
        checks.append(check_meta_gradient(learner, batch, candidate))
        if checks[-1].agrees:
            return candidate, checks
    return None, checks


def choose_strategy(learner: Learner, batch: TaskBatch, trials: int = 2, gradient_check: bool = True) -> dict[str, Any]:
    """Resolve ``strategy="auto"`` to the faster of "loop" and the vectorised strategy whose meta-gradient agrees
    with the loop's (:func:`checked_vectorised_strategy`; ``gradient_check=False`` skips that check) for ``batch``,
    and for the MAML family ``workers=None`` to the faster of one worker and one per thread and ``channels_last=None``
    to the faster layout of image batches (the standard one for other batches). Returns what was measured; does
    nothing for a learner with none of them left open."""
    open_strategy, open_workers, open_layout = _open_choices(learner)
    if open_layout and (not batch.has_images or learner.execution.compile):
        learner.channels_last, open_layout = False, False  # only image batches have a layout to choose
    if not (open_strategy or open_workers or open_layout):
        return {}
    with torch.random.fork_rng(devices=generators_of(batch)):  # measuring must not change what training draws
        per_task_mib = saved_activation_mib(learner, batch)
        arithmetic_bound = per_task_mib > VMAP_TRIAL_LIMIT_MIB
        vectorised, checks = None, []
        if open_strategy and not arithmetic_bound:
            vectorised, checks = checked_vectorised_strategy(learner, batch, gradient_check)
        strategies = ["loop", vectorised] if vectorised else ["loop"]
        strategies = strategies if open_strategy else [learner.strategy]
        most = learner.most_workers() if open_workers else 1
        worker_counts = [1, most] if most > 1 else [1] if open_workers else [None]
        channels_last_runs = open_layout and takes_channels_last(learner, batch)
        layouts = [False, True] if channels_last_runs else [False] if open_layout else [None]
        candidates = [(s, w, layout) for s in strategies for w in worker_counts for layout in layouts]
        seconds = time_strategies(learner, batch, trials, candidates) if len(candidates) > 1 else {}
    by_label = {choice_label(*candidate): candidate for candidate in candidates}
    chosen = by_label[min(seconds, key=seconds.get)] if seconds else candidates[0]
    learner.strategy = chosen[0]
    if open_workers:
        learner.workers = chosen[1]
    if open_layout:
        learner.channels_last = chosen[2]
    measured: dict[str, Any] = {"strategy": learner.strategy, "saved_mib_per_task": per_task_mib}
    if open_workers:
        measured["workers"] = learner.workers
    if open_layout:
        measured["channels_last"] = learner.channels_last
        if not channels_last_runs:
            measured["channels_last_failed"] = True
    if open_strategy:
        measured["vmap_tried"] = not arithmetic_bound  # vmap or fold: the vectorised strategy
        measured["vectorised"] = vectorised or vectorised_strategies(learner)[0]
        if checks:
            measured["gradient_checks"] = [check.record() for check in checks]
    return {**measured, "seconds": seconds} if seconds else measured


def describe_choice(measured: dict[str, Any]) -> str:
    """One line on what :func:`choose_strategy` measured and chose, for the trainer's log."""
    chosen = choice_label(measured["strategy"], measured.get("workers"), measured.get("channels_last"))
    timings = ", ".join(f"{label} {seconds:.3f}s" for label, seconds in measured.get("seconds", {}).items())
    line = f"auto: {chosen}" + (f" (one training step: {timings})" if timings else "")
    if measured.get("vmap_tried") is False:
        vectorised = measured.get("vectorised", "vmap")
        line += (
            f"; {vectorised} not tried (one task saves {measured['saved_mib_per_task']:.0f} MiB of activations: "
            f"arithmetic-bound; --strategy {vectorised} forces it)"
        )
    for check in measured.get("gradient_checks", []):
        if not check["agrees"]:
            line += f"; {check['strategy']} excluded: {check['reason']}"
    if measured.get("channels_last_failed"):
        line += "; channels-last not tried (the network failed on channels-last images)"
    return line
