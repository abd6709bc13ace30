"""Per-episode logistic regression, cosine prototypes and out-of-scope thresholds, against references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import vector_batch

from fastadapt.text.classifiers import (
    choose_threshold,
    cosine_prototype_scores,
    fit_logistic_regression,
    oos_metrics,
)


def objective_gradient(x, y, ways, weights, biases, C):
    """Gradient of 1/2 ||W||^2 + C sum CE by autograd in float64, at the fitted point."""
    w, b = weights.clone().requires_grad_(), biases.clone().requires_grad_()
    logits = x @ w.T + b
    loss = C * F.cross_entropy(logits, y, reduction="sum") + 0.5 * w.square().sum()
    return torch.autograd.grad(loss, (w, b))


@pytest.mark.parametrize("C", [0.1, 10.0])
def test_logistic_regression_reaches_the_optimum_of_every_episode(C):
    batch = vector_batch(tasks=3, ways=4, shots=3, dim=6)
    weights, biases = fit_logistic_regression(batch.support_x, batch.support_y, 4, C=C, max_iter=200)
    for t in range(3):  # each episode's own objective is stationary at its solution (it is strictly convex)
        gw, gb = objective_gradient(batch.support_x[t], batch.support_y[t], 4, weights[t], biases[t], C)
        assert gw.abs().max() < 1e-4 and gb.abs().max() < 1e-4  # (the gradient at the start is ~C)
    alone, _ = fit_logistic_regression(batch.support_x[1:2], batch.support_y[1:2], 4, C=C, max_iter=200)
    assert torch.allclose(alone[0], weights[1], atol=1e-4)  # batching does not couple the episodes


def test_logistic_regression_matches_scikit_learn():
    linear_model = pytest.importorskip("sklearn.linear_model")
    batch = vector_batch(tasks=1, ways=3, shots=4, dim=5, seed=3)
    x, y = batch.support_x[0].numpy(), batch.support_y[0].numpy()
    weights, biases = fit_logistic_regression(batch.support_x, batch.support_y, 3, C=2.0, max_iter=300)
    reference = linear_model.LogisticRegression(C=2.0, tol=1e-10, max_iter=10_000).fit(x, y)
    # softmax is invariant to a common shift of the biases; scikit-learn's are centred the same way by the
    # penalty on W only, so compare probabilities
    ours = torch.softmax(batch.query_x[0] @ weights[0].T + biases[0], -1).numpy()
    assert np.allclose(ours, reference.predict_proba(batch.query_x[0].numpy()), atol=1e-5)


def test_cosine_prototypes_by_hand():
    support = torch.tensor([[[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, 4.0]]])
    labels = torch.tensor([[0, 0, 1, 1]])
    query = torch.tensor([[[1.0, 1.0], [0.0, -5.0]]])
    scores = cosine_prototype_scores(support, labels, 2, query)
    s = 2**-0.5
    assert torch.allclose(scores, torch.tensor([[[s, s], [0.0, -1.0]]]), atol=1e-6)


def test_threshold_and_oos_metrics_by_hand():
    in_scope = np.array([0.9, 0.8, 0.35, 0.7])
    oos = np.array([0.3, 0.4, 0.85])
    threshold = choose_threshold(in_scope, oos)
    # rejecting below just above 0.4 catches 2 of 3 OOS and 1 in-scope: F1 = 4/6; so does rejecting everything
    # below just above 0.85 (6/9), and the tie goes to the lower threshold
    assert 0.4 < threshold < 0.41
    result = oos_metrics(np.array([1, 2, 0, 3]), np.array([1, 2, 0, 0]), in_scope, oos, threshold)
    assert result.in_scope_accuracy == pytest.approx(2 / 4)  # query 3 wrong, query 2 right but rejected
    assert result.oos_recall == pytest.approx(2 / 3) and result.oos_precision == pytest.approx(2 / 3)
    assert result.oos_f1 == pytest.approx(2 / 3)
    nothing = oos_metrics(np.zeros(4), np.zeros(4), in_scope, oos, threshold=0.0)
    assert nothing.oos_recall == 0 and nothing.oos_f1 == 0 and nothing.in_scope_accuracy == 1
