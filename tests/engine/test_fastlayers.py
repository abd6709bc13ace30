"""with_fast_layers: torch's layers swapped for exact equivalents, in the network the MAML family runs."""

import pytest
import torch
from torch import nn

from fastadapt.algorithms import MAML
from fastadapt.engine.fastlayers import with_fast_layers
from fastadapt.engine.layers import EpisodeBatchNorm2d, EpisodeBatchNormPoolReLU, MaxPool2x2
from fastadapt.tasks.episodes import TaskBatch


def torch_conv4(width: int = 6, ways: int = 3, affine: bool = True) -> nn.Module:
    """A max-pool Conv-3 as learn2learn and MAML's reference code write it: conv, batch norm with batch
    statistics, ReLU, then pooling (12x12 inputs: the last pooling takes an odd size)."""
    layers: list[nn.Module] = []
    for i in range(3):
        layers += [
            nn.Conv2d(1 if i == 0 else width, width, 3, padding=1),
            nn.BatchNorm2d(width, track_running_stats=False, affine=affine),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ]
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(width, ways)).double()


def value_and_derivatives(model: nn.Module, x: torch.Tensor, probe: torch.Tensor) -> list[torch.Tensor]:
    """The output, the gradient of a loss with respect to the input and every parameter, and the gradient of
    that gradient's size (what second-order MAML differentiates)."""
    x = x.clone().requires_grad_(True)
    params = [x, *model.parameters()]
    out = model(x)
    grads = torch.autograd.grad((out * probe).sum(), params, create_graph=True)
    second = torch.autograd.grad(sum(g.square().sum() for g in grads), params, allow_unused=True)
    return [out, *grads, *(torch.zeros_like(p) if g is None else g for p, g in zip(params, second))]


@pytest.mark.parametrize(
    "channels_last", [False, True]
)  # channels-last: fastadapt's fused kernel (fastadapt.engine.native)
def test_same_function_gradients_and_second_derivatives(channels_last):
    torch.manual_seed(0)
    model = torch_conv4()
    with torch.no_grad():  # batch-norm weights of both signs: pooling must not rely on a positive scale
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(-1.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    fast = with_fast_layers(model)
    x, probe = torch.randn(10, 1, 12, 12, dtype=torch.double), torch.randn(10, 3, dtype=torch.double)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    for expected, got in zip(value_and_derivatives(model, x, probe), value_and_derivatives(fast, x, probe)):
        # atol: a convolution's bias before batch norm has zero first and second derivatives in exact arithmetic, so
        # both sides hold float64 rounding of terms near 1e3 (up to 1e-12, CPU-dependent)
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-11)


def test_layers_swapped_parameters_and_names_kept_original_untouched():
    model = torch_conv4()
    fast = with_fast_layers(model)
    kinds = [type(m) for m in fast]
    # Each block's batch norm, pooling and ReLU are one fused layer, in the batch norm's place.
    assert kinds[:4] == [nn.Conv2d, EpisodeBatchNormPoolReLU, nn.Identity, nn.Identity]
    assert list(fast.state_dict()) == list(model.state_dict())
    assert all(a is b for a, b in zip(fast.parameters(), model.parameters()))
    assert [type(m) for m in model][:4] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d]
    assert fast[0] is model[0]  # modules with nothing to swap are the original's own

    unaffine = with_fast_layers(torch_conv4(affine=False))
    assert type(unaffine[1]) is EpisodeBatchNormPoolReLU and unaffine[1].weight is None
    # Without a ReLU after the pooling, only the ReLU-free swaps happen; a leaky ReLU is moved, not fused.
    partial = with_fast_layers(nn.Sequential(nn.BatchNorm2d(4, track_running_stats=False), nn.MaxPool2d(2)))
    assert [type(m) for m in partial] == [EpisodeBatchNorm2d, MaxPool2x2]
    leaky = with_fast_layers(
        nn.Sequential(nn.BatchNorm2d(4, track_running_stats=False), nn.LeakyReLU(0.1), nn.MaxPool2d(2))
    )
    assert [type(m) for m in leaky] == [EpisodeBatchNorm2d, MaxPool2x2, nn.LeakyReLU]


def test_layers_without_an_exact_equivalent_are_left_alone():
    class MyPool(nn.MaxPool2d):
        pass

    hooked = nn.BatchNorm2d(4, track_running_stats=False)
    hooked.register_forward_hook(lambda *args: None)
    leaky_negative = nn.Sequential(nn.LeakyReLU(-0.5), nn.MaxPool2d(2))  # decreasing: max does not commute
    model = nn.Sequential(
        nn.BatchNorm2d(4),  # running statistics: its buffers must keep being updated
        hooked,
        nn.MaxPool2d(3),
        nn.MaxPool2d(2, ceil_mode=True),
        MyPool(2),
        leaky_negative,
    )
    fast = with_fast_layers(model)
    assert [type(m) for m in fast][:5] == [nn.BatchNorm2d, nn.BatchNorm2d, nn.MaxPool2d, nn.MaxPool2d, MyPool]
    assert [type(m) for m in fast[5]] == [nn.LeakyReLU, MaxPool2x2]
    nothing_to_swap = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
    assert with_fast_layers(nothing_to_swap) is nothing_to_swap


def test_maml_on_torch_layers_vectorised_equals_the_loop():
    """The vmap meta-gradient of a network built from nn.BatchNorm2d is exact (torch's kernel alone is not,
    under vmap, second order) and equals the per-task loop's."""
    torch.manual_seed(0)
    model = torch_conv4()
    batch = TaskBatch(
        torch.randn(4, 3, 1, 12, 12, dtype=torch.double),
        torch.arange(3).repeat(4, 1),
        torch.randn(4, 6, 1, 12, 12, dtype=torch.double),
        torch.arange(3).repeat(4, 2),
        3,
    )
    grads = {}
    for strategy in ("loop", "vmap"):
        model.zero_grad()
        MAML(model, inner_lr=0.4, strategy=strategy, workers=1).meta_backward(batch)
        grads[strategy] = [p.grad.clone() for p in model.parameters()]
    reference = model.zero_grad() or grads["loop"]
    plain = MAML(model, inner_lr=0.4, strategy="loop", workers=1, fast_layers=False)
    plain.meta_backward(batch)
    total = torch.sqrt(sum(g.square().sum() for g in reference))
    for loop, vmap, torch_layers in zip(grads["loop"], grads["vmap"], (p.grad for p in model.parameters())):
        assert ((vmap - loop).norm() / total).item() < 1e-12
        assert ((loop - torch_layers).norm() / total).item() < 1e-12
