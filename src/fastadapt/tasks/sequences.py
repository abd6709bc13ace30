"""The sequence protocol of Santoro et al., "Meta-Learning with Memory-Augmented Neural Networks" (ICML 2016,
section 4.1): an episode is a sequence of ``ways * instances`` examples (5 classes x 10 instances = 50), classes
and their labels drawn afresh for every episode, presented in random order. At step t the learner sees example
x_t together with the label of the previous step, y_{t-1} (nothing at t = 0), and must predict y_t; its accuracy
is reported by instance: on the 1st, 2nd, ... appearance of a class in the sequence.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fastadapt.errors import DataError
from fastadapt.tasks.samplers import ClassSplit


@dataclass
class SequenceBatch:
    """``images``: (episodes, steps, ...) in presentation order; ``labels``: (episodes, steps) in 0..ways-1."""

    images: Tensor
    labels: Tensor
    ways: int

    @property
    def num_tasks(self) -> int:
        return self.images.shape[0]

    @property
    def steps(self) -> int:
        return self.images.shape[1]

    def to(self, device: torch.device | str) -> SequenceBatch:
        return SequenceBatch(**{f.name: _move(getattr(self, f.name), device) for f in fields(self)})


def _move(value: Any, device: torch.device | str) -> Any:
    return value.to(device, non_blocking=True) if isinstance(value, Tensor) else value


def previous_labels(labels: Tensor, ways: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """The label input of every step: one-hot y_{t-1} at step t, zeros at step 0.
    (episodes, steps) -> (episodes, steps, ways)."""
    one_hot = F.one_hot(labels, ways).to(dtype)
    return torch.cat([torch.zeros_like(one_hot[:, :1]), one_hot[:, :-1]], dim=1)


def instance_numbers(labels: Tensor, ways: int) -> Tensor:
    """(episodes, steps) -> (episodes, steps): which appearance of its class each step is (1 = first)."""
    one_hot = F.one_hot(labels, ways)
    return (one_hot.cumsum(1) * one_hot).sum(-1)


def accuracy_by_instance(
    predictions: Tensor, labels: Tensor, ways: int, instances: tuple[int, ...] = (1, 2, 3, 4, 5, 10)
) -> dict[int, Tensor]:
    """Per-episode accuracy on the k-th appearance of a class, for each k of ``instances``: {k: (episodes,)}.
    ``predictions``: (episodes, steps) predicted labels (or (episodes, steps, ways) logits)."""
    if predictions.dim() == 3:
        predictions = predictions.argmax(-1)
    number = instance_numbers(labels, ways)
    correct = (predictions == labels).float()
    out = {}
    for k in instances:
        at_k = (number == k).float()
        count = at_k.sum(1)
        if (count == 0).any():
            raise DataError(f"some episodes have no {k}-th instance of any class; use at least {k} instances.")
        out[k] = (correct * at_k).sum(1) / count
    return out


class SequenceSampler:
    """Episodes of the sequence protocol from one class split: ``ways`` distinct classes, ``instances`` distinct
    examples of each, labels 0..ways-1 given in the (random) order the classes were drawn, all ``ways * instances``
    examples shuffled. Seeded and resumable like :class:`fastadapt.tasks.samplers.EpisodeSampler`."""

    def __init__(self, split: ClassSplit, ways: int = 5, instances: int = 10, seed: int = 0) -> None:
        if ways < 2:
            raise DataError(f"sequence episodes need at least 2 classes (got ways={ways}).")
        if instances < 1:
            raise DataError(f"sequence episodes need at least 1 instance per class (got instances={instances}).")
        if ways > split.num_classes:
            raise DataError(
                f"{ways}-class sequences need {ways} classes but the {split.name} split has only "
                f"{split.num_classes}; lower the number of classes or use a larger split."
            )
        if instances > split.min_examples_per_class:
            raise DataError(
                f"{instances} instances per class, but the {split.name} split has classes with only "
                f"{split.min_examples_per_class} examples; use at most {split.min_examples_per_class} instances."
            )
        self.split, self.ways, self.instances = split, ways, instances
        self.rng = np.random.default_rng(seed)

    def sample_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """One episode: rows of ``split.images`` and their labels, both (ways * instances,) in presentation order."""
        classes = self.rng.choice(self.split.num_classes, size=self.ways, replace=False)
        rows = np.concatenate(
            [
                self.split.class_indices[c][self.rng.choice(len(self.split.class_indices[c]), self.instances, False)]
                for c in classes
            ]
        )
        labels = np.repeat(np.arange(self.ways), self.instances)
        order = self.rng.permutation(len(rows))
        return rows[order], labels[order]

    def sample(self, num_tasks: int = 1) -> SequenceBatch:
        rows, labels = map(np.stack, zip(*(self.sample_rows() for _ in range(num_tasks))))
        images = self.split.images[torch.from_numpy(rows.reshape(-1))]
        if images.dtype == torch.uint8:
            images = images.float().div_(255.0)
        return SequenceBatch(images.reshape(num_tasks, -1, *images.shape[1:]), torch.from_numpy(labels), self.ways)

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
