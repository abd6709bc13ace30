"""Logistic regression fitted on each episode's support set: the few-shot baseline on fixed features.

Tian, Wang, Krishnan, Tenenbaum & Isola, "Rethinking Few-Shot Image Classification: a Good Embedding Is All You
Need?", ECCV 2020, sec. 3: on a fixed embedding, a linear classifier fitted on each test episode's support set is a
strong baseline for meta-learners. For each episode, on the L2-normalised support vectors x_i with labels y_i::

    W, b = argmin_{W, b}  1/2 ||W||^2 + C * sum_i CE(W x_i + b, y_i)        (scikit-learn's objective; b unpenalised)
    p(y = n | x) = softmax_n(W x + b)

solved by L-BFGS for all episodes of a batch at once (fastadapt.text.classifiers.fit_logistic_regression: the
episodes share no parameters, so the minimiser of their sum is each episode's own). Nothing is meta-learned:
``fastadapt train --algorithm logistic`` takes one step (which changes nothing), validates and meta-tests, so that the
baseline is scored by the same command, on the same episodes, as the meta-learners it is compared with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from fastadapt.algorithms.base import MetaLearner, MetaOutput
from fastadapt.algorithms.registry import Algorithm, register
from fastadapt.datasets import DATASETS
from fastadapt.errors import ConfigError
from fastadapt.options import MethodOptions, option
from fastadapt.tasks.episodes import TaskBatch
from fastadapt.text.classifiers import fit_logistic_regression, logistic_regression_logits


class SupportLogisticRegression(MetaLearner):
    """Per-episode logistic regression on the support vectors (L2-normalised first unless ``normalize=False``); it
    has no meta-parameters, so training only scores the query set (:meth:`MetaLearner.meta_backward` has nothing to
    backpropagate)."""

    supports_regression = False

    def __init__(self, C: float = 1.0, normalize: bool = True, max_iter: int = 100) -> None:
        super().__init__()
        if not C > 0:
            raise ConfigError(f"--logistic-c must be positive (got {C}).")
        self.C, self.normalize, self.max_iter = C, normalize, max_iter

    def features(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=-1) if self.normalize else x

    def predict(self, batch: TaskBatch) -> Tensor:
        support, query = self.features(batch.support_x), self.features(batch.query_x)
        weights, biases = fit_logistic_regression(support, batch.support_y, batch.ways, self.C, self.max_iter)
        return logistic_regression_logits(query, weights, biases)

    def meta_loss(self, batch: TaskBatch) -> MetaOutput:
        logits = self.predict(batch)
        return MetaOutput(F.cross_entropy(logits.flatten(0, 1), batch.query_y.flatten()), logits)

    def extra_repr(self) -> str:
        return f"C={self.C}, normalize={self.normalize}, max_iter={self.max_iter}"


@dataclass
class LogisticOptions(MethodOptions):
    logistic_c: float = option(10.0, "C, the inverse strength of the L2 penalty on the weights (scikit-learn's C)")
    logistic_normalize: bool = option(True, "L2-normalise the vectors before fitting (cosine geometry)")
    logistic_max_iter: int = option(100, "L-BFGS iterations per batch of episodes")

    def validate(self) -> None:
        if not self.logistic_c > 0:
            raise ConfigError(f"--logistic-c must be positive (got {self.logistic_c}).")
        if self.logistic_max_iter < 1:
            raise ConfigError(f"--logistic-max-iter must be at least 1 (got {self.logistic_max_iter}).")


def build(config: Any) -> SupportLogisticRegression:
    if DATASETS[config.dataset].inputs != "vectors":
        vectors = ", ".join(name for name, info in DATASETS.items() if info.inputs == "vectors")
        raise ConfigError(f"--algorithm logistic fits feature vectors ({vectors}), not {config.dataset}.")
    return SupportLogisticRegression(config.logistic_c, config.logistic_normalize, config.logistic_max_iter)


#: One step (nothing to learn), then the data set's validation and test episodes. C = 10: chosen on CLINC150's
#: meta-validation domains from 0.1, 1, 10, 100 at 1-shot (5-shot chose 100; docs/text.md).
TEXT_PRESET = dict(logistic_c=10.0, query=15, eval_query=15, steps=1, val_every=1, val_episodes=300)

register(
    Algorithm(
        name="logistic",
        listing=90,
        family="baseline",
        summary="logistic regression fitted on each episode's support set (Tian et al. 2020); nothing meta-learned",
        options=LogisticOptions,
        build=build,
        # fixed image features: LEO's episodes (its preset for them), the default C
        presets={"clinc150": TEXT_PRESET, "text": TEXT_PRESET, "embeddings": dict(TEXT_PRESET, logistic_c=1.0)},
        supports_regression=False,
    )
)
