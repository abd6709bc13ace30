"""Episodic few-shot text classification: fastadapt's meta-learners on sentence embeddings.

The texts of a data set are embedded once by a frozen sentence encoder (:mod:`fastadapt.text.encoder`,
cached), so a split is a :class:`~fastadapt.tasks.samplers.ClassSplit` of (n, D) vectors and the
ordinary :class:`~fastadapt.tasks.samplers.EpisodeSampler` draws N-way K-shot episodes from it. What
each learner adapts or learns on top of the frozen encoder:

- ``protonet``: Prototypical Networks (Snell et al. 2017) with a meta-learned residual head
  g(x) = x + W2 relu(W1 x) (W2 starts at zero, so training starts from the frozen encoder's prototypes),
  ``network="identity"`` for no head (plain nearest prototype, nothing to train);
- ``maml``: MAML (Finn et al. 2017) on a classifier head over the frozen embeddings, an MLP
  D -> hidden -> ways (``network="mlp-H"``) or a linear layer (``network="linear"``): the head's
  initialisation is meta-learned and all of the head is adapted in the inner loop; the encoder is not;
- ``leo``: LEO (Rusu et al. 2019), which is defined on fixed embeddings;
- ``logistic``: the baseline, a logistic regression fitted on each episode's support set
  (:class:`~fastadapt.text.classifiers.SupportLogisticRegression`); nothing is meta-learned.

Entry points for the trainer (``fastadapt train --dataset clinc150`` / ``--dataset text --data-dir FILE``):
:func:`text_load_splits` is what ``load_splits`` returns for those data sets, and
:func:`build_text_learner` what ``build_algorithm`` builds for them; ``task_source`` needs nothing new.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fastadapt.algorithms.base import MetaLearner
from fastadapt.algorithms.metric.protonet import ProtoNet
from fastadapt.algorithms.optimization.leo import LEO
from fastadapt.algorithms.optimization.maml import MAML
from fastadapt.datasets.paths import resolve_data_dir
from fastadapt.datasets.text import clinc150_episode_splits, text_file_episode_splits
from fastadapt.errors import ConfigError, DataError
from fastadapt.nets.mlp import MLP
from fastadapt.tasks.samplers import ClassSplit
from fastadapt.text.classifiers import SupportLogisticRegression
from fastadapt.text.encoder import DEFAULT_ENCODER

TEXT_DATASETS = ("clinc150", "text")
TEXT_ALGORITHMS = ("protonet", "maml", "leo", "logistic")
#: Heads over the embeddings: ``identity``, ``residual-H`` (ProtoNet), ``linear``, ``mlp-H`` (MAML).
HEAD_HELP = "use identity or residual-H for protonet, linear or mlp-H for maml (H hidden units, e.g. mlp-256)"

# fmt: off
#: Presets per (algorithm, data set), chosen by short runs (400 steps, 5-way 1-shot) on CLINC150's meta-validation
#: domains: ProtoNet's head at Adam 1e-3 lost validation accuracy from the first validation on, at 1e-4 it held it;
#: MAML's MLP head (mlp-256, inner lr 0.5 or 2.0) lost accuracy as it trained, a linear head with inner lr 4.0 (the
#: embeddings have unit norm, so the support gradients are small) did not. LEO keeps its authors' released
#: configuration (as for --dataset embeddings). Step counts are CPU-sized: validation accuracy had stopped rising.
PRESETS: dict[tuple[str, str], dict[str, Any]] = {
    ("protonet", "clinc150"): dict(network="residual-256", query=10, eval_query=15, meta_batch_size=1, lr=1e-4,
                                   steps=1500, val_every=250, val_episodes=300),
    ("maml", "clinc150"): dict(network="linear", query=10, eval_query=15, meta_batch_size=4, inner_lr=4.0,
                               inner_steps=5, eval_inner_steps=10, lr=1e-3, steps=1500, val_every=250,
                               val_episodes=300),
    ("leo", "clinc150"): dict(query=15, eval_query=15, meta_batch_size=12, inner_lr=1.0, inner_steps=5, lr=1e-4,
                              steps=1000, val_every=250, val_episodes=300),
}
# fmt: on
for (_algorithm, _dataset), _preset in list(PRESETS.items()):
    PRESETS[(_algorithm, "text")] = _preset


class ResidualHead(nn.Module):
    """s * (x + W2 relu(W1 x + b1) + b2), with W2 and b2 starting at zero (the identity) and a learned scale s.

    s sets the softmax temperature of ProtoNet's squared distances (they scale by s^2); it starts at 3, as unit-norm
    sentence embeddings are at squared distances below 4 from each other and would give a near-uniform softmax."""

    def __init__(self, dim: int, hidden: int, scale: float = 3.0) -> None:
        super().__init__()
        self.inner = nn.Linear(dim, hidden)
        self.outer = nn.Linear(hidden, dim)
        nn.init.zeros_(self.outer.weight)
        nn.init.zeros_(self.outer.bias)
        self.scale = nn.Parameter(torch.tensor(float(scale)))

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * (x + self.outer(torch.relu(self.inner(x))))


def _hidden_units(network: str, prefix: str) -> int:
    try:
        hidden = int(network[len(prefix) :])
    except ValueError:
        hidden = 0
    if hidden < 1:
        raise ConfigError(f"--network {network}: the number of hidden units must be a positive integer; {HEAD_HELP}.")
    return hidden


def build_head(network: str, dim: int, ways: int | None) -> nn.Module:
    """The head named by ``network`` over ``dim``-dimensional embeddings; ``ways=None`` for an embedding head
    (ProtoNet), a number of outputs for a classifier head (MAML)."""
    if ways is None:
        if network == "identity":
            return nn.Identity()
        if network.startswith("residual-"):
            return ResidualHead(dim, _hidden_units(network, "residual-"))
    else:
        if network == "linear":
            return nn.Linear(dim, ways)
        if network.startswith("mlp-"):
            return MLP(dim, (_hidden_units(network, "mlp-"),), ways)
    raise ConfigError(f"unknown --network {network!r} for text embeddings; {HEAD_HELP}.")


def build_text_learner(config: Any, embedding_dim: int) -> MetaLearner:
    """The learner ``config`` (a :class:`fastadapt.config.Config`) names, over ``embedding_dim``-dimensional
    text embeddings: what ``build_algorithm`` must return for ``--dataset clinc150`` and ``--dataset text``."""
    algorithm = config.algorithm
    if algorithm == "protonet":
        return ProtoNet(build_head(config.network, embedding_dim, None))
    if algorithm == "maml":
        if config.train_ways and config.train_ways != config.ways:
            raise ConfigError("maml's classifier head has one output per way: --train-ways must equal --ways.")
        return MAML(
            build_head(config.network, embedding_dim, config.ways),
            inner_lr=config.inner_lr,
            inner_steps=config.inner_steps,
            eval_inner_steps=config.eval_inner_steps,
            first_order=config.first_order,
            strategy=config.strategy,
        )
    if algorithm == "leo":
        return LEO(
            embedding_dim,
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
    if algorithm == "logistic":
        return SupportLogisticRegression()
    raise ConfigError(
        f"--algorithm {algorithm} is not available on text embeddings; choose one of {', '.join(TEXT_ALGORITHMS)}."
    )


def text_load_splits(config: Any, progress: bool = True) -> dict[str, ClassSplit]:
    """Meta-train / meta-validation / meta-test splits of embeddings: what ``load_splits`` must return for
    ``--dataset clinc150`` (intents split by domain) and ``--dataset text --data-dir FILE`` (labels split at
    random with ``config.seed``, or by ``--split FOLDER`` of train.txt/val.txt/test.txt). The encoder is
    ``config.encoder`` (default all-MiniLM-L6-v2)."""
    encoder = getattr(config, "encoder", None) or DEFAULT_ENCODER
    if config.dataset == "clinc150":
        return clinc150_episode_splits(resolve_data_dir(config.data_dir), encoder, progress, config.device)
    if config.dataset == "text":
        if not config.data_dir:
            raise DataError("--dataset text needs --data-dir pointing at a .csv or .jsonl file of (text, label) rows.")
        split = None if config.split in (None, "", "vinyals", "random") else config.split
        return text_file_episode_splits(
            Path(config.data_dir), encoder, split, config.seed, progress=progress, device=config.device
        )
    raise ConfigError(f"{config.dataset!r} is not a text data set; choose one of {', '.join(TEXT_DATASETS)}.")


def embedding_dim_of(splits: dict[str, ClassSplit]) -> int:
    return int(splits["train"].images.shape[1])
