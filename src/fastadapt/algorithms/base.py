"""The interface every meta-learner implements, and the base of those with per-task inner loops.

A meta-learner is an ``nn.Module`` holding all meta-parameters. Training calls :meth:`MetaLearner.meta_backward`
on a batch of tasks (the meta-loss and its gradient) and steps an outer optimiser; evaluation calls
:meth:`MetaLearner.predict`, which adapts to each task's support set and returns predictions for its query set.
Everything the trainer, the checkpoints and ``auto`` ask of a learner is a method or an attribute here, with a
default: a method overrides what it needs.

Methods that adapt a network to each task by an inner loop (MAML and its variants) derive from
:class:`InnerLoopLearner`: they state one task's meta-loss term once, for a single task (``task_loss``), and
fastadapt's engine (fastadapt.engine.execution) runs it over the meta-batch: per-task loop, vmap or fold, chunks,
workers, compile, layout, all giving the same meta-gradient.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from fastadapt.engine import execution as engine
from fastadapt.engine.execution import Execution, TaskContext
from fastadapt.engine.fastlayers import with_fast_layers
from fastadapt.engine.functional import Params, parameters_of
from fastadapt.errors import ConfigError
from fastadapt.tasks.episodes import TaskBatch
from fastadapt.tasks.losses import per_task_losses, per_task_score, task_loss

__all__ = [
    "InnerLoopLearner",
    "MetaLearner",
    "MetaOutput",
    "per_task_losses",
    "per_task_score",
    "task_loss",
]


@dataclass
class MetaOutput:
    """``loss``: scalar meta-loss (mean over tasks); ``predictions``: query predictions,
    (tasks, query, ways) logits or (tasks, query, out) regression outputs."""

    loss: Tensor
    predictions: Tensor


class MetaLearner(nn.Module):
    """Base class: subclasses implement :meth:`meta_loss` and :meth:`predict`."""

    #: whether the method can handle regression tasks (``TaskBatch.ways is None``)
    supports_regression: bool = True
    #: How a method's per-task inner loops run (fastadapt.engine.execution); None for methods without them.
    execution: Execution | None = None
    #: The outer step in progress; the trainer sets it before each step (MAML++'s schedules read it).
    training_step: int = 0

    def meta_loss(self, batch: TaskBatch) -> MetaOutput:
        raise NotImplementedError

    def meta_backward(self, batch: TaskBatch) -> MetaOutput:
        """:meth:`meta_loss` and its backward pass: adds the meta-gradient to every parameter's ``.grad``
        and returns the output detached. Training calls this; a method may override it to need less
        memory for the same gradient (MAML's per-task loop backpropagates task by task)."""
        output = self.meta_loss(batch)
        if output.loss.requires_grad:  # a method with nothing to meta-learn (a per-episode baseline) has no gradient
            output.loss.backward()
        return MetaOutput(output.loss.detach(), output.predictions.detach())

    def predict(self, batch: TaskBatch) -> Tensor:
        raise NotImplementedError

    def clip_meta_gradient(self) -> None:
        """Clip the meta-gradient as the method's paper does, after any averaging over processes (LEO clips each
        entry, Meta-LSTM the norm); nothing by default."""

    def schedule_phases(self) -> list[int]:
        """Outer steps at which the form of the meta-gradient changes (MAML++'s switch from first to second order,
        say), each a phase the gradient guard (fastadapt.engine.guard) checks; one phase by default."""
        return [0]

    def fold_problem(self) -> str | None:
        """Why ``strategy="fold"`` cannot run this method (fastadapt.engine.folding); None where it can."""
        return f"{type(self).__name__} has no per-task inner loop that folding runs"

    def most_workers(self) -> int:
        """How many task workers are worth measuring (fastadapt.engine.taskpool); one for methods without them."""
        return 1

    def gradient_probe(self) -> MetaLearner:
        """A float64 copy of this learner for the gradient guard: the same meta-gradient as this one computes, run
        eagerly in one thread, with dropout off (the loop and a vectorised strategy draw different masks)."""
        probe = copy.deepcopy(self).double()
        for module in probe.modules():
            if isinstance(module, nn.modules.dropout._DropoutNd):
                module.eval()
        return probe

    # The settings auto measures, where the method has them (``execution``): read and set by the trainer.

    @property
    def strategy(self) -> str | None:
        return None if self.execution is None else self.execution.strategy

    @strategy.setter
    def strategy(self, value: str) -> None:
        self.execution.strategy = value

    @property
    def workers(self) -> int | None:
        return None if self.execution is None else self.execution.workers

    @workers.setter
    def workers(self, value: int | None) -> None:
        self.execution.workers = value

    @property
    def channels_last(self) -> bool | None:
        return None if self.execution is None else self.execution.channels_last

    @channels_last.setter
    def channels_last(self, value: bool | None) -> None:
        self.execution.channels_last = value


class InnerLoopLearner(MetaLearner):
    """A method that adapts its network to each task by an inner loop. It states, for one task:

    - :meth:`task_loss`: the inner loop on the support set and the loss on the query set (its paper's equations),
      written with :meth:`start`, :meth:`network`, :meth:`loss` and :meth:`inner_loop`;
    - :meth:`schedule`: the values of its training schedule that the meta-loss depends on (first or second order);

    and the engine runs it over a meta-batch (fastadapt.engine.execution), the same meta-gradient whichever way.
    ``inner_steps`` and ``eval_inner_steps`` are the steps in training and at test time.
    """

    inner_steps: int = 1
    eval_inner_steps: int = 1

    def __init__(self, model: nn.Module, *, fast_layers: bool = True, **execution: Any) -> None:
        """``execution``: the engine's settings (``strategy``, ``vmap_chunk``, ``workers``, ``channels_last``,
        ``compile``), which change the meta-gradient's cost, not its value. With ``fast_layers``, torch's layers that
        fastadapt has an exact, faster (or vmap-safe) equivalent for are swapped in; the parameters, and their names,
        stay the model's own (fastadapt.engine.fastlayers)."""
        super().__init__()
        self.model = with_fast_layers(model) if fast_layers else model
        self.execution = Execution(**{"strategy": "loop", **execution})
        self.execution.check()
        self.context = TaskContext()
        # The engine's caches: the network read for fold (or why it cannot fold), the compiled meta-gradient, and
        # the names of theta's tensors while a compiled program runs.
        self._folded: Any = None
        self._compiled_gradient: Any = None
        self._theta_names: tuple[str, ...] | None = None
        if self.execution.strategy == "fold":
            engine.folded_network(self)  # refuses a network that cannot fold, naming why

    # What a method states.

    def task_loss(
        self, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor, *, steps: int, **schedule: Any
    ) -> tuple[Tensor, Tensor]:
        """One task's meta-loss term and its query predictions, after ``steps`` inner steps on its support set."""
        raise NotImplementedError

    def schedule(self, training: bool) -> dict[str, Any]:
        """Keyword arguments of :meth:`task_loss` that follow the training schedule (``training=False``: at test
        time). They are the inputs of a compiled program, not constants of it."""
        return {}

    # What its task_loss is written with; each follows how the engine runs the task (self.context).

    def theta(self) -> Params:
        """The network's meta-learned weights: its trainable parameters, or inside a compiled program the tensors
        standing in for them."""
        if self._theta_names is None:
            return parameters_of(self.model)
        params = dict(self.model.named_parameters())
        return {name: params[name] for name in self._theta_names}

    def start(self) -> Params:
        """The inner loop's starting point: theta (for a folded chunk of tasks, theta once per task)."""
        return engine.start_weights(self.theta(), self.context)

    def network(self, params: Params, x: Tensor, step: int = 0) -> Tensor:
        """The network with weights ``params`` on ``x``. ``step``: the inner step it runs in (MAML++'s per-step batch
        norm); a plain network ignores it."""
        return engine.run_network(self, params, x)

    def loss(self, predictions: Tensor, targets: Tensor) -> Tensor:
        """The task's loss: cross-entropy for classes, mean squared error for regression."""
        return engine.episode_loss(predictions, targets, self.context)

    def inner_loop(
        self,
        loss_at_step: Callable[[Params, int], Tensor],
        params: Params,
        steps: int,
        lr_at_step: Callable[[int], float | Mapping[str, Tensor]],
        first_order: bool,
    ) -> list[Params]:
        """[params, after step 1, ..., after step ``steps``] of gradient descent on ``loss_at_step(params, step)`` with
        step size ``lr_at_step(step)``, differentiable (second order) unless ``first_order``."""
        return engine.inner_trajectory(loss_at_step, params, steps, lr_at_step, first_order, self.context)

    # Meta-training and evaluation, run by the engine.

    def forward(self, batch: TaskBatch, strategy: str, steps: int, **schedule: Any) -> MetaOutput:
        """The meta-loss, the mean over tasks of :meth:`task_loss`, with the schedule's values passed in (so that a
        compiled program depends on them, not on the step counter)."""
        losses, predictions = engine.task_losses(self, batch, strategy, steps=steps, **schedule)
        return MetaOutput(losses.mean(), predictions)

    def meta_loss(self, batch: TaskBatch) -> MetaOutput:
        batch = engine.laid_out(self, batch)
        return self(batch, self.execution.strategy, self.inner_steps, **self.schedule(training=True))

    def meta_backward(self, batch: TaskBatch) -> MetaOutput:
        batch = engine.laid_out(self, batch)  # once for the whole batch: its chunks are views
        first_order = bool(self.schedule(training=True).get("first_order", False))
        chunk = engine.tasks_per_call(self, first_order, self.inner_steps)
        loss, predictions = engine.meta_backward(self, batch, chunk)
        return MetaOutput(loss, predictions)

    def predict(self, batch: TaskBatch, steps: int | None = None) -> Tensor:
        return engine.predict(self, batch, self.eval_inner_steps if steps is None else steps)

    def fold_problem(self) -> str | None:
        return engine.fold_problem(self)

    def folded_network(self):
        """The network for ``strategy="fold"``; a ConfigError that says why where it cannot fold."""
        return engine.folded_network(self)

    def most_workers(self) -> int:
        return engine.most_workers(self)

    def task_workers(self) -> int:
        """How many chunks of tasks run at once: ``workers``; one until it is measured (``workers=None``)."""
        return engine.task_workers(self.execution)

    def tasks_per_call(self) -> int:
        """Tasks per network pass in training (0: all); see :func:`fastadapt.engine.execution.tasks_per_call`."""
        first_order = bool(self.schedule(training=True).get("first_order", False))
        return engine.tasks_per_call(self, first_order, self.inner_steps)

    def gradient_probe(self) -> InnerLoopLearner:
        compiled, self._compiled_gradient = self._compiled_gradient, None  # a compiled program is not copied
        try:
            probe = super().gradient_probe()
        finally:
            self._compiled_gradient = compiled
        probe.execution.compile, probe.execution.workers = False, 1  # compiled: eager vmap's gradient
        return probe

    def extra_repr(self) -> str:
        settings = {k: v for k, v in vars(self.execution).items() if k not in ("gradient_check",)}
        return ", ".join(f"{k}={v!r}" for k, v in settings.items() if v not in (None, False))


def check_per_way_head(algorithm: str, ways: int, train_ways: int | None) -> None:
    """Methods whose network ends in one output per class train and test with the same number of ways."""
    if train_ways and train_ways != ways:
        raise ConfigError(f"{algorithm}'s classifier head has one output per way: --train-ways must equal --ways.")
