"""Layers that behave well under ``torch.func`` transforms."""

from __future__ import annotations

import torch
from torch import nn


class EpisodeBatchNorm2d(nn.Module):
    """Batch norm that always normalises with the statistics of the batch it is given, as in the MAML
    reference code (per task: the support set during adaptation, the query set when scoring).

    Written from ``mean``/``var`` rather than ``torch.nn.functional.batch_norm``: under ``vmap``, torch's
    batch_norm kernel gives a wrong second-order meta-gradient, while this form is exact.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        var = (x - mean).square().mean(dim=(0, 2, 3), keepdim=True)
        scale = self.weight.view(1, -1, 1, 1) * torch.rsqrt(var + self.eps)
        return (x - mean) * scale + self.bias.view(1, -1, 1, 1)
