"""Fully connected networks."""

from __future__ import annotations

from torch import nn


class MLP(nn.Sequential):
    """Linear layers with ReLU between them; ``MLP(1, [40, 40], 1)`` is MAML's sinusoid regressor."""

    def __init__(self, in_features: int = 1, hidden: tuple[int, ...] | list[int] = (40, 40), out_features: int = 1):
        sizes = [in_features, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        super().__init__(*layers, nn.Linear(sizes[-1], out_features))
