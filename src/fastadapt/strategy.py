"""Choosing how inner loops run: a per-task loop or ``vmap`` across tasks, by measuring both.

Which is faster depends on the workload (measured on a 2-core CPU: vmap ~1.8x faster than a loop for
MAML's Omniglot setting with one query per class, 2-3x slower with 15), so ``strategy="auto"`` times
whole training steps (forward, inner loops and the meta-gradient's backward pass) with each on the
first meta-batch, before any update, and keeps the faster. The choice is stored in checkpoints, so a
resumed run continues with it.

Before timing, it measures how much one task's meta-loss saves for the backward pass. Above
``VMAP_TRIAL_LIMIT_MIB`` the task is arithmetic-bound, and the loop is kept without trying vmap: vmap
lost on every such workload measured (2.2-2.5x slower with 15 queries per class, 63-92 MiB per task),
and its trial alone, a chunk of tasks vectorised at once, raised the process's peak memory 4-fold
(docs/RESULTS.md, speed section). MAML's one-query Omniglot setting, where vmap wins, saves 3-11 MiB.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from fastadapt.algorithms.base import MetaLearner
from fastadapt.tasks.episodes import TaskBatch


def uses_strategy(learner: MetaLearner) -> bool:
    return hasattr(learner, "strategy")


#: One task's saved activations (MiB) above which ``auto`` keeps the loop untimed (module docstring).
VMAP_TRIAL_LIMIT_MIB = 32.0


@contextmanager
def _measuring(learner: MetaLearner) -> Iterator[None]:
    """Leaves strategy, gradients and buffers as they were (a meta-loss may update buffers: Reptile's
    carried Adam moments)."""
    original = learner.strategy
    buffers = {name: b.detach().clone() for name, b in learner.named_buffers()}
    try:
        yield
        learner.zero_grad(set_to_none=True)
    finally:
        learner.strategy = original
        with torch.no_grad():
            for name, b in learner.named_buffers():
                b.copy_(buffers[name])


def saved_activation_mib(learner: MetaLearner, batch: TaskBatch) -> float:
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


def time_strategies(learner: MetaLearner, batch: TaskBatch, trials: int = 2) -> dict[str, float]:
    """Median seconds of a meta-loss forward + backward pass under each strategy (after one warm-up of
    each). The strategies take turns, trial by trial, so a burst of load from elsewhere on the machine
    falls on both rather than on whichever ran at that moment. Gradients are cleared afterwards, and no
    parameter or buffer changes."""
    times: dict[str, list[float]] = {"loop": [], "vmap": []}
    with _measuring(learner):
        for _ in range(trials + 1):
            for strategy in times:
                learner.strategy = strategy
                started = time.perf_counter()
                learner.meta_backward(batch)
                times[strategy].append(time.perf_counter() - started)
    return {strategy: sorted(t[1:])[len(t[1:]) // 2] for strategy, t in times.items()}


def choose_strategy(learner: MetaLearner, batch: TaskBatch, trials: int = 2) -> dict[str, Any]:
    """Resolve ``strategy="auto"`` on ``learner`` to the faster of "loop" and "vmap" for ``batch``.
    Returns what was measured; does nothing for a learner without a strategy or with a fixed one."""
    if not uses_strategy(learner) or learner.strategy != "auto":
        return {}
    with torch.random.fork_rng(devices=[]):  # measuring must not change what training draws
        per_task_mib = saved_activation_mib(learner, batch)
        if per_task_mib > VMAP_TRIAL_LIMIT_MIB:
            learner.strategy = "loop"
            return {"strategy": "loop", "saved_mib_per_task": per_task_mib, "vmap_tried": False}
        seconds = time_strategies(learner, batch, trials)
    learner.strategy = min(seconds, key=seconds.get)
    return {"strategy": learner.strategy, "saved_mib_per_task": per_task_mib, "seconds": seconds}
