import pytest
import torch

from fastadapt.nets import MLP, Conv4, Conv4Stride


def test_conv4_embedding_sizes():
    assert Conv4()(torch.zeros(2, 1, 28, 28)).shape == (2, 64)
    assert Conv4(3, 32, image_size=84).out_features == 32 * 5 * 5
    assert Conv4(3, 32, num_classes=5, image_size=84)(torch.zeros(2, 3, 84, 84)).shape == (2, 5)


def test_conv4_stride_is_mamls_omniglot_network():
    net = Conv4Stride(1, 64, 5)
    assert net(torch.zeros(3, 1, 28, 28)).shape == (3, 5)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 4 and all(c.stride == (2, 2) for c in convs)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in net.modules())


def test_pool_before_relu_is_the_standard_block():
    """Conv4 pools before its ReLU; that is the same function as ReLU-then-pool."""
    x = torch.randn(4, 8, 6, 6)
    pool = torch.nn.MaxPool2d(2)
    torch.testing.assert_close(torch.relu(pool(x)), pool(torch.relu(x)))


def test_sinusoid_mlp_shape():
    mlp = MLP(1, (40, 40), 1)
    assert [m.out_features for m in mlp if isinstance(m, torch.nn.Linear)] == [40, 40, 1]


def _mean_var_batch_norm(x, weight, bias, eps=1e-5):
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = (x - mean).square().mean(dim=(0, 2, 3), keepdim=True)
    return (x - mean) * weight.view(1, -1, 1, 1) * torch.rsqrt(var + eps) + bias.view(1, -1, 1, 1)


def test_episode_batch_norm_kernel_path_has_the_same_first_and_second_derivatives():
    """Outside torch.func it calls torch's fused kernel; under vmap the mean/var form. Same function,
    same gradient and same gradient-of-gradient (what second-order MAML differentiates)."""
    from torch.func import vmap

    from fastadapt.nets import EpisodeBatchNorm2d

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


def test_conv4_width_is_read_from_the_network_name():
    from fastadapt.algorithms import build_network
    from fastadapt.config import make_config
    from fastadapt.errors import ConfigError
    from fastadapt.nets.conv import conv4_filters

    assert [conv4_filters(n) for n in ("conv4", "conv4-32", "conv4-96")] == [64, 32, 96]
    assert [conv4_filters(n) for n in ("conv4-stride", "conv4-0", "conv4-", "resnet12", None)] == [None] * 5
    net = build_network(make_config("protonet", "omniglot", network="conv4-96"), None)
    assert net.out_features == 96 and net(torch.zeros(2, 1, 28, 28)).shape == (2, 96)
    with pytest.raises(ConfigError, match="conv4-N"):
        build_network(make_config("protonet", "omniglot", network="conv4-wide"), None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("size", [(8, 6), (9, 7)])
def test_strided_max_pool_equals_torchs_in_values_gradients_and_second_derivatives(dtype, size):
    """Ties included: ReLU zeros and repeated values, where torch picks the first maximum in scan order; odd sizes
    drop their last row and column."""
    from fastadapt.nets.layers import MaxPool2x2, _StridedMaxPool2x2

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
    from fastadapt.nets import EpisodeBatchNorm2d

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
