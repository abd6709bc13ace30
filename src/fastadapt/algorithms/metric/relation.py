"""Relation Networks (Sung, Yang, Zhang, Xiang, Torr & Hospedales, CVPR 2018).

An embedding module f_phi maps images to feature maps and a relation module g_phi scores the
concatenation C(., .) of a class's feature map with a query's, eq. (1)::

    r_{i,j} = g_phi(C(f_phi(x_i), f_phi(x_j))),    i = 1..ways, j = 1..query

For K-shot tasks the class feature map is the element-wise sum of the embeddings of the class's support
examples (section 3.2). The relation scores (in [0, 1], from a sigmoid) are regressed onto one-hot
targets with the mean squared error, eq. (3)::

    phi, psi <- argmin sum_i sum_j (r_{i,j} - 1(y_i == y_j))^2

and the predicted class of a query is the one with the highest score. All tasks of a meta-batch go
through the embedding module in one pass, and all (class, query) pairs through the relation module in
another. :func:`fastadapt.nets.relation.relation_networks` builds the paper's two modules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastadapt.algorithms.base import MetaLearner, MetaOutput
from fastadapt.algorithms.metric.common import class_sums, embed_episodes
from fastadapt.algorithms.registry import Algorithm, register
from fastadapt.errors import ConfigError
from fastadapt.nets.relation import relation_networks
from fastadapt.options import MethodOptions
from fastadapt.tasks.episodes import TaskBatch


def class_features(support: Tensor, support_y: Tensor, ways: int) -> Tensor:
    """Per-class sums of support features (section 3.2): (tasks, n, *shape) -> (tasks, ways, *shape)."""
    return class_sums(support, support_y, ways)[0]


def relation_pairs(classes: Tensor, query: Tensor) -> Tensor:
    """C(class, query) for every pair: (tasks, ways, C, ...), (tasks, q, C, ...) -> (tasks, q, ways, 2C, ...)."""
    tasks, ways, *shape = classes.shape
    q = query.shape[1]
    return torch.cat(
        [classes.unsqueeze(1).expand(tasks, q, ways, *shape), query.unsqueeze(2).expand(tasks, q, ways, *shape)],
        dim=3,
    )


class RelationNet(MetaLearner):
    supports_regression = False

    def __init__(self, embedding: nn.Module, relation: nn.Module) -> None:
        """``embedding``: f_phi, inputs -> (N, C, ...) features; ``relation``: g_phi, (P, 2C, ...) -> (P, 1)
        scores in [0, 1]."""
        super().__init__()
        self.embedding = embedding
        self.relation = relation

    def predict(self, batch: TaskBatch) -> Tensor:
        """Relation scores r_{i,j}, (tasks, query, ways), in [0, 1]."""
        support, query = embed_episodes(self.embedding, batch)
        tasks, n_query = query.shape[:2]
        classes = class_features(support, batch.support_y, batch.ways)
        if hasattr(self.relation, "score_pairs"):  # the paper's module scores all pairs without building them
            return self.relation.score_pairs(classes, query)
        pairs = relation_pairs(classes, query).flatten(0, 2)
        if pairs.dim() == 4:
            pairs = pairs.contiguous(memory_format=torch.channels_last)
        return self.relation(pairs).reshape(tasks, n_query, batch.ways)

    def meta_loss(self, batch: TaskBatch) -> MetaOutput:
        scores = self.predict(batch)
        targets = F.one_hot(batch.query_y, batch.ways).to(scores.dtype)
        return MetaOutput(F.mse_loss(scores, targets), scores)  # eq. (3), averaged over pairs and tasks


@dataclass
class RelationOptions(MethodOptions):
    """Relation Networks have no settings of their own (their networks are the paper's)."""


def build(config: Any) -> RelationNet:
    if config.image_size < 22:
        raise ConfigError(
            f"relation networks need --image-size of at least 22 (got {config.image_size}); use a larger --image-size."
        )
    embedding, relation = relation_networks(config.channels, config.image_size)
    return RelationNet(embedding.to(memory_format=torch.channels_last), relation.to(memory_format=torch.channels_last))


register(
    Algorithm(
        name="relation",
        listing=12,
        family="metric",
        summary="Relation Networks (Sung et al. 2018): a learned comparison of query and class features",
        options=RelationOptions,
        build=build,
        # Sung et al. 2018, Omniglot 5-way 1-shot: 19 queries per class, Adam 1e-3 halved every 100k episodes (1M
        # episodes in the paper; steps here is a CPU-sized budget).
        presets={
            "omniglot": dict(
                network="conv4",
                query=19,
                eval_query=15,
                meta_batch_size=1,
                lr=1e-3,
                lr_decay_every=100000,
                steps=20000,
                val_every=1000,
            ),
            # Sung et al. 2018, the authors' miniimagenet/miniimagenet_train_one_shot.py
            # (github.com/floodsung/LearningToCompare_FSL): 15 queries per class (5-shot: 10); Adam 1e-3 for both
            # modules, halved every 100000 episodes; 500000 episodes. Not expressible here: their gradient-norm
            # clipping at 0.5 for both modules.
            "mini-imagenet": dict(
                network="conv4",
                query=15,
                meta_batch_size=1,
                lr=1e-3,
                lr_decay=0.5,
                lr_decay_every=100000,
                steps=500000,
                val_every=5000,
            ),
        },
        supports_regression=False,
    )
)
