"""ResNet-12, the backbone of TADAM (Oreshkin et al. 2018) and MetaOptNet (Lee et al. 2019) for 84x84
mini-ImageNet-style images, as a plain ``nn.Module``.

Four residual blocks; each is 3 x [conv3x3, BatchNorm, LeakyReLU(0.1)] (the last activation applied after
the shortcut is added), a 1x1 conv + BatchNorm shortcut, and a 2x2 max-pool. Widths 64-160-320-640 by
default. 84x84 inputs end as 640 x 5 x 5 maps, 28x28 ones as 640 x 1 x 1; the embedding is their spatial
mean (``out_features`` = last width), as in TADAM.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from fastadapt.nets.conv import Norm, _norm

#: TADAM / MetaOptNet widths.
RESNET12_WIDTHS = (64, 160, 320, 640)


class ResidualBlock(nn.Module):
    """conv-BN-LeakyReLU, conv-BN-LeakyReLU, conv-BN, + 1x1-conv-BN shortcut, LeakyReLU, max-pool 2."""

    def __init__(self, in_channels: int, out_channels: int, norm: Norm = "running", slope: float = 0.1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            _norm(out_channels, norm),
            nn.LeakyReLU(slope),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            _norm(out_channels, norm),
            nn.LeakyReLU(slope),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            _norm(out_channels, norm),
        )
        # The channel count changes in every block, so the shortcut always needs a projection.
        self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), _norm(out_channels, norm))
        self.activation = nn.LeakyReLU(slope)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.activation(self.body(x) + self.shortcut(x)))


class ResNet12(nn.Module):
    """4 residual blocks of widths ``widths`` (default 64-160-320-640), spatial mean, optional linear head.

    Needs inputs of at least 16x16 (four 2x2 max-pools). ``num_classes`` adds a linear classifier ``head``.
    """

    def __init__(
        self,
        in_channels: int = 3,
        widths: Sequence[int] = RESNET12_WIDTHS,
        num_classes: int | None = None,
        norm: Norm = "running",
    ) -> None:
        super().__init__()
        if len(widths) != 4 or any(w < 1 for w in widths):
            raise ValueError(f"ResNet-12 needs four positive block widths, got {tuple(widths)}")
        blocks, channels = [], in_channels
        for width in widths:
            blocks.append(ResidualBlock(channels, width, norm))
            channels = width
        self.features = nn.Sequential(*blocks)
        self.out_features = channels
        self.head = nn.Linear(channels, num_classes) if num_classes else nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu", a=0.1)

    def embed(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, out_features)."""
        return torch.mean(self.features(x), dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.embed(x))
