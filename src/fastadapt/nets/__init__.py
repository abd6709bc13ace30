"""Plain ``nn.Module`` backbones, by name (``--network``)."""

from __future__ import annotations

from torch import nn

from fastadapt.errors import ConfigError
from fastadapt.nets.conv import Conv4, Conv4Stride, Norm, conv4_filters
from fastadapt.nets.heads import HEAD_HELP, HEADS, ResidualHead, build_head, is_head
from fastadapt.nets.memory import LRUAMemory
from fastadapt.nets.mlp import MLP
from fastadapt.nets.resnet import ResNet12

__all__ = [
    "HEADS",
    "NETWORKS",
    "Conv4",
    "Conv4Stride",
    "LRUAMemory",
    "MLP",
    "ResNet12",
    "ResidualHead",
    "build_network",
]

#: The names ``--network`` takes, and conv4-N for any N filters; over vectors, HEADS.
NETWORKS = ("conv4", "conv4-32", "conv4-stride", "mlp", "resnet12")


def build_network(
    name: str,
    channels: int | None,
    image_size: int | None,
    num_outputs: int | None,
    norm: Norm,
    in_features: int | None = None,
) -> nn.Module:
    """The backbone ``name``; ``num_outputs=None`` gives an embedding network. ``norm``: "episode" (batch statistics
    always, for methods that adapt weights per task) or "running" (batch norm with running statistics).
    ``in_features``: the size of each input vector, for data sets of vectors (then ``name`` is one of HEADS)."""
    if in_features is not None:
        if not is_head(name):
            raise ConfigError(f"--network {name} does not take vectors, which this data set holds; use {HEAD_HELP}.")
        return build_head(name, in_features, num_outputs)
    if is_head(name):
        raise ConfigError(f"--network {name} takes vectors and this data set holds images or points.")
    hidden = conv4_filters(name)
    if name != "mlp" and image_size is None:
        raise ConfigError(f"--network {name} takes images and this data set has none; use --network mlp.")
    if (hidden or name == "resnet12") and image_size < 16:
        # four 2x2 max-pools need at least 16 pixels
        raise ConfigError(
            f"--network {name} halves the image four times and needs --image-size of at least 16 "
            f"(got {image_size}); use a larger --image-size or --network conv4-stride."
        )
    if hidden:
        # conv4-32: 32 filters, the learner of Ravi & Larochelle and of MAML on mini-ImageNet.
        return Conv4(channels, hidden, num_outputs, norm=norm, image_size=image_size)
    if name == "resnet12":
        return ResNet12(channels, num_classes=num_outputs, norm=norm)
    if name == "conv4-stride":
        return Conv4Stride(channels, 64, num_outputs or 64, norm=norm)
    if name == "mlp":
        return MLP(1, (40, 40), num_outputs or 1)
    raise ConfigError(f"unknown --network {name!r}; choose one of: {', '.join(NETWORKS)}, or conv4-N.")
