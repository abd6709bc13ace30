"""Matching Networks (Vinyals, Blundell, Lillicrap, Kavukcuoglu & Wierstra, NeurIPS 2016).

A query is labelled by attention over the support set, eqs. (1)-(2)::

    y_hat = sum_i a(x_hat, x_i) y_i,        a(x_hat, x_i) = softmax_i(c(f(x_hat), g(x_i)))

with c the cosine similarity and y_i one-hot labels, so y_hat is a distribution over the task's classes.
The predictions are its logarithm, log y_hat (clamped away from 0), and the loss is their negative
log-likelihood.

Deviation, off by default (``cosine_scale=None``): with ``cosine_scale=s`` the similarities are multiplied
by a learned scalar initialised to s before the softmax, ``a = softmax_i(s * c(f(x_hat), g(x_i)))``. On
ReLU features cosines lie in [0, 1], so the plain softmax over 5 support examples cannot put more than
e / (e + 4) ~ 0.40 on one of them: the loss saturates early and training stalls (88.5% on Omniglot 5-way
1-shot here, docs/results.md). A learned scale (a temperature, as in Oreshkin et al.'s TADAM, 2018)
removes that bound; the Omniglot preset turns it on.

Without full context embeddings, f = g = the encoder. With ``fce=True`` (appendix A):

- g embeds each support example in the context of the whole support set with a bidirectional LSTM over
  the encoder outputs g'(x_i), A.2: ``g(x_i, S) = h_fwd_i + h_bwd_i + g'(x_i)``;
- f reads the support set with an attention LSTM run for K steps on the query embedding f'(x_hat), A.1::

      h_hat_k, c_k = LSTM(f'(x_hat), [h_{k-1}, r_{k-1}], c_{k-1})
      h_k = h_hat_k + f'(x_hat)
      r_{k-1} = sum_i softmax_i(h_{k-1}^T g(x_i)) g(x_i)

  starting from h_0 = c_0 = 0, and f(x_hat, S) = h_K.

f' and g' are the same encoder. All tasks of a meta-batch go through the encoder in one pass and through
the LSTMs as one batch (tasks as the LSTM batch, the support set as its sequence).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastadapt.algorithms.base import MetaLearner, MetaOutput
from fastadapt.algorithms.metric.common import embed_episodes
from fastadapt.algorithms.registry import Algorithm, register
from fastadapt.datasets import input_features
from fastadapt.errors import ConfigError
from fastadapt.nets import build_network
from fastadapt.options import MethodOptions, option
from fastadapt.tasks.episodes import TaskBatch

#: Probabilities are clamped to this before the logarithm, so a class with no attention gives a finite loss.
MIN_PROBABILITY = 1e-8


def cosine_attention(query: Tensor, support: Tensor, scale: Tensor | float = 1.0) -> Tensor:
    """a(x_hat, x_i) of eq. (2), cosines times ``scale``: (tasks, q, dim), (tasks, n, dim) -> (tasks, q, n),
    rows sum to 1."""
    similarity = F.normalize(query, dim=-1) @ F.normalize(support, dim=-1).transpose(1, 2)
    return (scale * similarity).softmax(-1)


def label_log_probabilities(attention: Tensor, support_y: Tensor, ways: int) -> Tensor:
    """log y_hat of eq. (1): attention (tasks, q, n), labels (tasks, n) -> (tasks, q, ways)."""
    one_hot = F.one_hot(support_y, ways).to(attention.dtype)
    return (attention @ one_hot).clamp_min(MIN_PROBABILITY).log()


class AttentionLSTM(nn.Module):
    """f of appendix A.1: an LSTM whose recurrent input is [h_{k-1}, r_{k-1}] (2 * dim) while its state
    h, c has ``dim`` units, so its gates are one linear map of [f'(x_hat), h_{k-1}, r_{k-1}]."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gates = nn.Linear(3 * dim, 4 * dim)

    def forward(self, query: Tensor, support: Tensor, steps: int) -> Tensor:
        """query f'(x_hat): (tasks, q, dim); support g(x_i): (tasks, n, dim) -> f(x_hat, S): (tasks, q, dim)."""
        h = torch.zeros_like(query)
        c = torch.zeros_like(query)
        for _ in range(steps):
            read = (h @ support.transpose(1, 2)).softmax(-1) @ support  # r_{k-1}
            i, f, g, o = self.gates(torch.cat([query, h, read], -1)).chunk(4, -1)
            c = f.sigmoid() * c + i.sigmoid() * g.tanh()
            h = o.sigmoid() * c.tanh() + query  # h_k = h_hat_k + f'(x_hat)
        return h


class MatchingNet(MetaLearner):
    supports_regression = False

    def __init__(
        self,
        encoder: nn.Module,
        embedding_dim: int,
        fce: bool = False,
        fce_steps: int = 5,
        cosine_scale: float | None = None,
    ) -> None:
        """``embedding_dim``: size of the encoder's (flattened) output, the LSTMs' width with ``fce``.
        ``fce_steps``: K, the attention LSTM's processing steps (the paper does not give its value).
        ``cosine_scale``: initial value of a learned scale on the cosines (None: the paper's plain cosine)."""
        super().__init__()
        if fce and fce_steps < 1:
            raise ValueError(f"fce_steps must be at least 1, not {fce_steps}")
        if cosine_scale is not None and cosine_scale <= 0:
            raise ValueError(f"cosine_scale must be positive (or None for none), not {cosine_scale}")
        self.cosine_scale = nn.Parameter(torch.tensor(float(cosine_scale))) if cosine_scale is not None else None
        self.encoder = encoder
        self.embedding_dim = embedding_dim
        self.fce = fce
        self.fce_steps = fce_steps
        self.support_lstm = nn.LSTM(embedding_dim, embedding_dim, batch_first=True, bidirectional=True) if fce else None
        self.query_lstm = AttentionLSTM(embedding_dim) if fce else None

    def embed(self, batch: TaskBatch) -> tuple[Tensor, Tensor]:
        """g(x_i, S) for the support set and f(x_hat, S) for the queries: (tasks, n, dim), (tasks, q, dim)."""
        support, query = embed_episodes(self.encoder, batch)
        support, query = support.flatten(2), query.flatten(2)
        if not self.fce:
            return support, query
        forward, backward = self.support_lstm(support)[0].chunk(2, -1)
        support = forward + backward + support  # A.2
        return support, self.query_lstm(query, support, self.fce_steps)  # A.1

    def predict(self, batch: TaskBatch) -> Tensor:
        """log y_hat, (tasks, query, ways); its argmax is the predicted class."""
        support, query = self.embed(batch)
        scale = 1.0 if self.cosine_scale is None else self.cosine_scale
        return label_log_probabilities(cosine_attention(query, support, scale), batch.support_y, batch.ways)

    def meta_loss(self, batch: TaskBatch) -> MetaOutput:
        log_probs = self.predict(batch)
        loss = F.nll_loss(log_probs.reshape(-1, batch.ways), batch.query_y.reshape(-1))
        return MetaOutput(loss, log_probs)


@dataclass
class MatchingOptions(MethodOptions):
    fce: bool = option(False, "full context embeddings (bidirectional LSTM over the support set, attention LSTM)")
    cosine_scale: float | None = option(
        None,
        "initial value of a learned scale on the cosines (Omniglot preset 10; 0 or none: the paper's plain cosine)",
    )

    def validate(self) -> None:
        if self.cosine_scale is not None and not self.cosine_scale >= 0:
            raise ConfigError(f"--cosine-scale must be positive, or 0 for none (got {self.cosine_scale}).")


def build(config: Any) -> MatchingNet:
    features = input_features(config)  # vectors (text embeddings): a head over them, of their own size
    encoder = build_network(config.network, config.channels, config.image_size, None, "running", features)
    encoder = encoder.to(memory_format=torch.channels_last)
    dim = features or getattr(encoder, "out_features", 64)
    return MatchingNet(encoder, dim, fce=config.fce, cosine_scale=config.cosine_scale or None)


#: Over sentence embeddings (clinc150, text; docs/text.md): ProtoNet's text preset (a residual head that starts as the
#: identity, Adam 1e-4, 1500 episodes), not tuned separately; no FCE; the learned scale on the cosines from 10.
TEXT_PRESET = dict(network="residual-256", query=10, eval_query=15, meta_batch_size=1, lr=1e-4, steps=1500,
                   val_every=250, val_episodes=300, cosine_scale=10.0)  # fmt: skip

register(
    Algorithm(
        name="matching",
        listing=11,
        family="metric",
        summary="Matching Networks (Vinyals et al. 2016): attention over the support set; --fce",
        options=MatchingOptions,
        build=build,
        # Vinyals et al. 2016 train on episodes shaped like the test ones; the paper gives no optimiser settings, so
        # Adam 1e-3 halved every 2000 episodes as for ProtoNet. No FCE on Omniglot (as in the paper). Deviation: a
        # learned scale on the cosines, starting at 10.
        presets={
            "omniglot": dict(
                network="conv4",
                query=5,
                eval_query=15,
                meta_batch_size=1,
                lr=1e-3,
                lr_decay_every=2000,
                steps=5000,
                val_every=500,
                cosine_scale=10.0,
            ),
            # Ravi & Larochelle's Matching Networks baseline (config/baselines/train-matching-net.lua,
            # github.com/twitter-research/meta-learning-lstm), whose numbers on their split are the ones cited: Adam
            # 1e-4, 75000 episodes shaped like the test ones (5-way, 15 queries), no FCE (their FCE row: --fce).
            # Deviation, as on Omniglot: the learned scale on the cosines. Not expressible here: the dropout in their
            # embedding (useDropout = true).
            "mini-imagenet": dict(
                network="conv4",
                query=15,
                meta_batch_size=1,
                lr=1e-4,
                steps=75000,
                val_every=1000,
                cosine_scale=10.0,
            ),
            "clinc150": TEXT_PRESET,
            "text": TEXT_PRESET,
        },
        supports_regression=False,
    )
)
