"""A replay buffer filled by reservoir sampling (Vitter 1985), as La-MAML, MER and ER use it: after n
examples have gone by, each of them is in the buffer with probability capacity / n."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from fastadapt.errors import ConfigError


class ReservoirBuffer:
    """At most ``capacity`` (x, y) examples; :meth:`add` keeps a uniform sample of everything added, :meth:`sample`
    draws distinct stored examples. Seeded, with a state to save and restore."""

    def __init__(self, capacity: int, seed: int = 0) -> None:
        if capacity < 0:
            raise ConfigError(f"the replay buffer's capacity must be >= 0, not {capacity}.")
        self.capacity = capacity
        self.rng = np.random.default_rng(seed)
        self.x: Tensor | None = None
        self.y: Tensor | None = None
        self.size = 0
        self.seen = 0

    def __len__(self) -> int:
        return self.size

    def add(self, x: Tensor, y: Tensor) -> None:
        if self.capacity == 0:
            self.seen += len(y)
            return
        if self.x is None:
            self.x = torch.empty(self.capacity, *x.shape[1:], dtype=x.dtype)
            self.y = torch.empty(self.capacity, *y.shape[1:], dtype=y.dtype)
        assert self.y is not None
        for i in range(len(y)):
            self.seen += 1
            if self.size < self.capacity:
                slot = self.size
                self.size += 1
            else:
                slot = int(self.rng.integers(self.seen))
                if slot >= self.capacity:
                    continue
            self.x[slot] = x[i]
            self.y[slot] = y[i]

    def sample(self, n: int) -> tuple[Tensor, Tensor] | None:
        """``min(n, len(self))`` distinct stored examples, or None while the buffer is empty."""
        if self.size == 0 or n <= 0:
            return None
        assert self.x is not None and self.y is not None
        rows = torch.as_tensor(self.rng.choice(self.size, size=min(n, self.size), replace=False))
        return self.x[rows], self.y[rows]

    def with_replay(self, x: Tensor, y: Tensor, n: int) -> tuple[Tensor, Tensor]:
        """The incoming ``(x, y)`` preceded by ``n`` replayed examples (fewer, or none, while the buffer fills)."""
        replay = self.sample(n)
        if replay is None:
            return x, y
        return torch.cat([replay[0], x]), torch.cat([replay[1], y])

    def check_fits(self, stream_examples: int, owner: str) -> None:
        """Refuse a buffer larger than the whole stream: it would never fill, so its size would mean nothing."""
        if self.capacity > stream_examples:
            raise ConfigError(
                f"{owner}'s replay buffer holds {self.capacity} examples but the stream has only {stream_examples}; "
                f"lower memory to at most {stream_examples}."
            )

    def state_dict(self) -> dict[str, Any]:
        return {"x": self.x, "y": self.y, "size": self.size, "seen": self.seen, "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.x, self.y, self.size, self.seen = state["x"], state["y"], state["size"], state["seen"]
        self.rng.bit_generator.state = state["rng"]
