import pytest
import torch
import torch.nn.functional as F
from helpers import image_batch, meta_gradient, relative_error, sinusoid_mse_before_and_after
from torch import nn
from torch.func import functional_call

from fastadapt.algorithms.optimization.anil import ANIL
from fastadapt.engine.functional import parameters_of
from fastadapt.nets import MLP, Conv4Stride
from fastadapt.tasks.episodes import TaskBatch


def reference_anil_grads(model, batch, inner_lr, steps, first_order):
    """Plain autograd on the whole network, no feature caching: only head.* is updated in the inner loop."""
    theta = dict(model.named_parameters())
    total = 0.0
    for i in range(batch.num_tasks):
        head = {k: v for k, v in theta.items() if k.startswith("head.")}
        for _ in range(steps):
            logits = functional_call(model, {**theta, **head}, (batch.support_x[i],))
            grads = torch.autograd.grad(
                F.cross_entropy(logits, batch.support_y[i]), list(head.values()), create_graph=not first_order
            )
            head = {k: w - inner_lr * g for (k, w), g in zip(head.items(), grads)}
        logits = functional_call(model, {**theta, **head}, (batch.query_x[i],))
        total = total + F.cross_entropy(logits, batch.query_y[i]) / batch.num_tasks
    return dict(zip(theta, torch.autograd.grad(total, list(theta.values()))))


def test_inner_loop_leaves_the_body_untouched():
    torch.manual_seed(0)
    model = Conv4Stride(1, 8, 3).double()
    batch = image_batch()
    learner = ANIL(model, inner_lr=0.3, inner_steps=2)
    theta = parameters_of(model)
    fast = learner.adapt(batch.support_x[0], batch.support_y[0], 2, first_order=False)
    assert fast.keys() == theta.keys()
    for name in theta:
        if name.startswith("head."):
            assert not torch.equal(fast[name], theta[name]), name
        else:
            assert fast[name] is theta[name], name


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_meta_gradient_matches_plain_autograd_through_the_features(strategy, first_order):
    """Body gradient: through the support/query features only (first order: the query features only)."""
    torch.manual_seed(1)
    model = Conv4Stride(1, 8, 3).double()
    batch = image_batch()
    learner = ANIL(model, inner_lr=0.3, inner_steps=2, first_order=first_order, strategy=strategy)
    got = meta_gradient(learner, batch)
    expected = reference_anil_grads(model, batch, 0.3, 2, first_order)
    assert relative_error(expected, got) < 1e-10
    body = {k: v for k, v in got.items() if not k.startswith("head.")}
    assert all(g.abs().sum() > 0 for g in body.values())


def test_vmap_and_loop_agree_in_float32():
    torch.manual_seed(2)
    model = Conv4Stride(1, 16, 5)
    batch = image_batch(tasks=4, ways=5, shots=1, query=1, size=28, dtype=torch.float32)
    loop = meta_gradient(ANIL(model, 0.4, 2, strategy="loop"), batch)
    vmapped = meta_gradient(ANIL(model, 0.4, 2, strategy="vmap"), batch)
    assert relative_error(loop, vmapped) < 1e-4
    torch.testing.assert_close(
        ANIL(model, 0.4, 2, strategy="loop").predict(batch), ANIL(model, 0.4, 2, strategy="vmap").predict(batch)
    )


def test_head_must_exist_and_be_the_last_module():
    with pytest.raises(ValueError, match="not a submodule"):
        ANIL(MLP(1, (8,), 1))  # an MLP's last layer is "2.", not "head."

    class HeadNotLast(nn.Module):
        def __init__(self):
            super().__init__()
            self.head, self.out = nn.Linear(2, 2), nn.Linear(2, 2)

        def forward(self, x):
            return self.out(self.head(x))

    x = torch.randn(1, 4, 2)
    with pytest.raises(ValueError, match="last module"):
        ANIL(HeadNotLast()).meta_loss(TaskBatch(x, x, x, x, None))


def test_anil_meta_training_lowers_post_adaptation_loss_on_sinusoids():
    torch.manual_seed(0)
    learner = ANIL(MLP(1, (40, 40), 1), inner_lr=0.1, inner_steps=1, eval_inner_steps=5, head="4.", strategy="vmap")
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
    before, after = sinusoid_mse_before_and_after(learner, optimizer)
    assert after < 0.5 * before  # measured: 4.06 -> 0.84
