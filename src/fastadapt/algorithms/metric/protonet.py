"""Prototypical Networks (Snell, Swersky & Zemel, NeurIPS 2017).

Each class is represented by the mean embedding of its support examples, eq. (1)::

    c_k = 1/|S_k| * sum_{(x_i, y_i) in S_k} f_phi(x_i)

and a query is classified by a softmax over negative distances to the prototypes, eq. (2)::

    p(y = k | x) = exp(-d(f_phi(x), c_k)) / sum_k' exp(-d(f_phi(x), c_k'))

with d the squared Euclidean distance (or, optionally, negative cosine similarity). All tasks of a
meta-batch are embedded in one pass of the network.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastadapt.algorithms.base import MetaLearner, MetaOutput, task_loss
from fastadapt.algorithms.metric.common import class_sums, embed_episodes
from fastadapt.algorithms.registry import Algorithm, register
from fastadapt.datasets import input_features
from fastadapt.nets import build_network
from fastadapt.options import MethodOptions, option
from fastadapt.tasks.episodes import TaskBatch


def prototypes(support_embeddings: Tensor, support_y: Tensor, ways: int) -> Tensor:
    """Class means, eq. (1): (tasks, shots*ways, dim) -> (tasks, ways, dim), for any support order."""
    sums, counts = class_sums(support_embeddings, support_y, ways)
    return sums / counts.unsqueeze(-1)


def squared_euclidean(a: Tensor, b: Tensor) -> Tensor:
    """(tasks, n, dim), (tasks, m, dim) -> (tasks, n, m) squared distances."""
    return (a.unsqueeze(2) - b.unsqueeze(1)).square().sum(-1)


class ProtoNet(MetaLearner):
    supports_regression = False

    def __init__(self, encoder: nn.Module, distance: Literal["euclidean", "cosine"] = "euclidean") -> None:
        super().__init__()
        if distance not in ("euclidean", "cosine"):
            raise ValueError(f"distance must be 'euclidean' or 'cosine', not {distance!r}")
        self.encoder = encoder
        self.distance = distance

    def predict(self, batch: TaskBatch) -> Tensor:
        support, query = embed_episodes(self.encoder, batch)
        support, query = support.flatten(2), query.flatten(2)
        centres = prototypes(support, batch.support_y, batch.ways)
        if self.distance == "cosine":
            return F.normalize(query, dim=-1) @ F.normalize(centres, dim=-1).transpose(1, 2)
        return -squared_euclidean(query, centres)  # logits of eq. (2)

    def meta_loss(self, batch: TaskBatch) -> MetaOutput:
        logits = self.predict(batch)
        return MetaOutput(task_loss(logits, batch.query_y), logits)


@dataclass
class ProtoNetOptions(MethodOptions):
    distance: str = option(
        "euclidean",
        "distance to the prototypes: squared euclidean (the paper) or cosine",
        choices=("euclidean", "cosine"),
    )


def build(config: Any) -> ProtoNet:
    """ProtoNet on the run's network: a convolutional one over images, a head over vectors (text embeddings)."""
    features = input_features(config)
    encoder = build_network(config.network, config.channels, config.image_size, None, "running", features)
    return ProtoNet(encoder.to(memory_format=torch.channels_last), distance=config.distance)


# fmt: off
#: Over sentence embeddings (clinc150, text; docs/text.md). A residual head g(x) = s (x + W2 relu(W1 x)) that starts as
#: the identity (the frozen encoder's own prototypes). Chosen by short runs (400 steps, 5-way 1-shot) on CLINC150's
#: meta-validation domains: at Adam 1e-3 the head lost validation accuracy from the first validation on, at 1e-4 it
#: held it; 1500 steps, by when validation accuracy had stopped rising.
TEXT_PRESET = dict(network="residual-256", query=10, eval_query=15, meta_batch_size=1, lr=1e-4, steps=1500,
                   val_every=250, val_episodes=300)
# fmt: on


register(
    Algorithm(
        name="protonet",
        listing=10,
        family="metric",
        summary="Prototypical Networks (Snell et al. 2017): nearest class mean in an embedding",
        options=ProtoNetOptions,
        build=build,
        presets={
            # Snell et al. 2017: train with more ways (60) and 5 queries, Adam 1e-3 halved every 2000 episodes.
            "omniglot": dict(
                network="conv4",
                train_ways=60,
                query=5,
                eval_query=15,
                meta_batch_size=1,
                lr=1e-3,
                lr_decay_every=2000,
                steps=5000,
                val_every=500,
            ),
            "folder": dict(network="conv4", query=5, eval_query=15, steps=5000),
            # Snell et al. 2017, sec. 3.2, 1-shot: Conv-4 with 64 filters; 30-way training episodes (5-shot: 20-way),
            # 15 queries per class; Adam 1e-3 halved every 2000 episodes. The paper stops on validation loss and gives
            # no episode count: 30000 here, with the best validation checkpoint kept (fastadapt's choice).
            "mini-imagenet": dict(
                network="conv4",
                train_ways=30,
                query=15,
                meta_batch_size=1,
                lr=1e-3,
                lr_decay=0.5,
                lr_decay_every=2000,
                steps=30000,
                val_every=1000,
            ),
            "clinc150": TEXT_PRESET,
            "text": TEXT_PRESET,
        },
        supports_regression=False,
    )
)
