import pytest
import torch
from helpers import sinusoid_mse_before_and_after

from fastadapt.algorithms import MAML
from fastadapt.datasets.sinusoid import SinusoidTasks
from fastadapt.nets import MLP


def test_maml_meta_training_lowers_post_adaptation_loss_on_sinusoids():
    torch.manual_seed(0)
    learner = MAML(MLP(1, (40, 40), 1), inner_lr=0.01, inner_steps=1, strategy="vmap")
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
    before, after = sinusoid_mse_before_and_after(learner, optimizer)
    assert after < 0.7 * before


def test_adaptation_lowers_support_loss_and_more_steps_fit_better():
    torch.manual_seed(0)
    learner = MAML(MLP(1, (40, 40), 1), inner_lr=0.01, inner_steps=1)
    batch = SinusoidTasks(shots=10, query=10, seed=3).sample(20)
    support_as_query = type(batch)(batch.support_x, batch.support_y, batch.support_x, batch.support_y, None)
    mse = [(learner.predict(support_as_query, steps=k) - batch.support_y).square().mean().item() for k in (0, 1, 10)]
    assert mse[0] > mse[1] > mse[2]


@pytest.mark.parametrize("strategy, vmap_chunk", [("loop", 8), ("vmap", 3), ("vmap", 2), ("vmap", 0)])
def test_meta_backward_gives_the_meta_gradient_task_by_task(strategy, vmap_chunk):
    """The per-task backward of the loop strategy, and vmap run chunk by chunk (3 + 1 and 2 + 2 tasks) or
    all at once (0), equal one backward of the mean meta-loss, for second-order MAML and Meta-SGD (whose inner rates are
    parameters too), and return the same loss."""
    from fastadapt.algorithms import MetaSGD

    batch = SinusoidTasks(shots=5, query=5, seed=3).sample(4).to(torch.float64)
    for cls in (MAML, MetaSGD):
        torch.manual_seed(0)
        model = MLP(1, (8, 8), 1).double()
        learner = cls(model, inner_lr=0.05, inner_steps=2, strategy=strategy, vmap_chunk=vmap_chunk)
        loss = learner.meta_loss(batch).loss
        expected = torch.autograd.grad(loss, list(learner.parameters()))
        learner.zero_grad()
        output = learner.meta_backward(batch)
        torch.testing.assert_close(output.loss, loss.detach())
        assert not output.loss.requires_grad and output.predictions.shape == (4, 5, 1)
        for p, g in zip(learner.parameters(), expected):
            torch.testing.assert_close(p.grad, g)


def test_vmap_chunk_must_not_be_negative():
    from fastadapt.errors import ConfigError

    with pytest.raises(ConfigError, match="--vmap-chunk"):
        MAML(MLP(1, (8,), 1), strategy="vmap", vmap_chunk=-1)


def test_default_vmap_chunk_is_smaller_for_several_second_order_steps():
    """Their graph grows with the steps; first order frees each step's graph."""
    net = MLP(1, (8,), 1)
    assert MAML(net, inner_steps=1, strategy="vmap").tasks_per_vmap_call() == 8
    assert MAML(net, inner_steps=5, strategy="vmap").tasks_per_vmap_call() == 4
    assert MAML(net, inner_steps=5, first_order=True, strategy="vmap").tasks_per_vmap_call() == 8
    assert MAML(net, inner_steps=5, strategy="vmap", vmap_chunk=16).tasks_per_vmap_call() == 16
    doa = MAML(net, inner_steps=5, first_order_steps=10, strategy="vmap")  # MAML++: first order until step 10
    assert doa.tasks_per_vmap_call() == 8
    doa.training_step = 10
    assert doa.tasks_per_vmap_call() == 4
