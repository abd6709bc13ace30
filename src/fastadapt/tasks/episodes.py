"""Episodes: a support set to adapt on and a query set to be judged on.

A batch of episodes is stored as tensors with a leading task dimension
(``tasks x examples x ...``) so that algorithms can vectorise over tasks.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass
class TaskBatch:
    """A meta-batch of episodes.

    ``support_x``: (tasks, ways * shots, ...) inputs; ``support_y``: (tasks, ways * shots) labels in
    ``0..ways-1`` for classification, (tasks, shots, 1) targets for regression. Same for the query set.
    ``ways`` is ``None`` for regression tasks.
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    ways: int | None = None

    @property
    def num_tasks(self) -> int:
        return self.support_x.shape[0]

    @property
    def is_classification(self) -> bool:
        return self.ways is not None

    def to(self, device: torch.device | str) -> TaskBatch:
        moved = {
            f.name: getattr(self, f.name).to(device, non_blocking=True)
            if isinstance(getattr(self, f.name), torch.Tensor)
            else getattr(self, f.name)
            for f in fields(self)
        }
        return TaskBatch(**moved)

    def task(self, index: int) -> TaskBatch:
        """One episode of the batch, keeping a task dimension of size 1."""
        return self.tasks(index, index + 1)

    def tasks(self, start: int, stop: int) -> TaskBatch:
        """Episodes ``start`` to ``stop - 1`` of the batch (views, no copy)."""
        return TaskBatch(
            self.support_x[start:stop],
            self.support_y[start:stop],
            self.query_x[start:stop],
            self.query_y[start:stop],
            self.ways,
        )

    def chunks(self, size: int) -> list[TaskBatch]:
        """The batch in consecutive parts of ``size`` episodes (the last may be smaller), as views."""
        return [self.tasks(start, start + size) for start in range(0, self.num_tasks, size)]


def stack_episodes(episodes: list[TaskBatch]) -> TaskBatch:
    """Concatenate batches (each with a task dimension) along the task dimension."""
    if not episodes:
        raise ValueError("stack_episodes needs at least one episode")
    ways = {e.ways for e in episodes}
    if len(ways) != 1:
        raise ValueError(f"cannot batch episodes with different numbers of ways: {sorted(ways, key=str)}")
    return TaskBatch(
        torch.cat([e.support_x for e in episodes]),
        torch.cat([e.support_y for e in episodes]),
        torch.cat([e.query_x for e in episodes]),
        torch.cat([e.query_y for e in episodes]),
        episodes[0].ways,
    )
