"""The meta-gradient of the functional core, checked against independent computations."""

import pytest
import torch
import torch.nn.functional as F
from helpers import image_batch, meta_gradient, relative_error
from torch import nn
from torch.func import functional_call

from fastadapt.algorithms import MAML
from fastadapt.engine.functional import call, gradients, inner_sgd, map_tasks, parameters_of
from fastadapt.engine.layers import EpisodeBatchNorm2d
from fastadapt.nets import Conv4, Conv4Stride
from fastadapt.tasks.episodes import TaskBatch


def reference_meta_gradient(model, batch, inner_lr, steps, first_order=False):
    """Plain per-task loop with torch.autograd.grad(create_graph=True), written without the core."""
    names = [n for n, _ in model.named_parameters()]
    theta = [p for _, p in model.named_parameters()]
    total = 0.0
    for i in range(batch.num_tasks):
        fast = list(theta)
        for _ in range(steps):
            logits = functional_call(model, dict(zip(names, fast)), (batch.support_x[i],))
            loss = F.cross_entropy(logits, batch.support_y[i])
            grads = torch.autograd.grad(loss, fast, create_graph=not first_order)
            fast = [w - inner_lr * g for w, g in zip(fast, grads)]
        logits = functional_call(model, dict(zip(names, fast)), (batch.query_x[i],))
        total = total + F.cross_entropy(logits, batch.query_y[i])
    return torch.autograd.grad(total / batch.num_tasks, theta)


@pytest.mark.parametrize("strategy", ["loop", "vmap", "fold"])
@pytest.mark.parametrize("net", ["stride", "pool"])
def test_second_order_meta_gradient_matches_plain_autograd_loop(strategy, net):
    torch.manual_seed(0)
    model = (Conv4Stride(1, 8, 3) if net == "stride" else Conv4(1, 8, 3, norm="episode", image_size=16)).double()
    batch = image_batch(size=16 if net == "pool" else 12)
    learner = MAML(model, inner_lr=0.3, inner_steps=2, strategy=strategy)
    expected = reference_meta_gradient(model, batch, 0.3, 2)
    assert relative_error(expected, meta_gradient(learner, batch)) < 1e-10


def test_vmap_and_loop_agree_in_float32():
    torch.manual_seed(1)
    model = Conv4Stride(1, 16, 5)
    batch = image_batch(tasks=4, ways=5, shots=1, query=1, size=28, dtype=torch.float32)
    loop = meta_gradient(MAML(model, 0.4, 1, strategy="loop"), batch)
    vmapped = meta_gradient(MAML(model, 0.4, 1, strategy="vmap"), batch)
    assert relative_error(loop, vmapped) < 1e-4


def test_meta_gradient_matches_finite_differences():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    g = torch.Generator().manual_seed(3)
    batch = TaskBatch(
        torch.randn(2, 4, 3, generator=g, dtype=torch.float64),
        torch.tensor([[0, 1, 0, 1]] * 2),
        torch.randn(2, 4, 3, generator=g, dtype=torch.float64),
        torch.tensor([[1, 0, 1, 0]] * 2),
        2,
    )
    learner = MAML(model, inner_lr=0.5, inner_steps=2)
    analytic = meta_gradient(learner, batch)
    direction = [torch.randn_like(p, dtype=torch.float64) for p in model.parameters()]
    eps = 1e-6

    def meta_loss_at(sign):
        with torch.no_grad():
            for p, d in zip(model.parameters(), direction):
                p.add_(sign * eps * d)
        value = learner.meta_loss(batch).loss.item()
        with torch.no_grad():
            for p, d in zip(model.parameters(), direction):
                p.sub_(sign * eps * d)
        return value

    numeric = (meta_loss_at(1) - meta_loss_at(-1)) / (2 * eps)
    projected = sum((a * d).sum() for a, d in zip(analytic.values(), direction)).item()
    assert projected == pytest.approx(numeric, rel=1e-6)
    first_order = meta_gradient(MAML(model, 0.5, 2, first_order=True), batch)
    fo_projected = sum((a * d).sum() for a, d in zip(first_order.values(), direction)).item()
    assert abs(fo_projected - numeric) > 1e-4  # the approximation really differs from the true gradient


@pytest.mark.parametrize("strategy", ["loop", "vmap", "fold"])
def test_first_order_drops_the_second_order_term(strategy):
    """FOMAML's meta-gradient is the query gradient at the adapted weights, nothing more."""
    torch.manual_seed(3)
    model = Conv4Stride(1, 8, 3).double()
    batch = image_batch()
    learner = MAML(model, inner_lr=0.3, inner_steps=2, first_order=True, strategy=strategy)
    got = meta_gradient(learner, batch)
    expected = [torch.zeros_like(p) for p in model.parameters()]
    for i in range(batch.num_tasks):
        fast = learner.adapt(batch.support_x[i], batch.support_y[i], 2, first_order=True)
        fast = {k: v.detach().requires_grad_() for k, v in fast.items()}
        loss = F.cross_entropy(call(model, fast, batch.query_x[i]), batch.query_y[i]) / batch.num_tasks
        for e, g in zip(expected, torch.autograd.grad(loss, list(fast.values()))):
            e += g
    assert relative_error(expected, got) < 1e-10
    second = meta_gradient(MAML(model, 0.3, 2, first_order=False, strategy=strategy), batch)
    assert relative_error(second, got) > 1e-3


def test_first_order_vectorised_gradient_is_not_recorded_outside_the_transform():
    """The meta-gradient never flows through a first-order inner gradient: autograd outside ``torch.func.grad`` must
    not record its pass (memory). Second order needs that record."""
    weight = torch.randn(3, 3, requires_grad=True)
    x = torch.randn(4, 3)
    recorded = []

    def loss_fn(params):
        recorded.append(torch._C._functorch.get_unwrapped(params["w"]).requires_grad)  # the tensor outside
        return (x @ params["w"]).tanh().square().sum()

    first = gradients(loss_fn, {"w": weight}, create_graph=False, vectorised=True)
    second = gradients(loss_fn, {"w": weight}, create_graph=True, vectorised=True)
    assert recorded == [False, True]
    assert not first["w"].requires_grad and second["w"].requires_grad
    torch.testing.assert_close(first["w"], second["w"].detach())


def test_torch_batch_norm_is_not_used_under_vmap():
    """EpisodeBatchNorm2d equals training-mode batch norm, computed per task."""
    x = torch.randn(6, 4, 5, 5, dtype=torch.float64)
    bn = EpisodeBatchNorm2d(4).double()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    expected = F.batch_norm(x, None, None, bn.weight, bn.bias, training=True, eps=bn.eps)
    torch.testing.assert_close(bn(x), expected)


def test_inner_sgd_lowers_the_support_loss_and_adapts_under_no_grad():
    torch.manual_seed(4)
    model = nn.Linear(3, 2)
    x, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
    loss = lambda p: F.cross_entropy(call(model, p, x), y)
    params = parameters_of(model)
    with torch.no_grad():
        adapted = inner_sgd(loss, params, steps=20, lr=0.5, first_order=True)
        assert loss(adapted) < loss(params)


def test_map_tasks_rejects_unknown_strategy():
    with pytest.raises(ValueError, match="unknown strategy"):
        map_tasks(lambda x, vectorised: (x,), (torch.zeros(2, 1),), "threads")
