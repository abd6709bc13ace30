"""Choosing how inner loops run: a per-task loop or ``vmap`` across tasks, by measuring both.

Which is faster depends on the workload (measured on a 2-core CPU: vmap ~1.8x faster than a loop for
MAML's Omniglot setting with one query per class, 2-3x slower with 15), so ``strategy="auto"`` times
whole training steps (forward, inner loops and the meta-gradient's backward pass) with each on the
first meta-batch, before any update, and keeps the faster. The choice is stored in checkpoints, so a
resumed run continues with it.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from fastadapt.algorithms.base import MetaLearner
from fastadapt.tasks.episodes import TaskBatch


def uses_strategy(learner: MetaLearner) -> bool:
    return hasattr(learner, "strategy")


def time_strategies(learner: MetaLearner, batch: TaskBatch, trials: int = 2) -> dict[str, float]:
    """Median seconds of a meta-loss forward + backward pass under each strategy (after one warm-up of
    each). The strategies take turns, trial by trial, so a burst of load from elsewhere on the machine
    falls on both rather than on whichever ran at that moment. Gradients are cleared afterwards, and no
    parameter or buffer changes (a meta-loss may update buffers: Reptile's carried Adam moments)."""
    original = learner.strategy
    buffers = {name: b.detach().clone() for name, b in learner.named_buffers()}
    times: dict[str, list[float]] = {"loop": [], "vmap": []}
    try:
        for _ in range(trials + 1):
            for strategy in times:
                learner.strategy = strategy
                started = time.perf_counter()
                learner.meta_backward(batch)
                times[strategy].append(time.perf_counter() - started)
        learner.zero_grad(set_to_none=True)
    finally:
        learner.strategy = original
        with torch.no_grad():
            for name, b in learner.named_buffers():
                b.copy_(buffers[name])
    return {strategy: sorted(t[1:])[len(t[1:]) // 2] for strategy, t in times.items()}


def choose_strategy(learner: MetaLearner, batch: TaskBatch, trials: int = 2) -> dict[str, Any]:
    """Resolve ``strategy="auto"`` on ``learner`` to the faster of "loop" and "vmap" for ``batch``.
    Returns what was measured; does nothing for a learner without a strategy or with a fixed one."""
    if not uses_strategy(learner) or learner.strategy != "auto":
        return {}
    with torch.random.fork_rng(devices=[]):  # measuring must not change what training draws
        seconds = time_strategies(learner, batch, trials)
    learner.strategy = min(seconds, key=seconds.get)
    return {"strategy": learner.strategy, "seconds": seconds}
