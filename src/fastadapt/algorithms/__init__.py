"""Meta-learners, grouped by family, behind one interface (:class:`MetaLearner`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from fastadapt.algorithms.base import MetaLearner, MetaOutput, per_task_score, task_loss
from fastadapt.algorithms.metric.protonet import ProtoNet
from fastadapt.algorithms.optimization.maml import MAML
from fastadapt.nets import MLP, Conv4, Conv4Stride

if TYPE_CHECKING:
    from fastadapt.config import Config

ALGORITHMS: dict[str, type[MetaLearner]] = {"maml": MAML, "protonet": ProtoNet}
NETWORKS = ("conv4", "conv4-stride", "mlp")


def build_network(config: Config, num_outputs: int | None):
    """The backbone named by ``config.network``; ``num_outputs=None`` gives an embedding network."""
    from fastadapt.errors import ConfigError

    episode_norm = "episode" if config.algorithm == "maml" else "running"
    if config.network == "conv4":
        return Conv4(config.channels, 64, num_outputs, norm=episode_norm, image_size=config.image_size)
    if config.network == "conv4-stride":
        return Conv4Stride(config.channels, 64, num_outputs or 64, norm=episode_norm)
    if config.network == "mlp":
        return MLP(1, (40, 40), num_outputs or 1)
    raise ConfigError(f"unknown network {config.network!r}; choose one of: {', '.join(NETWORKS)}.")


def build_algorithm(config: Config) -> MetaLearner:
    """The meta-learner (with its network) that ``config`` describes."""
    from fastadapt.datasets import DATASETS

    regression = DATASETS[config.dataset].kind == "regression"
    if config.algorithm == "protonet":
        return ProtoNet(build_network(config, None).to(memory_format=torch.channels_last))
    if config.algorithm == "maml":
        if config.train_ways and config.train_ways != config.ways:
            from fastadapt.errors import ConfigError

            raise ConfigError("MAML's classifier head has one output per way: --train-ways must equal --ways.")
        model = build_network(config, 1 if regression else config.ways)
        return MAML(
            model,
            inner_lr=config.inner_lr,
            inner_steps=config.inner_steps,
            first_order=config.first_order,
            eval_inner_steps=config.eval_inner_steps,
            strategy=config.strategy,
        )
    raise KeyError(config.algorithm)


__all__ = [
    "ALGORITHMS", "MAML", "MetaLearner", "MetaOutput", "ProtoNet", "build_algorithm", "build_network",
    "per_task_score", "task_loss",
]
