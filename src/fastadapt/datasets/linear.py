"""Linear regression tasks: each task is a line y = theta_0 + theta_1 x with its own intercept and slope.

The simplest family on which meta-learning has something to learn (the per-task parameters) and something to
share (that every task is a line); the worked example of many meta-learning tutorials. The distribution is
fastadapt's choice, stated here: intercept theta_0 ~ U[-3, 3], slope theta_1 ~ U[-3, 3], inputs x ~ U[-5, 5],
and optional Gaussian noise of standard deviation ``noise`` on the targets (0 by default). A task gives
``shots`` support points and ``query`` query points; the interface is :class:`SinusoidTasks`'s.
"""

from __future__ import annotations

import numpy as np

from fastadapt.datasets.sinusoid import INPUT_RANGE, FunctionTasks

__all__ = ["INPUT_RANGE", "INTERCEPT", "SLOPE", "LinearTasks"]

INTERCEPT = (-3.0, 3.0)
SLOPE = (-3.0, 3.0)


class LinearTasks(FunctionTasks):
    """Linear regression tasks, y = theta_0 + theta_1 x (same interface as EpisodeSampler)."""

    def sample_functions(self, num_tasks: int) -> tuple[np.ndarray, np.ndarray]:
        """(intercepts, slopes), each of shape (num_tasks, 1, 1)."""
        intercept = self.rng.uniform(*INTERCEPT, size=(num_tasks, 1, 1))
        slope = self.rng.uniform(*SLOPE, size=(num_tasks, 1, 1))
        return intercept, slope

    def evaluate(self, functions: tuple[np.ndarray, np.ndarray], x: np.ndarray) -> np.ndarray:
        intercept, slope = functions
        return intercept + slope * x


#: The entry for fastadapt.datasets.DATASETS (kind "regression").
DATASET_DESCRIPTION = "y = theta_0 + theta_1 x, theta_0~U[-3,3], theta_1~U[-3,3], x~U[-5,5] (generated)"
