"""fastadapt's exact layers: the same values, gradients and second derivatives as torch's, and exact under vmap."""

import pytest
import torch


def _mean_var_batch_norm(x, weight, bias, eps=1e-5):
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = (x - mean).square().mean(dim=(0, 2, 3), keepdim=True)
    return (x - mean) * weight.view(1, -1, 1, 1) * torch.rsqrt(var + eps) + bias.view(1, -1, 1, 1)


def test_episode_batch_norm_kernel_path_has_the_same_first_and_second_derivatives():
    """Outside torch.func it calls torch's fused kernel; under vmap the mean/var form. Same function,
    same gradient and same gradient-of-gradient (what second-order MAML differentiates)."""
    from torch.func import vmap

    from fastadapt.engine.layers import EpisodeBatchNorm2d

    torch.manual_seed(0)
    norm = EpisodeBatchNorm2d(3).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(4, 3, 5, 5, dtype=torch.double, requires_grad=True)
    probe = torch.randn(4, 3, 5, 5, dtype=torch.double)

    def second_order(forward):
        out = forward(x)
        (gx,) = torch.autograd.grad((out * probe).sum(), x, create_graph=True)
        return [out, gx, *torch.autograd.grad(gx.square().sum() + out.square().sum(), [x, norm.weight, norm.bias])]

    fused = second_order(norm)
    reference = second_order(lambda t: _mean_var_batch_norm(t, norm.weight, norm.bias))
    for got, expected in zip(fused, reference):
        torch.testing.assert_close(got, expected)
    # under vmap (per-task statistics) the module still computes each task's own normalisation
    tasks = torch.randn(2, 4, 3, 5, 5, dtype=torch.double)
    batched = vmap(norm)(tasks)
    for t in range(2):
        torch.testing.assert_close(batched[t], _mean_var_batch_norm(tasks[t], norm.weight, norm.bias))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("size", [(8, 6), (9, 7)])
