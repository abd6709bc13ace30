"""Linear regression tasks: each task is a line y = theta_0 + theta_1 x with its own intercept and slope.

The simplest family on which meta-learning has something to learn (the per-task parameters) and something to
share (that every task is a line); the worked example of many meta-learning tutorials. The distribution is
fastadapt's choice, stated here: intercept theta_0 ~ U[-3, 3], slope theta_1 ~ U[-3, 3], inputs x ~ U[-5, 5],
and optional Gaussian noise of standard deviation ``noise`` on the targets (0 by default). A task gives
``shots`` support points and ``query`` query points; the interface is :class:`SinusoidTasks`'s.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fastadapt.tasks.episodes import TaskBatch

INTERCEPT = (-3.0, 3.0)
SLOPE = (-3.0, 3.0)
INPUT_RANGE = (-5.0, 5.0)


class LinearTasks:
    """A seeded, endless source of linear regression tasks (same interface as EpisodeSampler)."""

    def __init__(self, shots: int = 10, query: int = 10, seed: int = 0, noise: float = 0.0) -> None:
        if shots < 1 or query < 1:
            raise ValueError(f"shots and query must be at least 1 (got shots={shots}, query={query})")
        if noise < 0:
            raise ValueError(f"noise must be a standard deviation >= 0 (got {noise})")
        self.shots, self.query, self.noise = shots, query, noise
        self.ways = None
        self.rng = np.random.default_rng(seed)

    def sample_functions(self, num_tasks: int) -> tuple[np.ndarray, np.ndarray]:
        """(intercepts, slopes), each of shape (num_tasks, 1, 1)."""
        intercept = self.rng.uniform(*INTERCEPT, size=(num_tasks, 1, 1))
        slope = self.rng.uniform(*SLOPE, size=(num_tasks, 1, 1))
        return intercept, slope

    def sample(self, num_tasks: int = 1) -> TaskBatch:
        intercept, slope = self.sample_functions(num_tasks)
        x = self.rng.uniform(*INPUT_RANGE, size=(num_tasks, self.shots + self.query, 1))
        y = intercept + slope * x
        if self.noise:
            y = y + self.rng.normal(0.0, self.noise, size=y.shape)
        x, y = torch.from_numpy(x).float(), torch.from_numpy(y).float()
        return TaskBatch(x[:, : self.shots], y[:, : self.shots], x[:, self.shots :], y[:, self.shots :], None)

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]


#: The entry for fastadapt.datasets.DATASETS (kind "regression").
DATASET_DESCRIPTION = "y = theta_0 + theta_1 x, theta_0~U[-3,3], theta_1~U[-3,3], x~U[-5,5] (generated)"
