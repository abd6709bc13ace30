"""Shared test fixtures-as-functions (importable: pytest puts tests/ on sys.path, see pyproject)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastadapt.algorithms import MetaLearner
from fastadapt.cli import main
from fastadapt.datasets.sinusoid import SinusoidTasks
from fastadapt.tasks.episodes import TaskBatch


def random_batch(
    tasks=3, ways=3, shots=2, query=2, shape=(1, 12, 12), dtype=torch.float64, seed=0, uniform=False
) -> TaskBatch:
    """Random examples of ``shape`` (normal, or uniform in [0, 1)) with labels laid out class by class."""
    g = torch.Generator().manual_seed(seed)
    draw = torch.rand if uniform else torch.randn
    labels = torch.arange(ways)
    return TaskBatch(
        draw(tasks, ways * shots, *shape, generator=g, dtype=dtype),
        labels.repeat_interleave(shots).repeat(tasks, 1),
        draw(tasks, ways * query, *shape, generator=g, dtype=dtype),
        labels.repeat_interleave(query).repeat(tasks, 1),
        ways,
    )


def image_batch(tasks=3, ways=3, shots=2, query=2, size=12, dtype=torch.float64, seed=0, uniform=False) -> TaskBatch:
    """One-channel size x size images."""
    return random_batch(tasks, ways, shots, query, (1, size, size), dtype, seed, uniform)


def vector_batch(tasks=2, ways=4, shots=3, query=2, dim=6, seed=0) -> TaskBatch:
    """Feature vectors of ``dim`` values."""
    return random_batch(tasks, ways, shots, query, (dim,), seed=seed)


def sinusoid_mse_before_and_after(
    learner: MetaLearner, optimizer: torch.optim.Optimizer, steps: int = 300, tasks_per_step: int = 25
) -> tuple[float, float]:
    """Held-out post-adaptation MSE on 100 sinusoid tasks, before and after ``steps`` meta-training steps."""
    tasks = SinusoidTasks(shots=10, query=10, seed=0)
    held_out = SinusoidTasks(shots=10, query=50, seed=1).sample(100)

    def held_out_mse() -> float:
        return (learner.predict(held_out) - held_out.query_y).square().mean().item()

    before = held_out_mse()
    for _ in range(steps):
        loss = learner.meta_loss(tasks.sample(tasks_per_step)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return before, held_out_mse()


def adam_meta_losses(learner: MetaLearner, batch: TaskBatch, steps: int, lr: float = 1e-2) -> list[float]:
    """The meta-loss at each of ``steps`` Adam steps on one fixed batch (a learner that can fit it lowers it)."""
    optimizer = torch.optim.Adam(learner.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = learner.meta_loss(batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def make_image_folder(root: Path, classes: int = 20, per_class: int = 6, size: int = 8, colour: bool = False) -> Path:
    """``classes`` folders of ``per_class`` random grayscale (or ``colour``) PNGs (the default random split: 13/3/4
    classes)."""
    rng = np.random.default_rng(0)
    shape = (size, size, 3) if colour else (size, size)
    for c in range(classes):
        d = root / f"class{c:02d}"
        d.mkdir(parents=True)
        for k in range(per_class):
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(d / f"{k}.png")
    return root


def meta_gradient(learner: MetaLearner, batch: TaskBatch) -> dict[str, torch.Tensor]:
    """d meta_loss / d theta for the learner's network, by parameter name (in parameter order)."""
    learner.zero_grad()
    learner.meta_loss(batch).loss.backward()
    return {k: p.grad.clone() for k, p in learner.model.named_parameters()}


def relative_error(
    a: Mapping[str, torch.Tensor] | Sequence[torch.Tensor], b: Mapping[str, torch.Tensor] | Sequence[torch.Tensor]
) -> float:
    """||a - b|| / ||a|| over all tensors, given as dicts or sequences in the same parameter order."""
    a = list(a.values()) if isinstance(a, Mapping) else list(a)
    b = list(b.values()) if isinstance(b, Mapping) else list(b)
    assert len(a) == len(b)
    num = torch.sqrt(sum((x - y).square().sum() for x, y in zip(a, b)))
    return (num / torch.sqrt(sum(x.square().sum() for x in a))).item()


def run_ok(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "Traceback" not in out + err
    return out


def run_error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    """Run ``argv``, check exit code 2 and exactly one 'fastadapt: error:' line on stderr; return it."""
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("fastadapt: error: "), err
    assert "Traceback" not in out + err
    return lines[0]
