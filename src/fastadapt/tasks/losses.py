"""Losses and scores of tasks: cross-entropy and accuracy for classes, mean squared error for regression."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


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
