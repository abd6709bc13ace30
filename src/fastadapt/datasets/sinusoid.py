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


class FunctionTasks:
    """A seeded, endless source of 1-d regression tasks, one function per task (same interface as EpisodeSampler):
    a subclass draws each task's parameters (:meth:`sample_functions`) and says what the function gives at x
    (:meth:`evaluate`); targets get Gaussian noise of standard deviation ``noise`` where it is positive."""

    def __init__(self, shots: int = 10, query: int = 10, seed: int = 0, noise: float = 0.0) -> None:
        if shots < 1 or query < 1:
            raise ValueError(f"shots and query must be at least 1 (got shots={shots}, query={query})")
        if noise < 0:
            raise ValueError(f"noise must be a standard deviation >= 0 (got {noise})")
        self.shots, self.query, self.noise = shots, query, noise
        self.ways = None
        self.rng = np.random.default_rng(seed)

    def sample_functions(self, num_tasks: int) -> tuple[np.ndarray, np.ndarray]:
        """Each task's two parameters, each of shape (num_tasks, 1, 1)."""
        raise NotImplementedError

    def evaluate(self, functions: tuple[np.ndarray, np.ndarray], x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def sample(self, num_tasks: int = 1) -> TaskBatch:
        functions = self.sample_functions(num_tasks)
        x = self.rng.uniform(*INPUT_RANGE, size=(num_tasks, self.shots + self.query, 1))
        y = self.evaluate(functions, x)
        if self.noise:
            y = y + self.rng.normal(0.0, self.noise, size=y.shape)
        x, y = torch.from_numpy(x).float(), torch.from_numpy(y).float()
        return TaskBatch(x[:, : self.shots], y[:, : self.shots], x[:, self.shots :], y[:, self.shots :], None)

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]


class SinusoidTasks(FunctionTasks):
    """Sinusoid regression tasks, y = A sin(x - phi)."""

    def __init__(self, shots: int = 10, query: int = 10, seed: int = 0) -> None:
        super().__init__(shots, query, seed)

    def sample_functions(self, num_tasks: int) -> tuple[np.ndarray, np.ndarray]:
        amplitude = self.rng.uniform(*AMPLITUDE, size=(num_tasks, 1, 1))
        phase = self.rng.uniform(*PHASE, size=(num_tasks, 1, 1))
        return amplitude, phase

    def evaluate(self, functions: tuple[np.ndarray, np.ndarray], x: np.ndarray) -> np.ndarray:
        amplitude, phase = functions
        return amplitude * np.sin(x - phase)
