"""The interface every meta-learner implements.

A meta-learner is an ``nn.Module`` holding all meta-parameters. Training calls :meth:`meta_loss` on a
batch of tasks and steps an outer optimiser on the result; evaluation calls :meth:`predict`, which
adapts to each task's support set and returns predictions for its query set.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastadapt.tasks.episodes import TaskBatch


@dataclass
class MetaOutput:
    """``loss``: scalar meta-loss (mean over tasks); ``predictions``: query predictions,
    (tasks, query, ways) logits or (tasks, query, out) regression outputs."""

    loss: Tensor
    predictions: Tensor


def task_loss(predictions: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy for integer class targets, mean squared error for real-valued targets."""
    if targets.dtype in (torch.int64, torch.int32):
        return F.cross_entropy(predictions.reshape(-1, predictions.shape[-1]), targets.reshape(-1))
    return F.mse_loss(predictions, targets)


def per_task_losses(predictions: Tensor, targets: Tensor) -> Tensor:
    """:func:`task_loss` of each task at once: ``predictions`` (tasks, examples, ...) -> (tasks,)."""
    tasks = predictions.shape[0]
    if targets.dtype in (torch.int64, torch.int32):
        losses = F.cross_entropy(predictions.reshape(-1, predictions.shape[-1]), targets.reshape(-1), reduction="none")
        return losses.view(tasks, -1).mean(1)
    return F.mse_loss(predictions, targets, reduction="none").reshape(tasks, -1).mean(1)


def per_task_score(predictions: Tensor, targets: Tensor) -> Tensor:
    """Accuracy per task for classification, mean squared error per task for regression."""
    if targets.dtype in (torch.int64, torch.int32):
        return (predictions.argmax(-1) == targets).float().mean(-1)
    return (predictions - targets).square().flatten(1).mean(-1)


class MetaLearner(nn.Module):
    """Base class: subclasses implement :meth:`meta_loss` and :meth:`predict`."""

    #: whether the method can handle regression tasks (``TaskBatch.ways is None``)
    supports_regression: bool = True

    def meta_loss(self, batch: TaskBatch) -> MetaOutput:
        raise NotImplementedError

    def meta_backward(self, batch: TaskBatch) -> MetaOutput:
        """:meth:`meta_loss` and its backward pass: adds the meta-gradient to every parameter's ``.grad``
        and returns the output detached. Training calls this; a method may override it to need less
        memory for the same gradient (MAML's per-task loop backpropagates task by task)."""
        output = self.meta_loss(batch)
        output.loss.backward()
        return MetaOutput(output.loss.detach(), output.predictions.detach())

    def predict(self, batch: TaskBatch) -> Tensor:
        raise NotImplementedError

    #: How the inner loops of a meta-batch run (fastadapt.strategy): "loop", "vmap", "fold" or "auto"; None for
    #: methods without inner loops over tasks.
    strategy: str | None = None

    #: The outer step in progress; the trainer sets it before each step (MAML++'s schedules read it).
    training_step: int = 0

    def schedule_phases(self) -> list[int]:
        """Outer steps at which the form of the meta-gradient changes (MAML++'s switch from first to second order,
        say), each a phase the gradient guard (fastadapt.gradient_guard) checks; one phase by default."""
        return [0]

    def gradient_probe(self) -> MetaLearner:
        """A float64 copy of this learner for the gradient guard: the same meta-gradient as this one computes, run
        eagerly in one thread, with dropout off (the loop and a vectorised strategy draw different masks)."""
        probe = copy.deepcopy(self).double()
        for module in probe.modules():
            if isinstance(module, nn.modules.dropout._DropoutNd):
                module.eval()
        return probe
