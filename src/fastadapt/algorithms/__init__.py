"""Meta-learners, grouped by family, behind one interface (:class:`MetaLearner`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from fastadapt.algorithms.base import MetaLearner, MetaOutput, per_task_score, task_loss
from fastadapt.algorithms.metric.matching import MatchingNet
from fastadapt.algorithms.metric.protonet import ProtoNet
from fastadapt.algorithms.metric.relation import RelationNet
from fastadapt.algorithms.optimization.anil import ANIL
from fastadapt.algorithms.optimization.leo import LEO
from fastadapt.algorithms.optimization.maml import MAML
from fastadapt.algorithms.optimization.meta_lstm import MetaLSTM
from fastadapt.algorithms.optimization.metasgd import MetaSGD
from fastadapt.algorithms.optimization.reptile import Reptile
from fastadapt.errors import ConfigError
from fastadapt.nets import MLP, Conv4, Conv4Stride, ResNet12
from fastadapt.nets.conv import conv4_filters
from fastadapt.nets.relation import relation_networks

if TYPE_CHECKING:
    from fastadapt.config import Config

ALGORITHMS: dict[str, type[MetaLearner]] = {
    "anil": ANIL,
    "leo": LEO,
    "maml": MAML,
    # MAML with the MAML++ switches of Antoniou et al. 2019 on (see its preset in config.py).
    "maml++": MAML,
    "matching": MatchingNet,
    "meta-lstm": MetaLSTM,
    "metasgd": MetaSGD,
    "protonet": ProtoNet,
    "relation": RelationNet,
    "reptile": Reptile,
}
#: Methods that adapt the network's weights per task; their networks use per-episode batch statistics.
GRADIENT_BASED = ("anil", "maml", "maml++", "meta-lstm", "metasgd", "reptile")
NETWORKS = ("conv4", "conv4-32", "conv4-stride", "mlp", "resnet12")  # and conv4-N, for any N filters


def build_network(config: Config, num_outputs: int | None) -> nn.Module:
    """The backbone named by ``config.network``; ``num_outputs=None`` gives an embedding network."""
    episode_norm = "episode" if config.algorithm in GRADIENT_BASED else "running"
    hidden = conv4_filters(config.network)
    if (hidden or config.network == "resnet12") and config.image_size < 16:
        # four 2x2 max-pools need at least 16 pixels
        raise ConfigError(
            f"--network {config.network} halves the image four times and needs --image-size of at least 16 "
            f"(got {config.image_size}); use a larger --image-size or --network conv4-stride."
        )
    if hidden:
        # conv4-32: 32 filters, the learner of Ravi & Larochelle and of MAML on mini-ImageNet.
        return Conv4(config.channels, hidden, num_outputs, norm=episode_norm, image_size=config.image_size)
    if config.network == "resnet12":
        return ResNet12(config.channels, num_classes=num_outputs, norm=episode_norm)
    if config.network == "conv4-stride":
        return Conv4Stride(config.channels, 64, num_outputs or 64, norm=episode_norm)
    if config.network == "mlp":
        return MLP(1, (40, 40), num_outputs or 1)
    raise ConfigError(f"unknown network {config.network!r}; choose one of: {', '.join(NETWORKS)}, or conv4-N.")


def _channels_last(module: nn.Module) -> nn.Module:
    return module.to(memory_format=torch.channels_last)


def build_algorithm(config: Config) -> MetaLearner:
    """The meta-learner (with its network) that ``config`` describes."""
    from fastadapt.datasets import DATASETS

    regression = DATASETS[config.dataset].kind == "regression"
    if config.algorithm == "leo":
        from fastadapt.datasets.embeddings import embedding_dim

        return LEO(
            embedding_dim(config.data_dir),
            latent_dim=config.leo_latent_dim,
            inner_steps=config.inner_steps,
            inner_lr=config.inner_lr,
            finetuning_steps=config.leo_finetuning_steps,
            finetuning_lr=config.leo_finetuning_lr,
            dropout=config.leo_dropout,
            kl_weight=config.leo_kl_weight,
            encoder_penalty_weight=config.leo_encoder_penalty,
            l2_penalty_weight=config.leo_l2_penalty,
            orthogonality_penalty_weight=config.leo_orthogonality_penalty,
            grad_clip=config.leo_grad_clip or None,
            eval_inner_steps=config.eval_inner_steps,
        )
    if config.algorithm == "protonet":
        return ProtoNet(_channels_last(build_network(config, None)))
    if config.algorithm == "matching":
        encoder = _channels_last(build_network(config, None))
        return MatchingNet(
            encoder, getattr(encoder, "out_features", 64), fce=config.fce, cosine_scale=config.cosine_scale or None
        )
    if config.algorithm == "relation":
        if config.image_size < 22:
            raise ConfigError(
                f"relation networks need --image-size of at least 22 (got {config.image_size}); "
                "use a larger --image-size."
            )
        embedding, relation = relation_networks(config.channels, config.image_size)
        return RelationNet(_channels_last(embedding), _channels_last(relation))
    if config.algorithm in GRADIENT_BASED:
        if config.train_ways and config.train_ways != config.ways:
            raise ConfigError(
                f"{config.algorithm}'s classifier head has one output per way: --train-ways must equal --ways."
            )
        model = build_network(config, 1 if regression else config.ways)
        common = dict(
            inner_lr=config.inner_lr,
            inner_steps=config.inner_steps,
            eval_inner_steps=config.eval_inner_steps,
            strategy=config.strategy,
        )
        if config.algorithm == "meta-lstm":  # the learner's weights are R's cell state; no inner lr
            return MetaLSTM(
                model,
                inner_steps=config.inner_steps,
                eval_inner_steps=config.eval_inner_steps,
                compile_update=config.compile,
            )
        if config.algorithm == "reptile":
            return Reptile(
                model,
                inner_optimizer=config.inner_optimizer,
                adam_state=config.inner_adam_state,
                inner_batch_size=config.inner_batch_size,
                eval_inner_batch_size=config.eval_inner_batch_size,
                **common,
            )
        # MAML and the methods built on it (ANIL, Meta-SGD) share these settings.
        speed = dict(
            vmap_chunk=config.vmap_chunk,
            compile=config.compile,
            workers=config.workers,
            channels_last=config.channels_last,
        )
        maml_family = dict(common, first_order=config.first_order, **speed)
        if config.algorithm == "anil":
            # Conv4/Conv4Stride call their classifier "head"; an MLP is an nn.Sequential ending in it.
            head = f"{len(model) - 1}." if config.network == "mlp" else "head."
            return ANIL(model, head=head, **maml_family)
        if config.algorithm in ("maml", "maml++"):
            return MAML(
                model,
                multi_step_loss=config.multi_step_loss,
                multi_step_loss_steps=config.multi_step_loss_steps,
                per_step_lr=config.per_step_lr,
                per_step_bn=config.per_step_bn,
                first_order_steps=config.first_order_steps,
                **maml_family,
            )
        return ALGORITHMS[config.algorithm](model, **maml_family)
    raise KeyError(config.algorithm)


__all__ = [
    "ALGORITHMS",
    "ANIL",
    "GRADIENT_BASED",
    "MetaSGD",
    "Reptile",
    "MAML",
    "LEO",
    "MetaLSTM",
    "MatchingNet",
    "MetaLearner",
    "MetaOutput",
    "ProtoNet",
    "RelationNet",
    "build_algorithm",
    "build_network",
    "per_task_score",
    "task_loss",
]