def test_strided_max_pool_equals_torchs_in_values_gradients_and_second_derivatives(dtype, size):
    """Ties included: ReLU zeros and repeated values, where torch picks the first maximum in scan order; odd sizes
    drop their last row and column."""
    from fastadapt.engine.layers import MaxPool2x2, _StridedMaxPool2x2

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, *size, generator=g, dtype=dtype).relu()
    x[0, 0, :2, :2] = 1.5  # four equal values in one window
    x[1, 1, 2:4, 2:4] = torch.tensor([[0.5, 2.0], [2.0, 0.5]], dtype=dtype)  # a tie off the first position
    x.requires_grad_()
    upstream = torch.randn(3, 4, size[0] // 2, size[1] // 2, generator=g, dtype=dtype, requires_grad=True)
    results = []
    for pool in (lambda t: torch.nn.functional.max_pool2d(t, 2), _StridedMaxPool2x2.apply):
        y = pool(x)
        (dx,) = torch.autograd.grad(y, x, upstream, create_graph=True)
        second = torch.autograd.grad((dx * x.detach().cos()).sum(), upstream)
        results.append((y, dx, *second))
    for got, expected in zip(results[1], results[0]):
        assert torch.equal(got, expected)
    # The module falls back to torch's kernel where the fast path does not apply: channels-last.
    channels_last = x.detach().contiguous(memory_format=torch.channels_last)
    assert torch.equal(MaxPool2x2()(channels_last), torch.nn.functional.max_pool2d(channels_last, 2))
    assert torch.equal(MaxPool2x2()(x.detach()), results[0][0].detach())


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("affine", [True, False])
def test_episode_batch_norm_closed_form_second_derivative_passes_gradgradcheck(channels_last, affine):
    """The backward pass's own derivative is written out (_EpisodeBatchNormBackward): numerically checked, and
    equal to torch's batch norm differentiated twice, for every cotangent, in both layouts and without an affine."""
    from fastadapt.engine.layers import EpisodeBatchNorm2d

    torch.manual_seed(0)
    norm = EpisodeBatchNorm2d(4, affine=affine).double()
    if affine:
        with torch.no_grad():
            norm.weight.uniform_(-1.5, 1.5)  # both signs
            norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(3, 4, 5, 6, dtype=torch.double) * 2 + 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    weights = [norm.weight, norm.bias] if affine else []

    def layer(x, *weight_and_bias):
        return torch.func.functional_call(norm, dict(zip(["weight", "bias"], weight_and_bias)), (x,))

    assert torch.autograd.gradgradcheck(layer, (x, *weights))

    def torch_layer(x, *weight_and_bias):
        return torch.nn.functional.batch_norm(x, None, None, *(weight_and_bias or (None, None)), training=True)

    grad_out = torch.randn(3, 4, 5, 6, dtype=torch.double, requires_grad=True)
    cotangents = [torch.randn_like(t) for t in (x, *weights)]
    results = []
    for forward in (layer, torch_layer):
        grads = torch.autograd.grad(forward(x, *weights), (x, *weights), grad_out, create_graph=True)
        for used in (slice(None), slice(0, 1), slice(1, None)):  # every cotangent; dx's alone; the weights' alone
            pairs = list(zip(grads, cotangents))[used]
            if pairs:
                total = sum((g * c).sum() for g, c in pairs)
                results.append(
                    torch.autograd.grad(total, (x, *weights, grad_out), allow_unused=True, retain_graph=True)
                )
    half = len(results) // 2
    for ours, theirs in zip(results[:half], results[half:]):
        for a, b in zip(ours, theirs):
            assert (a is None) == (b is None) or torch.count_nonzero(a if b is None else b) == 0
            if a is not None and b is not None:
                torch.testing.assert_close(a, b)


def _vmap_safe_cases():
    from fastadapt.engine.layers import EpisodeBatchNorm1d, VmapSafeInstanceNorm, VmapSafeLayerNorm

    return {
        "layer norm": (VmapSafeLayerNorm((5,)), torch.nn.LayerNorm(5), (4, 5)),
        "layer norm over C, H, W": (VmapSafeLayerNorm((2, 3, 3)), torch.nn.LayerNorm([2, 3, 3]), (3, 2, 3, 3)),
        "batch norm 1d": (EpisodeBatchNorm1d(5), torch.nn.BatchNorm1d(5, track_running_stats=False), (6, 5)),
        "batch norm 1d over L": (EpisodeBatchNorm1d(3), torch.nn.BatchNorm1d(3, track_running_stats=False), (4, 3, 5)),
        "instance norm 1d": (VmapSafeInstanceNorm(3, 1), torch.nn.InstanceNorm1d(3, affine=True), (2, 3, 6)),
        "instance norm 2d": (VmapSafeInstanceNorm(2, 2), torch.nn.InstanceNorm2d(2, affine=True), (2, 2, 3, 4)),
        "instance norm 2d, unbatched": (VmapSafeInstanceNorm(2, 2), torch.nn.InstanceNorm2d(2, affine=True), (2, 3, 4)),
    }


@pytest.mark.parametrize("case", list(_vmap_safe_cases()))
def test_vmap_safe_norms_equal_torchs_and_pass_finite_differences_in_both_forms(case, monkeypatch):
    """Outside torch.func they run torch's kernel, inside the mean/var form: each equals torch's layer and passes
    gradcheck and gradgradcheck (finite differences, float64), the decomposed form as run under torch.func."""
    from fastadapt.engine import layers

    fast, reference, shape = _vmap_safe_cases()[case]
    fast, reference = fast.double(), reference.double()
    torch.manual_seed(0)
    with torch.no_grad():
        for p, q in zip(fast.parameters(), reference.parameters()):
            p.uniform_(-1.5, 1.5)
            q.copy_(p)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(fast(x), reference(x), rtol=0, atol=1e-12)
    weights = list(fast.parameters())
    names = [n for n, _ in fast.named_parameters()]

    def run(x, *params):
        return torch.func.functional_call(fast, dict(zip(names, params)), (x,))

    torch.autograd.gradcheck(run, (x, *weights))
    torch.autograd.gradgradcheck(run, (x, *weights))
    monkeypatch.setattr(layers, "_under_transform", lambda *tensors: True)  # the form vmap runs
    torch.testing.assert_close(run(x, *weights), reference(x), rtol=0, atol=1e-12)
    torch.autograd.gradcheck(run, (x, *weights))
    torch.autograd.gradgradcheck(run, (x, *weights))
