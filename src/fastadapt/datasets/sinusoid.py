"""Sinusoid regression as in the MAML paper (Finn et al. 2017, section 5.1).

Each task is y = A sin(x - phi) with amplitude A ~ U[0.1, 5.0], phase phi ~ U[0, pi] and inputs
x ~ U[-5, 5]; a task gives ``shots`` support points and ``query`` query points.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from fastadapt.tasks.episodes import TaskBatch

AMPLITUDE = (0.1, 5.0)
PHASE = (0.0, math.pi)
INPUT_RANGE = (-5.0, 5.0)


class SinusoidTasks:
    """A seeded, endless source of sinusoid regression tasks (same interface as EpisodeSampler)."""

    def __init__(self, shots: int = 10, query: int = 10, seed: int = 0) -> None:
        if shots < 1 or query < 1:
            raise ValueError(f"shots and query must be at least 1 (got shots={shots}, query={query})")
        self.shots, self.query = shots, query
        self.ways = None
        self.rng = np.random.default_rng(seed)

    def sample_functions(self, num_tasks: int) -> tuple[np.ndarray, np.ndarray]:
        amplitude = self.rng.uniform(*AMPLITUDE, size=(num_tasks, 1, 1))
        phase = self.rng.uniform(*PHASE, size=(num_tasks, 1, 1))
        return amplitude, phase

    def sample(self, num_tasks: int = 1) -> TaskBatch:
        amplitude, phase = self.sample_functions(num_tasks)
        x = self.rng.uniform(*INPUT_RANGE, size=(num_tasks, self.shots + self.query, 1))
        y = amplitude * np.sin(x - phase)
        x, y = torch.from_numpy(x).float(), torch.from_numpy(y).float()
        return TaskBatch(x[:, : self.shots], y[:, : self.shots], x[:, self.shots :], y[:, self.shots :], None)

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
