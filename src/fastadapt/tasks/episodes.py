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

    def with_dtype(self, dtype: torch.dtype) -> TaskBatch:
        """The batch with its floating-point tensors (inputs, regression targets) converted to ``dtype``."""
        converted = {
            f.name: value.to(dtype) if isinstance(value, torch.Tensor) and value.is_floating_point() else value
            for f in fields(self)
            for value in [getattr(self, f.name)]
        }
        return TaskBatch(**converted)

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

    @property
    def has_images(self) -> bool:
        """Whether the inputs are images: (tasks, examples, channels, height, width)."""
        return self.support_x.dim() == 5 and self.query_x.dim() == 5

    def channels_last(self) -> TaskBatch:
        """The batch with every episode's images in channels-last layout (:func:`channels_last_images`); a batch
        without images, or already laid out so, is returned as it is."""
        if not self.has_images:
            return self
        support_x, query_x = channels_last_images(self.support_x), channels_last_images(self.query_x)
        if support_x is self.support_x and query_x is self.query_x:
            return self
        return TaskBatch(support_x, self.support_y, query_x, self.query_y, self.ways)


def channels_last_strides(shape: torch.Size | tuple[int, ...]) -> tuple[int, ...]:
    """Strides of a (..., C, H, W) tensor stored channels-last: C moves fastest, then W, then H, then the leading
    dimensions, outermost first."""
    *lead, channels, height, width = shape
    outer, size = [], channels * height * width
    for dim in reversed(lead):
        outer.insert(0, size)
        size *= dim
    return (*outer, 1, channels * width, channels)


def channels_last_images(x: torch.Tensor) -> torch.Tensor:
    """``x`` (..., C, H, W) as a copy in channels-last layout, so that each image (and each task's (examples, C,
    H, W) slice) is ``torch.channels_last``; ``x`` itself when it already is.

    Unlike ``x.contiguous(memory_format=torch.channels_last)`` this also lays out one-channel images (Omniglot)
    with C stride 1, which is what makes oneDNN run the first convolution channels-last: torch takes a contiguous
    one-channel tensor for both layouts and keeps the standard one, and the first convolution's weight gradient
    then took 7 ms instead of 1 ms for 75 Omniglot images (docs/performance.md)."""
    strides = channels_last_strides(x.shape)
    if x.stride() == strides:
        return x
    laid_out = torch.empty_strided(x.shape, strides, dtype=x.dtype, device=x.device)
    return laid_out.copy_(x)


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
