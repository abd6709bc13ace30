"""Running a meta-batch through a method's per-task inner loop: how, never what.

A method states one task's meta-loss term (its inner loop on the support set, its loss on the query set) once, as
if for a single task (``task_loss`` of :class:`fastadapt.algorithms.base.InnerLoopLearner`). This module runs that
over a meta-batch, in whichever way is fastest, all giving the same meta-gradient (tested against a plain
``torch.autograd.grad`` loop in float64; fastadapt.engine.guard checks it again on a user's network):

- ``strategy``: a per-task loop, ``vmap`` over a chunk of tasks, or ``fold`` (a chunk of tasks as one network
  pass, their activations side by side in the channels: fastadapt.engine.folding);
- chunks: the tasks in flight at once, each chunk backpropagated before the next (peak memory of one chunk);
- ``workers``: chunks side by side on a CPU's cores, one torch thread each (fastadapt.engine.taskpool);
- ``compile``: each chunk's meta-gradient as one ``torch.compile``d program;
- ``channels_last``: image batches in the layout a CPU's convolutions run fastest on.

While a task runs, :class:`TaskContext` says how (vectorised under vmap, or a folded chunk of tasks), and the
helpers below (:func:`run_network`, :func:`episode_loss`, :func:`start_weights`, :func:`inner_trajectory`) follow
it, so that the method's own code is written once, per task.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.func import functional_call

from fastadapt.engine.folding import FoldedNetwork, NotFoldable, fold_params
from fastadapt.engine.functional import STRATEGIES, Params, call, inner_sgd_trajectory, map_tasks, parameters_of
from fastadapt.engine.taskpool import available_workers, concurrent_gradients, map_parts, timing_dependent_modules
from fastadapt.errors import ConfigError
from fastadapt.options import MethodOptions, option
from fastadapt.tasks.episodes import TaskBatch
from fastadapt.tasks.losses import per_task_losses, task_loss


@dataclass
class StrategyOptions(MethodOptions):
    """How the inner loops of a meta-batch run (every method with per-task inner loops)."""

    strategy: str = option(
        "auto",
        "inner loops as a per-task 'loop', 'vmap' across tasks, 'fold' (tasks folded into the channels of one network "
        "pass), or 'auto' (time the loop against fold, or vmap where the network cannot fold, keep the faster)",
        choices=STRATEGIES,
        run_only=True,
    )
    gradient_check: bool = option(
        True,
        "check that vmap/fold give the per-task loop's meta-gradient on the first meta-batch (a strategy that "
        "disagrees is left out by auto, refused when asked for); --no-gradient-check skips the check",
        run_only=True,
    )


@dataclass
class Execution(StrategyOptions):
    """Everything about how a meta-gradient is computed that changes its cost, not its value."""

    vmap_chunk: int | None = option(
        None,
        "with vmap or fold: tasks per call, each chunk backpropagated before the next (less memory, the same "
        "meta-gradient; default: 8 in flight, 16 for one first-order step, 4 for several second-order steps; 0: all)",
        run_only=True,
    )
    workers: int | None = option(
        None,
        "train this many tasks at once on a CPU, each on one core with one torch thread (default: measured on the "
        "first meta-batch; always 1 for networks with dropout or running batch-norm statistics)",
        run_only=True,
    )
    channels_last: bool | None = option(
        None,
        "copy image batches to channels-last layout, where a CPU's convolutions, batch norm and pooling run faster "
        "(default: measured on the first meta-batch, like --workers)",
        run_only=True,
    )
    compile: bool = option(
        False,
        "torch.compile each chunk's meta-gradient: a one-off compile of one to several minutes, then faster steps",
        run_only=True,
    )

    def check(self) -> None:
        """Refuse impossible settings in one line each."""
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"unknown --strategy {self.strategy!r}; choose one of: {', '.join(STRATEGIES)}.")
        if self.vmap_chunk is not None and self.vmap_chunk < 0:
            raise ConfigError(f"--vmap-chunk must be a number of tasks >= 0 (0: all at once), not {self.vmap_chunk}.")
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"--workers must be at least 1 (or left out, to have it measured), not {self.workers}.")
        if self.strategy == "fold" and self.compile:
            raise ConfigError("--compile traces vmap's program; use --strategy vmap, loop or auto with it, not fold.")


@dataclass(frozen=True)
class TaskContext:
    """How the task in progress runs: ``vectorised`` (under vmap: torch.func's gradients), or ``folded`` tasks of a
    chunk at once (weights stacked along a leading task dimension, losses one per task)."""

    vectorised: bool = False
    folded: int = 0


class Learner(Protocol):
    """What the engine's measuring (fastadapt.engine.strategy) and guard (fastadapt.engine.guard) ask of a learner:
    the hooks of fastadapt.algorithms.base.MetaLearner."""

    execution: Execution | None
    strategy: str | None
    workers: int | None
    channels_last: bool | None
    training_step: int

    def meta_loss(self, batch: TaskBatch) -> Any: ...
    def meta_backward(self, batch: TaskBatch) -> Any: ...
    def predict(self, batch: TaskBatch) -> Tensor: ...
    def fold_problem(self) -> str | None: ...
    def most_workers(self) -> int: ...
    def schedule_phases(self) -> list[int]: ...
    def gradient_probe(self) -> Learner: ...


class Runnable(Protocol):
    """What the functions here need of a learner with per-task inner loops (algorithms.base.InnerLoopLearner)."""

    execution: Execution
    context: TaskContext
    model: nn.Module
    inner_steps: int
    _folded: FoldedNetwork | str | None
    _compiled_gradient: Callable[..., Any] | None
    _theta_names: tuple[str, ...] | None

    def __call__(self, batch: TaskBatch, strategy: str, steps: int, **schedule: Any) -> Any: ...
    def meta_loss(self, batch: TaskBatch) -> Any: ...
    def schedule(self, training: bool) -> dict[str, Any]: ...
    def task_loss(self, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor, **kw: Any) -> Any: ...


@contextmanager
def running(learner: Runnable, context: TaskContext) -> Iterator[None]:
    previous, learner.context = learner.context, context
    try:
        yield
    finally:
        learner.context = previous


def task_losses(learner: Runnable, batch: TaskBatch, strategy: str, **task_settings: Any) -> tuple[Tensor, Tensor]:
    """Each task's meta-loss term and query predictions, (tasks,) and (tasks, query, ...), by ``strategy``."""
    if strategy == "fold":
        with running(learner, TaskContext(folded=batch.num_tasks)):
            return learner.task_loss(batch.support_x, batch.support_y, batch.query_x, batch.query_y, **task_settings)

    def one_task(support_x, support_y, query_x, query_y, vectorised):
        with running(learner, TaskContext(vectorised=vectorised)):
            return learner.task_loss(support_x, support_y, query_x, query_y, **task_settings)

    return map_tasks(one_task, (batch.support_x, batch.support_y, batch.query_x, batch.query_y), strategy)


# What a method's per-task code calls, which follows the task context.


def start_weights(theta: Params, context: TaskContext) -> Params:
    """The inner loop's starting point: theta, or for a folded chunk theta once per task (stacked views)."""
    if not context.folded:
        return theta
    with torch.enable_grad():  # the stacked views too: evaluation, under no_grad, adapts as well
        return fold_params(theta, context.folded)


def run_network(learner: Runnable, params: Params, x: Tensor) -> Tensor:
    """The learner's network with weights ``params`` on ``x`` (a folded chunk: each task's own weights)."""
    if learner.context.folded:
        return folded_network(learner)(params, x, channels_last=bool(learner.execution.channels_last))
    return call(learner.model, params, x)


def episode_loss(predictions: Tensor, targets: Tensor, context: TaskContext) -> Tensor:
    """One task's loss (cross-entropy or mean squared error); for a folded chunk, one per task, (tasks,)."""
    return per_task_losses(predictions, targets) if context.folded else task_loss(predictions, targets)


def inner_trajectory(
    loss_at_step: Callable[[Params, int], Tensor],
    params: Params,
    steps: int,
    lr_at_step: Callable[[int], float | Mapping[str, Tensor]],
    first_order: bool,
    context: TaskContext,
) -> list[Params]:
    """[params, after step 1, ..., after step ``steps``] of gradient descent on ``loss_at_step``, differentiable unless
    ``first_order``. For a folded chunk the gradient of the sum of the tasks' losses is each task's own."""
    return inner_sgd_trajectory(
        lambda p, step: loss_at_step(p, step).sum(),
        params,
        steps,
        lr_at_step,
        first_order=first_order,
        vectorised=context.vectorised,
    )


# The network for fold.


def fold_problem(learner: Runnable) -> str | None:
    """Why ``strategy="fold"`` cannot run the learner's network; None where it can (the network is read once)."""
    if learner._folded is None:
        try:
            learner._folded = FoldedNetwork(learner.model)
        except NotFoldable as error:
            learner._folded = str(error)
    return learner._folded if isinstance(learner._folded, str) else None


def folded_network(learner: Runnable) -> FoldedNetwork:
    problem = learner.fold_problem()
    if problem is not None:
        raise ConfigError(f"--strategy fold cannot run this network: {problem}. Use loop, vmap or auto.")
    return learner._folded


# Chunks, workers, compile, layout.


def most_workers(learner: Runnable) -> int:
    """The workers worth measuring: one per CPU thread, but one on a GPU, for the compiled program, and for a network
    with dropout or running batch-norm statistics, whose random draws or buffer updates would otherwise follow thread
    timing (runs must repeat exactly)."""
    if learner.execution.compile or timing_dependent_modules(learner.model):
        return 1
    return available_workers(next(learner.parameters()).device)


def task_workers(execution: Execution) -> int:
    """How many chunks of tasks run at once: ``workers``, or one until it is measured (``workers=None``)."""
    return 1 if execution.workers is None else execution.workers


def tasks_per_call(learner: Runnable, first_order: bool, inner_steps: int) -> int:
    """Tasks per network pass (0: all): one for the loop; with vmap or fold, ``vmap_chunk`` if given, else 8 tasks in
    flight, or 4 for second order over several inner steps, whose graph grows with the steps, or 16 for one
    first-order step, shared by the workers, so that the tasks in flight, and the memory they hold, stay the same.
    Measured on Omniglot (docs/performance.md): with vmap, 8 was as fast as the whole meta-batch of 32 at 0.66x its
    memory; at 5 second-order steps 8 took 1.75x the memory of a per-task loop, 4 took 1.37x and was 5% slower; at
    one first-order step 16 on two workers was about 10% faster than 8 for 30-45 MiB more. Fold, two workers: 8
    tasks per worker were 7-9% faster than 4, for 27-58 MiB more; at 5 second-order steps, 4 per worker were 1.26x
    faster than 2."""
    execution = learner.execution
    if execution.strategy not in ("vmap", "fold"):
        return 1
    if execution.vmap_chunk is not None:
        return execution.vmap_chunk
    in_flight = 16 if first_order and inner_steps == 1 else 4 if inner_steps > 1 and not first_order else 8
    return max(1, in_flight // task_workers(execution))


def laid_out(learner: Runnable, batch: TaskBatch) -> TaskBatch:
    """``batch`` in the layout the inner loops run in: channels-last images with ``channels_last``."""
    return batch.channels_last() if learner.execution.channels_last else batch


def add_to_grads(params: list[Tensor], grads: list[Tensor | None]) -> None:
    """What ``backward()`` does with gradients computed elsewhere: add each to ``.grad`` (None: unused)."""
    for p, grad in zip(params, grads):
        if grad is not None:
            p.grad = grad if p.grad is None else p.grad + grad


def meta_backward(learner: Runnable, batch: TaskBatch, chunk: int) -> tuple[Tensor, Tensor]:
    """Adds the meta-gradient of ``batch`` to every parameter's ``.grad``, ``chunk`` tasks at a time (0: all), on the
    learner's workers or through its compiled program; returns the meta-loss and the query predictions, detached.
    The meta-loss is a mean over tasks, so each chunk's graph (its inner loops and second-order terms) is freed
    after its own backward pass: the peak memory of one chunk."""
    chunk = chunk or batch.num_tasks
    execution = learner.execution
    if chunk >= batch.num_tasks and not execution.compile:
        output = learner.meta_loss(batch)
        output.loss.backward()
        return output.loss.detach(), output.predictions.detach()
    parts = batch.chunks(chunk)
    if task_workers(execution) > 1 and not execution.compile:
        return _concurrent_backward(learner, parts, batch.num_tasks)
    total, predictions = 0.0, []
    for part in parts:
        weight = part.num_tasks / batch.num_tasks
        if execution.compile:
            loss, part_predictions = _compiled_backward(learner, part, weight)
        else:
            output = learner.meta_loss(part)
            (output.loss * weight).backward()
            loss, part_predictions = output.loss.detach(), output.predictions.detach()
        total = total + loss * weight
        predictions.append(part_predictions)
    return total, torch.cat(predictions)


def _concurrent_backward(learner: Runnable, parts: list[TaskBatch], num_tasks: int) -> tuple[Tensor, Tensor]:
    """Each part's weighted meta-gradient, the parts spread over the learner's workers (fastadapt.engine.taskpool)."""
    trainable = list(parameters_of(learner).values())

    def weighted_loss(replica: Runnable, part: TaskBatch) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        output = replica.meta_loss(part)
        weighted = output.loss * (part.num_tasks / num_tasks)
        return weighted, (weighted.detach(), output.predictions.detach())

    grads, outputs = concurrent_gradients(learner, trainable, parts, weighted_loss, task_workers(learner.execution))
    add_to_grads(trainable, grads)
    losses, predictions = zip(*outputs)
    return sum(losses), torch.cat(predictions)


def _compiled_backward(learner: Runnable, part: TaskBatch, weight: float) -> tuple[Tensor, Tensor]:
    """A chunk's meta-gradient through ``torch.compile``: one functional program, ``torch.func.grad`` of the meta-loss
    whose inner loops are ``torch.func.grad`` too, vectorised over the chunk's tasks (one task with the loop).
    Inductor fuses the elementwise work around the convolutions (batch norm, ReLU, pooling, the SGD updates) that
    eager mode runs pass by pass. The first call compiles (tens of seconds to minutes); so does a new shape or a new
    schedule value (MAML++'s first-order switch). The schedule's values are the program's inputs, not constants.
    Gradients are the eager ones to float32 rounding (tested)."""
    if learner._compiled_gradient is None:

        def chunk_gradient(params, part, steps, schedule):
            def loss(params):
                output = functional_call(learner, params, (part, "vmap", steps), schedule)
                return output.loss, (output.loss, output.predictions)

            return torch.func.grad(loss, has_aux=True)(params)

        learner._compiled_gradient = torch.compile(chunk_gradient, dynamic=False)
    trainable = parameters_of(learner)
    device = next(iter(trainable.values())).device  # MAML++'s step weights join the losses on the learner's device
    schedule = {
        k: torch.tensor(v, device=device) if isinstance(v, list) else v
        for k, v in learner.schedule(training=True).items()
    }
    learner._theta_names = tuple(parameters_of(learner.model))
    try:
        params = {name: p.detach() for name, p in trainable.items()}
        grads, (loss, predictions) = learner._compiled_gradient(params, part, learner.inner_steps, schedule)
    finally:
        learner._theta_names = None
    add_to_grads(list(trainable.values()), [grads[name] * weight for name in trainable])
    return loss.detach(), predictions.detach()


def predict(learner: Runnable, batch: TaskBatch, steps: int) -> Tensor:
    """Query predictions after ``steps`` inner steps on each support set, no meta-gradient (first order), the tasks
    shared out over the learner's workers."""
    batch = laid_out(learner, batch)
    workers = task_workers(learner.execution)

    def adapted_predictions(replica: Runnable, part: TaskBatch) -> Tensor:
        strategy = replica.execution.strategy
        return replica(part, strategy, steps, **replica.schedule(training=False)).predictions.detach()

    if workers > 1 and batch.num_tasks > 1:
        chunk = -(-batch.num_tasks // workers)  # one share per worker: vmap keeps its batching
        return torch.cat(map_parts(learner, batch.chunks(chunk), adapted_predictions, workers))
    return adapted_predictions(learner, batch)
