"""The Conv-4 backbones of the few-shot literature, as plain ``nn.Module``s."""

from __future__ import annotations

from typing import Literal

from torch import nn

Norm = Literal["running", "episode"]


def conv4_filters(network: str | None) -> int | None:
    """Filters of a max-pool Conv-4 name: 64 for "conv4", N for "conv4-N"; None for other networks."""
    if network == "conv4":
        return 64
    prefix, _, filters = (network or "").partition("-")
    return int(filters) if prefix == "conv4" and filters.isdigit() and int(filters) > 0 else None


def _norm(channels: int, norm: Norm) -> nn.Module:
    # "running": batch norm with running statistics (ProtoNets); "episode": batch statistics always (MAML's
    # reference code). The methods that adapt weights run the latter as fastadapt's exact, vmap-safe layer
    # (fastadapt.engine.fastlayers).
    return nn.BatchNorm2d(channels, track_running_stats=norm == "running")


class Conv4(nn.Module):
    """4 x [conv3x3 (padding 1), BatchNorm, ReLU, max-pool 2], as in Vinyals et al. and Snell et al.

    28x28 Omniglot gives a 64-dimensional embedding, 84x84 images 1600. ``num_classes`` adds a linear head.
    """

    def __init__(
        self,
        in_channels: int = 1,
        hidden: int = 64,
        num_classes: int | None = None,
        norm: Norm = "running",
        image_size: int = 28,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(4):
            # Pooling before the ReLU is the same function (max commutes with a monotone map) and
            # runs the ReLU and its backward on a quarter of the activations.
            layers += [
                nn.Conv2d(in_channels if i == 0 else hidden, hidden, 3, padding=1),
                _norm(hidden, norm),
                nn.MaxPool2d(2),
                nn.ReLU(),
            ]
        self.features = nn.Sequential(*layers, nn.Flatten())
        side = image_size
        for _ in range(4):
            side //= 2
        self.out_features = hidden * side * side
        self.head = nn.Linear(self.out_features, num_classes) if num_classes else nn.Identity()

    def forward(self, x):
        return self.head(self.features(x))


class Conv4Stride(nn.Module):
    """MAML's Omniglot network (Finn et al. 2017): 4 x [conv3x3 stride 2, BatchNorm, ReLU] with 64
    filters and no pooling, spatial mean of the last feature map, then a linear classifier."""

    def __init__(self, in_channels: int = 1, hidden: int = 64, num_classes: int = 5, norm: Norm = "episode"):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(4):
            layers += [
                nn.Conv2d(in_channels if i == 0 else hidden, hidden, 3, stride=2, padding=1),
                _norm(hidden, norm),
                nn.ReLU(),
            ]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))
