"""fastadapt.engine.native and the layer that uses it: the fused batch norm + 2x2 max pool + ReLU kernel equals torch's
three layers (values, gradients, second derivatives), and it is compiled once, cached, and done without."""

import logging

import pytest
import torch
import torch.nn.functional as F

from fastadapt.engine import native
from fastadapt.engine.layers import EpisodeBatchNormPoolReLU

needs_compiler = pytest.mark.skipif(native.compiler() is None, reason="no C++ compiler on this machine")


@pytest.fixture
def fresh_library(monkeypatch, tmp_path):
    """native.library() built again, into an empty cache directory; the usual one afterwards."""
    monkeypatch.setenv("FASTADAPT_CACHE_DIR", str(tmp_path))
    native.library.cache_clear()
    yield tmp_path
    native.library.cache_clear()


def torch_layers(x, weight, bias):
    return F.relu(F.max_pool2d(F.batch_norm(x, None, None, weight, bias, training=True), 2))


def fused_layer(channels: int, affine: bool, dtype: torch.dtype) -> EpisodeBatchNormPoolReLU:
    layer = EpisodeBatchNormPoolReLU(channels, affine=affine).to(dtype)
    if affine:
        with torch.no_grad():  # both signs: a negative scale turns the window's maximum into its minimum
            layer.weight.uniform_(-1.5, 1.5)
            layer.bias.uniform_(-0.5, 0.5)
    return layer


def images(size: tuple[int, int], dtype: torch.dtype = torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 5, *size, generator=g, dtype=dtype) * 2 + 1
    x[0, 0, :2, :2] = 1.5  # four equal values in one window: the first in scan order is the maximum
    x[1, 2, 2:4, 2:4] = torch.tensor([[0.5, 2.0], [2.0, 0.5]], dtype=dtype)  # a tie off the first position
    return x.contiguous(memory_format=torch.channels_last).requires_grad_()


@needs_compiler
@pytest.mark.parametrize("size", [(8, 6), (7, 9)])  # odd sizes: the last row or column is in the statistics only
@pytest.mark.parametrize("affine", [True, False])
def test_kernel_equals_torchs_layers_in_values_gradients_and_second_derivatives(size, affine):
    layer = fused_layer(5, affine, torch.float64)
    x = images(size)
    weights = [layer.weight, layer.bias] if affine else []
    out = layer(x)
    assert type(out.grad_fn).__name__ == "_EpisodeBatchNormPoolReLUBackward"  # the kernel ran
    assert out.is_contiguous(memory_format=torch.channels_last)
    upstream = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    upstream.requires_grad_()
    results = []
    for forward in (lambda x: layer(x), lambda x: torch_layers(x.contiguous(), *(weights or (None, None)))):
        y = forward(x)
        first = torch.autograd.grad(y, (x, *weights), upstream)  # the kernel's own backward pass
        grads = torch.autograd.grad(forward(x), (x, *weights), upstream, create_graph=True)
        probes = [torch.cos(torch.arange(g.numel(), dtype=g.dtype)).view_as(g) for g in grads]
        inputs = (x, *weights, upstream)
        second = torch.autograd.grad(sum((g * p).sum() for g, p in zip(grads, probes)), inputs, allow_unused=True)
        # the bias moves the gradients only through which value is a maximum: piecewise constant, so unused
        results.append([y, *first, *(torch.zeros_like(t) if d is None else d for t, d in zip(inputs, second))])
    for got, expected in zip(*results):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


@needs_compiler
def test_float32_kernel_agrees_with_torchs_layers_and_passes_gradcheck_in_float64():
    layer = fused_layer(5, True, torch.float32)
    x = images((12, 10), torch.float32)
    upstream = torch.randn(4, 5, 6, 5)
    y = layer(x)
    grads = torch.autograd.grad(y, (x, layer.weight, layer.bias), upstream)
    expected = torch_layers(x.contiguous(), layer.weight, layer.bias)
    expected_grads = torch.autograd.grad(expected, (x, layer.weight, layer.bias), upstream)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)

    double = fused_layer(3, True, torch.float64)
    x = torch.randn(2, 3, 4, 6, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    assert torch.autograd.gradcheck(double, (x.requires_grad_(),))  # no ties here: the pooling is smooth


def test_the_layer_runs_torchs_layers_where_the_kernel_does_not_apply():
    layer = fused_layer(5, True, torch.float64)
    x = images((8, 6)).contiguous()  # the standard layout
    y = layer(x)
    assert type(y.grad_fn).__name__ != "_EpisodeBatchNormPoolReLUBackward"
    torch.testing.assert_close(y, torch_layers(x, layer.weight, layer.bias))
    tasks = torch.stack([images((8, 6)).detach(), images((8, 6)).detach().flip(0)])  # under vmap: per-task batches
    torch.testing.assert_close(
        torch.func.vmap(layer)(tasks), torch.stack([torch_layers(t, layer.weight, layer.bias) for t in tasks])
    )


@needs_compiler
def test_compiled_once_into_the_cache_and_loaded_from_it_later(fresh_library, monkeypatch):
    assert native.library() is not None
    (built,) = fresh_library.glob("fastadapt_native_*.so")
    stamp = built.stat().st_mtime_ns
    native.library.cache_clear()

    def no_compiling(*args):
        raise AssertionError("compiled again")

    monkeypatch.setattr(native, "_compile", no_compiling)
    assert native.library() is not None
    assert built.stat().st_mtime_ns == stamp and list(fresh_library.glob("*")) == [built]  # no temporary left


@pytest.mark.parametrize("setting", [("CXX", "false"), ("CXX", "/no/such/compiler"), ("FASTADAPT_NATIVE", "0")])
def test_without_a_working_compiler_the_layer_falls_back_with_a_warning(fresh_library, monkeypatch, caplog, setting):
    monkeypatch.setenv(*setting)
    with caplog.at_level(logging.WARNING, logger="fastadapt.engine.native"):
        assert native.library() is None
    if setting[0] == "CXX":
        assert "using torch operations instead" in caplog.text
    assert not list(fresh_library.glob("*.so"))
    layer = fused_layer(5, True, torch.float64)
    x = images((8, 6))
    y = layer(x)
    assert type(y.grad_fn).__name__ != "_EpisodeBatchNormPoolReLUBackward"
    torch.testing.assert_close(y, torch_layers(x, layer.weight, layer.bias))
