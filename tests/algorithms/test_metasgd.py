import pytest
import torch
import torch.nn.functional as F
from helpers import image_batch, meta_gradient, relative_error, sinusoid_mse_before_and_after
from torch import nn

from fastadapt.algorithms.optimization.maml import MAML
from fastadapt.algorithms.optimization.metasgd import MetaSGD
from fastadapt.engine.functional import call, parameters_of
from fastadapt.nets import MLP, Conv4Stride
from fastadapt.tasks.episodes import TaskBatch


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_learning_rates_get_gradients_and_constant_alpha_gives_mamls_meta_gradient(strategy, first_order):
    torch.manual_seed(0)
    model = Conv4Stride(1, 8, 3).double()
    batch = image_batch()
    metasgd = MetaSGD(model, inner_lr=0.3, inner_steps=2, first_order=first_order, strategy=strategy)
    got = meta_gradient(metasgd, batch)
    for name, alpha in metasgd.inner_lrs.items():
        assert alpha.shape == parameters_of(model)[name.replace("-", ".")].shape
        assert alpha.grad is not None and alpha.grad.abs().sum() > 0, name
    expected = meta_gradient(MAML(model, inner_lr=0.3, inner_steps=2, first_order=first_order), batch)
    assert relative_error(expected, got) < 1e-10


def test_one_step_learning_rate_gradient_matches_closed_form():
    """For one inner step, dL_query(theta - alpha o g) / d alpha = -g o grad L_query(theta')."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    g = torch.Generator().manual_seed(2)
    batch = TaskBatch(
        torch.randn(2, 6, 3, generator=g, dtype=torch.float64),
        torch.randint(0, 2, (2, 6), generator=g),
        torch.randn(2, 4, 3, generator=g, dtype=torch.float64),
        torch.randint(0, 2, (2, 4), generator=g),
        2,
    )
    learner = MetaSGD(model, inner_lr=0.5, inner_steps=1)
    with torch.no_grad():  # a non-constant alpha
        for alpha in learner.inner_lrs.values():
            alpha.uniform_(0.1, 0.9)
    learner.meta_loss(batch).loss.backward()
    theta, alphas = parameters_of(model), learner.inner_learning_rate()
    expected = {k: torch.zeros_like(v) for k, v in theta.items()}
    for i in range(batch.num_tasks):
        support = F.cross_entropy(call(model, theta, batch.support_x[i]), batch.support_y[i])
        grads = dict(zip(theta, torch.autograd.grad(support, list(theta.values()))))
        fast = {k: (theta[k] - alphas[k] * grads[k]).detach().requires_grad_() for k in theta}
        query = F.cross_entropy(call(model, fast, batch.query_x[i]), batch.query_y[i])
        for k, q in zip(fast, torch.autograd.grad(query, list(fast.values()))):
            expected[k] -= grads[k] * q / batch.num_tasks
    for k in theta:
        torch.testing.assert_close(alphas[k].grad, expected[k])


def test_metasgd_meta_training_lowers_post_adaptation_loss_on_sinusoids():
    torch.manual_seed(0)
    learner = MetaSGD(MLP(1, (40, 40), 1), inner_lr=0.01, inner_steps=1, strategy="vmap")
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
    before, after = sinusoid_mse_before_and_after(learner, optimizer)
    assert after < 0.5 * before  # measured: 4.08 -> 1.00 (MAML with these settings: 2.48)
