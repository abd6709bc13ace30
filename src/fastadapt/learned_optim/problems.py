"""Optimisation problems ("optimizees") to meta-train and test learned optimisers on, in batches.

A batch of B independent problems shares one flat parameter tensor of shape (B, P); ``loss`` returns the
B losses. Every baseline here (SGD, Nesterov, Adam, RMSprop) acts coordinate-wise, so one optimiser over the
(B, P) tensor with the summed loss is exactly B independent runs; the learned optimiser is coordinate-wise too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fastadapt.errors import DataError
from fastadapt.tasks.samplers import ClassSplit


@dataclass
class ProblemBatch:
    """B problems: their losses as a function of the (B, P) parameters, and where optimisation starts."""

    initial: Tensor  # (B, P)
    name: str

    def loss(self, params: Tensor) -> Tensor:  # (B, P) -> (B,)
        raise NotImplementedError


@dataclass
class QuadraticBatch(ProblemBatch):
    """f(theta) = ||W theta - y||^2 (section 3.1 of Andrychowicz et al.)."""

    W: Tensor = None  # (B, d, d)
    y: Tensor = None  # (B, d)

    def loss(self, params: Tensor) -> Tensor:
        return (torch.einsum("bij,bj->bi", self.W, params) - self.y).square().sum(-1)


class Quadratics:
    """Random d-dimensional quadratics: W, y and the starting point theta_0 i.i.d. standard normal."""

    def __init__(self, dim: int = 10) -> None:
        self.dim = dim

    def sample(self, batch: int, generator: torch.Generator) -> QuadraticBatch:
        d = self.dim
        W = torch.randn(batch, d, d, generator=generator)
        y = torch.randn(batch, d, generator=generator)
        return QuadraticBatch(torch.randn(batch, d, generator=generator), f"quadratic d={d}", W, y)


@dataclass
class MLPBatch(ProblemBatch):
    """Cross-entropy of a one-hidden-layer MLP (sigmoid, or ReLU) on its own 10-class image task (full batch)."""

    x: Tensor = None  # (B, N, D)
    y: Tensor = None  # (B, N)
    hidden: int = 20
    classes: int = 10
    activation: str = "sigmoid"

    def unpack(self, params: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        B, D, H, C = params.shape[0], self.x.shape[-1], self.hidden, self.classes
        sizes = (D * H, H, H * C, C)
        w1, b1, w2, b2 = params.split(sizes, dim=1)
        return w1.view(B, D, H), b1.view(B, 1, H), w2.view(B, H, C), b2.view(B, 1, C)

    def loss(self, params: Tensor) -> Tensor:
        w1, b1, w2, b2 = self.unpack(params)
        nonlinearity = torch.sigmoid if self.activation == "sigmoid" else torch.relu
        logits = torch.baddbmm(b2, nonlinearity(torch.baddbmm(b1, self.x, w1)), w2)
        per_example = F.cross_entropy(logits.flatten(0, 1), self.y.flatten(), reduction="none")
        return per_example.view(self.y.shape).mean(-1)


class OmniglotMLPs:
    """A small MLP classifier per problem, on ``classes`` classes drawn from a class split (Omniglot's
    training characters): every image of those classes, flattened; initialised like ``nn.Linear``.
    ``activation`` is "sigmoid" (the paper's MNIST network) or "relu" (its generalisation test)."""

    def __init__(self, split: ClassSplit, hidden: int = 20, classes: int = 10, activation: str = "sigmoid") -> None:
        if split.num_classes < classes:
            raise DataError(f"an MLP problem needs {classes} classes; the {split.name} split has {split.num_classes}.")
        if activation not in ("sigmoid", "relu"):
            raise ValueError(f"activation must be 'sigmoid' or 'relu', not {activation!r}")
        self.split, self.hidden, self.classes, self.activation = split, hidden, classes, activation
        self.per_class = split.min_examples_per_class
        self.in_features = int(np.prod(split.images.shape[1:]))

    @property
    def num_params(self) -> int:
        D, H, C = self.in_features, self.hidden, self.classes
        return D * H + H + H * C + C

    def sample(self, batch: int, generator: torch.Generator) -> MLPBatch:
        xs, ys = [], []
        for _ in range(batch):
            chosen = torch.randperm(self.split.num_classes, generator=generator)[: self.classes].tolist()
            rows = np.concatenate([self.split.class_indices[c][: self.per_class] for c in chosen])
            x = self.split.images[torch.from_numpy(rows)].float()
            xs.append((x / 255.0 if self.split.images.dtype == torch.uint8 else x).flatten(1))
            ys.append(torch.arange(self.classes).repeat_interleave(self.per_class))
        D, H, C = self.in_features, self.hidden, self.classes

        def uniform(n: int, fan_in: int) -> Tensor:
            return (torch.rand(batch, n, generator=generator) * 2 - 1) / fan_in**0.5

        initial = torch.cat([uniform(D * H, D), uniform(H, D), uniform(H * C, H), uniform(C, H)], dim=1)
        name = f"MLP {D}-{H}-{C} ({self.activation})"
        return MLPBatch(initial, name, torch.stack(xs), torch.stack(ys), H, C, self.activation)
