"""Linear regression tasks: every task is exactly a line, with its own parameters, reproducibly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastadapt.algorithms import MAML
from fastadapt.config import presets
from fastadapt.datasets.linear import INPUT_RANGE, LinearTasks
from fastadapt.nets import MLP


def _fit_lines(x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Least-squares (intercept, slope) per task."""
    out = []
    for xs, ys in zip(x.double().numpy(), y.double().numpy()):
        design = np.concatenate([np.ones_like(xs), xs], axis=1)
        out.append(np.linalg.lstsq(design, ys[:, 0], rcond=None)[0])
    return np.array(out)


def test_tasks_are_lines_with_their_own_parameters() -> None:
    tasks = LinearTasks(shots=4, query=6, seed=3)
    state = tasks.state_dict()
    intercept, slope = tasks.sample_functions(5)
    tasks.load_state_dict(state)
    batch = tasks.sample(5)
    assert batch.support_x.shape == (5, 4, 1) and batch.query_y.shape == (5, 6, 1) and batch.ways is None
    x = torch.cat([batch.support_x, batch.query_x], 1)
    y = torch.cat([batch.support_y, batch.query_y], 1)
    fitted = _fit_lines(x, y)
    np.testing.assert_allclose(fitted[:, 0], intercept.ravel(), atol=1e-4)
    np.testing.assert_allclose(fitted[:, 1], slope.ravel(), atol=1e-4)
    assert len(set(np.round(slope.ravel(), 6))) == 5
    assert x.min() >= INPUT_RANGE[0] and x.max() <= INPUT_RANGE[1]


def test_seeded_and_resumable() -> None:
    a, b = LinearTasks(seed=1), LinearTasks(seed=1)
    assert torch.equal(a.sample(3).query_y, b.sample(3).query_y)
    state = a.state_dict()
    first = a.sample(2)
    a.load_state_dict(state)
    assert torch.equal(first.support_x, a.sample(2).support_x)
    assert not torch.equal(LinearTasks(seed=2).sample(3).query_y, LinearTasks(seed=1).sample(3).query_y)


def test_noise() -> None:
    batch = LinearTasks(shots=200, query=1, seed=0, noise=0.5).sample(1)
    fitted = _fit_lines(batch.support_x, batch.support_y)[0]
    residual = batch.support_y[0, :, 0].double().numpy() - (
        fitted[0] + fitted[1] * batch.support_x[0, :, 0].double().numpy()
    )
    assert 0.4 < residual.std() < 0.6
    with pytest.raises(ValueError, match="noise"):
        LinearTasks(noise=-1)
    with pytest.raises(ValueError, match="shots and query"):
        LinearTasks(shots=0)


def test_maml_learns_linear_tasks() -> None:
    """Sixty MAML steps with the preset's inner loop lower the post-adaptation MSE on held-out lines."""
    preset = presets("maml", "linear")
    torch.manual_seed(0)
    learner = MAML(MLP(1, (40, 40), 1), inner_lr=preset["inner_lr"], inner_steps=1, strategy="vmap")
    optimizer = torch.optim.Adam(learner.parameters(), lr=preset["lr"])
    held_out = LinearTasks(shots=10, query=50, seed=99).sample(100)

    def mse() -> float:
        return (learner.predict(held_out) - held_out.query_y).square().mean().item()

    before = mse()
    tasks = LinearTasks(shots=10, query=10, seed=0)
    for _ in range(60):
        loss = learner.meta_loss(tasks.sample(10)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert mse() < 0.5 * before
