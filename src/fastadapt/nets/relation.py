"""The two networks of Relation Networks (Sung et al., CVPR 2018, figure 2), as plain ``nn.Module``s.

Padding follows the authors' code (github.com/floodsung/LearningToCompare_FSL): the embedding module's
first two convolutions are unpadded, the last two padded; the relation module's convolutions are unpadded
where the feature map is large enough (their miniImageNet code: 84x84 -> 19x19 maps -> 3x3 before the FC
layer) and padded otherwise (their Omniglot code: 28x28 -> 5x5 maps -> 1x1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _block(in_channels: int, out_channels: int, padding: int, pool: bool) -> list[nn.Module]:
    # conv3x3, BatchNorm, ReLU[, max-pool 2]; pooling before the ReLU is the same function (max commutes
    # with a monotone map) and runs the ReLU on a quarter of the activations.
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, 3, padding=padding), nn.BatchNorm2d(out_channels)]
    return [*layers, nn.MaxPool2d(2), nn.ReLU()] if pool else [*layers, nn.ReLU()]


class RelationEmbedding(nn.Module):
    """f_phi: 4 x [conv3x3 ``hidden``, BatchNorm, ReLU], max-pool 2 after the first two blocks only.

    Returns feature maps: (N, hidden, s, s) with s = :meth:`output_size` (5 for 28x28, 19 for 84x84).
    """

    def __init__(self, in_channels: int = 1, hidden: int = 64) -> None:
        super().__init__()
        self.out_channels = hidden
        self.features = nn.Sequential(
            *_block(in_channels, hidden, padding=0, pool=True),
            *_block(hidden, hidden, padding=0, pool=True),
            *_block(hidden, hidden, padding=1, pool=False),
            *_block(hidden, hidden, padding=1, pool=False),
        )

    @staticmethod
    def output_size(image_size: int) -> int:
        return ((image_size - 2) // 2 - 2) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def _relation_side(side: int, padding: int) -> int:
    for _ in range(2):  # conv3x3 then max-pool 2, twice
        side = (side + 2 * padding - 2) // 2
    return side


class RelationModule(nn.Module):
    """g_phi: 2 x [conv3x3 ``hidden``, BatchNorm, ReLU, max-pool 2], FC ``fc_hidden`` + ReLU, FC 1 + sigmoid.

    Takes concatenated pairs of feature maps, (P, 2 * in_channels, s, s) with s = ``feature_size``, and
    returns relation scores in [0, 1], (P, 1). ``padding=None`` picks it as the authors' code does.
    """

    def __init__(
        self,
        in_channels: int = 64,
        hidden: int = 64,
        feature_size: int = 5,
        fc_hidden: int = 8,
        padding: int | None = None,
    ) -> None:
        super().__init__()
        if padding is None:
            padding = 0 if _relation_side(feature_size, 0) >= 1 else 1
        side = _relation_side(feature_size, padding)
        if side < 1:
            raise ValueError(
                f"{feature_size}x{feature_size} feature maps are too small for the relation module's two "
                f"max-pools (padding {padding}); use larger images"
            )
        self.features = nn.Sequential(
            *_block(2 * in_channels, hidden, padding=padding, pool=True),
            *_block(hidden, hidden, padding=padding, pool=True),
            nn.Flatten(),
        )
        self.score = nn.Sequential(
            nn.Linear(hidden * side * side, fc_hidden), nn.ReLU(), nn.Linear(fc_hidden, 1), nn.Sigmoid()
        )

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        return self.score(self.features(pairs))

    def score_pairs(self, classes: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """Scores of every (class, query) pair of each task, the same as ``forward`` on the concatenated
        pairs: (tasks, ways, C, s, s), (tasks, q, C, s, s) -> (tasks, q, ways).

        The first convolution is linear in its input, so conv(C(a, b)) = conv_a(a) + conv_b(b) with the
        weight split along its input channels: it runs once per class map and once per query map instead
        of once per pair, which removes most of the arithmetic (it dominates a training step).
        """
        tasks, ways, channels = classes.shape[:3]
        queries_per_task = queries.shape[1]
        conv = self.features[0]
        weight_class, weight_query = conv.weight[:, :channels], conv.weight[:, channels:]
        by_class = F.conv2d(classes.flatten(0, 1), weight_class, conv.bias, padding=conv.padding)
        by_query = F.conv2d(queries.flatten(0, 1), weight_query, None, padding=conv.padding)
        shape = by_class.shape[1:]
        first = by_class.reshape(tasks, 1, ways, *shape) + by_query.reshape(tasks, queries_per_task, 1, *shape)
        hidden = self.features[1:](first.flatten(0, 2).contiguous(memory_format=torch.channels_last))
        return self.score(hidden).reshape(tasks, queries_per_task, ways)


def relation_networks(
    in_channels: int = 1, image_size: int = 28, hidden: int = 64
) -> tuple[RelationEmbedding, RelationModule]:
    """The paper's embedding and relation modules for ``image_size`` x ``image_size`` inputs."""
    embedding = RelationEmbedding(in_channels, hidden)
    side = RelationEmbedding.output_size(image_size)
    if side < 1:
        raise ValueError(f"{image_size}x{image_size} images are too small for the relation embedding module")
    return embedding, RelationModule(hidden, hidden, side)
