"""Plain ``nn.Module`` backbones."""

from fastadapt.nets.conv import Conv4, Conv4Stride
from fastadapt.nets.layers import EpisodeBatchNorm2d
from fastadapt.nets.mlp import MLP
from fastadapt.nets.resnet import ResNet12

__all__ = ["Conv4", "Conv4Stride", "EpisodeBatchNorm2d", "MLP", "ResNet12"]
