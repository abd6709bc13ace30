"""Classifiers fitted on a support set of embeddings, batched over episodes, and out-of-scope thresholds.

- :func:`fit_logistic_regression`: multinomial logistic regression on each episode's support set, the
  standard few-shot baseline on fixed features (Tian et al., "Rethinking Few-Shot Image Classification",
  ECCV 2020). It minimises scikit-learn's objective, for each episode independently::

      1/2 ||W||^2 + C * sum_i CE(W x_i + b, y_i)

  (the bias is not penalised), with L-BFGS on the sum over episodes: the episodes share no parameters, so
  the sum's minimiser is every episode's own.
  ``--algorithm logistic`` (fastadapt.algorithms.baseline.logistic) is it as a method with nothing to
  meta-learn, scored on the same episodes as the meta-learners.
- :func:`cosine_prototype_scores`: cosine similarity of each query to each class mean (Snell et al.
  2017, eq. 1-2, with cosine similarity in place of the squared distance).
- :func:`choose_threshold` / :func:`oos_metrics`: out-of-scope detection by a threshold on a confidence
  score (Larson et al. 2019, the "oos-threshold" approach): a query whose best score is below it is
  declared out of scope.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fastadapt.errors import ConfigError


def fit_logistic_regression(
    support_x: Tensor, support_y: Tensor, ways: int, C: float = 1.0, max_iter: int = 100
) -> tuple[Tensor, Tensor]:
    """Weights (tasks, ways, D) and biases (tasks, ways) of each episode's logistic regression (module
    docstring) on ``support_x`` (tasks, n, D) with labels ``support_y`` (tasks, n) in ``0..ways-1``."""
    if C <= 0:
        raise ConfigError(f"the logistic regression's C must be positive (got {C}).")
    tasks, _, dim = support_x.shape
    x = support_x.detach()
    weights = torch.zeros(tasks, ways, dim, dtype=x.dtype, device=x.device, requires_grad=True)
    biases = torch.zeros(tasks, ways, dtype=x.dtype, device=x.device, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weights, biases], lr=1, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
        history_size=20, line_search_fn="strong_wolfe",
    )  # fmt: skip

    def objective() -> Tensor:
        optimizer.zero_grad()
        logits = torch.einsum("tnd,twd->tnw", x, weights) + biases.unsqueeze(1)
        loss = C * F.cross_entropy(logits.flatten(0, 1), support_y.flatten(), reduction="sum")
        loss = loss + 0.5 * weights.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(objective)
    return weights.detach(), biases.detach()


def logistic_regression_logits(x: Tensor, weights: Tensor, biases: Tensor) -> Tensor:
    """(tasks, m, D) inputs -> (tasks, m, ways) logits."""
    return torch.einsum("tmd,twd->tmw", x, weights) + biases.unsqueeze(1)


def cosine_prototype_scores(support_x: Tensor, support_y: Tensor, ways: int, query_x: Tensor) -> Tensor:
    """(tasks, m, ways) cosine similarity of each query to each class's mean support embedding."""
    one_hot = F.one_hot(support_y, ways).to(support_x.dtype)  # (tasks, n, ways)
    centres = one_hot.transpose(1, 2) @ support_x / one_hot.sum(1).unsqueeze(-1)  # class means, (tasks, ways, D)
    return F.normalize(query_x, dim=-1) @ F.normalize(centres, dim=-1).transpose(1, 2)


@dataclass
class OOSResult:
    """Out-of-scope detection on a test set, as in Larson et al. 2019 (Section 5): in-scope accuracy counts a
    rejected in-scope query as wrong; recall, precision and F1 are of the out-of-scope class."""

    threshold: float
    in_scope_accuracy: float
    oos_recall: float
    oos_precision: float
    oos_f1: float

    def as_dict(self) -> dict[str, float]:
        return dict(vars(self))


def _oos_counts(in_scores: np.ndarray, oos_scores: np.ndarray, threshold: float) -> tuple[int, int, int]:
    """True positives, false positives, false negatives of the out-of-scope class at ``threshold``."""
    tp = int((oos_scores < threshold).sum())
    fp = int((in_scores < threshold).sum())
    return tp, fp, len(oos_scores) - tp


def _f1(tp: int, fp: int, fn: int) -> float:
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def choose_threshold(in_scope_confidence: np.ndarray, oos_confidence: np.ndarray) -> float:
    """The threshold (below it: out of scope) that maximises the out-of-scope F1 on a validation set of
    in-scope and out-of-scope queries; ties go to the lowest threshold (fewest rejections)."""
    in_scores, oos_scores = np.asarray(in_scope_confidence), np.asarray(oos_confidence)
    candidates = np.unique(np.concatenate([in_scores, oos_scores]))
    # a threshold just above each observed score, and one that rejects nothing
    thresholds = np.concatenate([[candidates[0]], np.nextafter(candidates, np.inf)])
    f1s = [_f1(*_oos_counts(in_scores, oos_scores, t)) for t in thresholds]
    return float(thresholds[int(np.argmax(f1s))])


def oos_metrics(
    predictions: np.ndarray,
    labels: np.ndarray,
    in_scope_confidence: np.ndarray,
    oos_confidence: np.ndarray,
    threshold: float,
) -> OOSResult:
    """In-scope accuracy (predicted class right and not rejected) and the out-of-scope class's recall,
    precision and F1 on a test set, with queries rejected below ``threshold``."""
    accepted = np.asarray(in_scope_confidence) >= threshold
    in_scope_accuracy = float(((np.asarray(predictions) == np.asarray(labels)) & accepted).mean())
    tp, fp, fn = _oos_counts(np.asarray(in_scope_confidence), np.asarray(oos_confidence), threshold)
    recall = tp / (tp + fn) if tp + fn else 0.0
    precision = tp / (tp + fp) if tp + fp else 0.0
    return OOSResult(threshold, in_scope_accuracy, recall, precision, _f1(tp, fp, fn))
