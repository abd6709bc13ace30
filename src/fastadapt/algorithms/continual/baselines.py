"""Reference points for online continual learners on a task stream, with the same network and stream.

- :class:`SequentialFineTuning` (the lower bound): plain SGD on each incoming batch, nothing against
  forgetting ("single" in Lopez-Paz & Ranzato 2017).
- :class:`ExperienceReplay`: SGD on each incoming batch together with examples replayed from the same
  reservoir buffer La-MAML uses (Chaudhry et al. 2019's ER); it tells how much of La-MAML's gain is replay.
- :func:`joint_training` (the upper bound): the union of all tasks' training examples, shuffled, several
  epochs ("multi-task"/"iid" in the La-MAML paper); it has no accuracy matrix, only final accuracies.

Each takes as many SGD steps on an incoming batch as La-MAML takes meta-steps (``glances``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastadapt.errors import ConfigError
from fastadapt.tasks.replay import ReservoirBuffer
from fastadapt.tasks.streams import TaskStream


class SequentialFineTuning:
    """SGD with step size ``lr`` on every incoming batch, ``glances`` times."""

    def __init__(self, model: nn.Module, lr: float = 0.1, glances: int = 1) -> None:
        if lr <= 0 or glances < 1:
            raise ConfigError("fine-tuning needs lr > 0 and glances >= 1.")
        self.model = model
        self.glances = glances
        self.optimizer = torch.optim.SGD(model.parameters(), lr=lr)

    def step(self, x: Tensor, y: Tensor) -> float:
        loss = F.cross_entropy(self.model(x), y)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss.item()

    def observe(self, x: Tensor, y: Tensor) -> float:
        loss = 0.0
        for _ in range(self.glances):
            loss = self.step(x, y)
        return loss

    @torch.no_grad()
    def predict_logits(self, x: Tensor) -> Tensor:
        return self.model(x)

    def check_stream(self, stream: TaskStream) -> None:
        """Every stream fits plain fine-tuning."""


class ExperienceReplay(SequentialFineTuning):
    """Fine-tuning on each incoming batch joined by ``replay_batch`` examples from a reservoir buffer."""

    def __init__(
        self,
        model: nn.Module,
        lr: float = 0.1,
        glances: int = 1,
        memory: int = 200,
        replay_batch: int = 10,
        seed: int = 0,
    ) -> None:
        super().__init__(model, lr, glances)
        self.buffer = ReservoirBuffer(memory, seed)
        self.replay_batch = replay_batch

    def observe(self, x: Tensor, y: Tensor) -> float:
        loss = 0.0
        for _ in range(self.glances):
            bx, by = self.buffer.with_replay(x, y, self.replay_batch)
            loss = self.step(bx, by)
        self.buffer.add(x, y)
        return loss

    def check_stream(self, stream: TaskStream) -> None:
        self.buffer.check_fits(stream.total_train_examples, "ER")


def joint_training(
    model: nn.Module, stream: TaskStream, *, epochs: int = 5, lr: float = 0.1, batch_size: int = 10, seed: int = 0
) -> dict[str, Any]:
    """Train on all tasks at once (i.i.d. mini-batches over their union); the final test accuracy per task."""
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ConfigError("joint training needs epochs >= 1, batch_size >= 1 and lr > 0.")
    x = torch.cat([t.train_x for t in stream.tasks])
    y = torch.cat([t.train_y for t in stream.tasks])
    rng = np.random.default_rng(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(epochs):
        order = torch.as_tensor(rng.permutation(len(y)))
        for start in range(0, len(y), batch_size):
            rows = order[start : start + batch_size]
            loss = F.cross_entropy(model(x[rows]), y[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        final = [(model(t.test_x).argmax(-1) == t.test_y).float().mean().item() for t in stream.tasks]
    return {"final": final, "acc": float(np.mean(final))}
