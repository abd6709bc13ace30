"""Seeded, reproducible N-way K-shot episode samplers over a class split."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from fastadapt.errors import DataError
from fastadapt.tasks.episodes import TaskBatch


@dataclass
class ClassSplit:
    """The examples of one split (train, val or test), grouped by class.

    ``images`` holds every example of the split, ``class_indices[c]`` the rows of class ``c``.
    Images may be stored as uint8 (0..255, converted to float in [0, 1] when sampled) to save memory.
    """

    name: str
    images: torch.Tensor
    class_indices: list[np.ndarray]
    class_names: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.class_indices)

    @property
    def min_examples_per_class(self) -> int:
        return min(len(ix) for ix in self.class_indices) if self.class_indices else 0


class TaskSource(Protocol):
    """Anything that yields meta-batches of episodes and can save and restore its random state."""

    def sample(self, num_tasks: int) -> TaskBatch: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class EpisodeSampler:
    """Samples N-way K-shot episodes from one class split.

    Each episode draws ``ways`` distinct classes, then ``shots + query`` distinct examples of each;
    labels are remapped to ``0..ways-1`` in the (random) order the classes were drawn. Examples are laid
    out class by class: support row ``c * shots + k`` is the k-th shot of class ``c``.
    """

    def __init__(self, split: ClassSplit, ways: int, shots: int, query: int, seed: int = 0) -> None:
        if ways < 2:
            raise DataError(f"--ways must be at least 2 (got {ways}).")
        if shots < 1 or query < 1:
            raise DataError(f"--shots and --query must be at least 1 (got shots={shots}, query={query}).")
        if ways > split.num_classes:
            raise DataError(
                f"{ways}-way episodes need {ways} classes but the {split.name} split has only "
                f"{split.num_classes}; lower --ways to at most {split.num_classes} or use a larger split."
            )
        needed = shots + query
        if needed > split.min_examples_per_class:
            small = [split.class_names[c] for c, ix in enumerate(split.class_indices) if len(ix) < needed]
            raise DataError(
                f"shots + query = {shots} + {query} = {needed} examples per class, but the {split.name} "
                f"split has classes with only {split.min_examples_per_class} (e.g. {small[0]!r}, "
                f"{len(small)} such classes); lower --shots/--query to a total of at most "
                f"{split.min_examples_per_class}."
            )
        self.split = split
        self.ways, self.shots, self.query = ways, shots, query
        self.rng = np.random.default_rng(seed)

    def sample_indices(self) -> tuple[np.ndarray, np.ndarray]:
        """Rows of ``split.images`` for one episode: (ways, shots) support and (ways, query) query."""
        classes = self.rng.choice(self.split.num_classes, size=self.ways, replace=False)
        rows = np.stack(
            [
                self.split.class_indices[c][
                    self.rng.choice(len(self.split.class_indices[c]), self.shots + self.query, replace=False)
                ]
                for c in classes
            ]
        )
        return rows[:, : self.shots], rows[:, self.shots :]

    def sample(self, num_tasks: int = 1) -> TaskBatch:
        support_rows, query_rows = zip(*(self.sample_indices() for _ in range(num_tasks)))
        support_rows, query_rows = np.stack(support_rows), np.stack(query_rows)
        labels = torch.arange(self.ways)
        return TaskBatch(
            support_x=self._images(support_rows),
            support_y=labels.repeat_interleave(self.shots).expand(num_tasks, -1).clone(),
            query_x=self._images(query_rows),
            query_y=labels.repeat_interleave(self.query).expand(num_tasks, -1).clone(),
            ways=self.ways,
        )

    def _images(self, rows: np.ndarray) -> torch.Tensor:
        tasks = rows.shape[0]
        # index_select copies each image row whole; advanced indexing (images[rows]) copied uint8 images element
        # by element, 2.2x slower per episode from mini-ImageNet's memory-mapped cache (docs/data.md).
        x = torch.index_select(self.split.images, 0, torch.from_numpy(rows.reshape(-1).astype(np.int64, copy=False)))
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        return x.reshape(tasks, -1, *x.shape[1:])

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
