"""Layers that behave well under ``torch.func`` transforms."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastadapt.engine import native


def is_functorch_wrapped(x: torch.Tensor) -> bool:
    """True inside ``torch.func.vmap``/``grad``, where ``x`` is a functorch wrapper tensor."""
    return torch._C._functorch.is_functorch_wrapped_tensor(x)


def _under_transform(*tensors: torch.Tensor | None) -> bool:
    """Whether a layer must take its decomposed form: under ``torch.compile``, or inside a ``torch.func`` transform
    (any of ``tensors`` wrapped: the input, or weights that are per-task under ``vmap`` while the input is not)."""
    return torch.compiler.is_compiling() or any(t is not None and is_functorch_wrapped(t) for t in tensors)


def _per_channel(t: torch.Tensor) -> torch.Tensor:
    return t.view(1, -1, 1, 1)


def _batch_norm_backward(
    grad: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor | None,
    mean: torch.Tensor,
    invstd: torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """torch's kernel, one pass pair: (gamma r P(grad), sum(grad x_hat), sum(grad)) per channel, where
    P(g) = g - mean(g) - x_hat mean(g x_hat) and r = 1 / sqrt(var + eps)."""
    if grad.stride() != x.stride():  # mixed layouts: torch took 1.15 ms for (5, 64, 28, 28), 0.32 with this copy
        grad = torch.empty_like(x).copy_(grad)
    return torch.ops.aten.native_batch_norm_backward(
        grad, x, weight, None, None, mean, invstd, True, eps, [True, True, True]
    )


class _EpisodeBatchNormBackward(torch.autograd.Function):
    """The backward pass of batch norm with batch statistics, as a function of (x, gamma, dy) whose own derivative
    (second-order MAML differentiates the inner loop's gradient) is written out below.

    With x_hat = (x - mu) r, the backward pass is dbeta = sum(dy), dgamma = sum(dy x_hat) and
    dx = gamma r P(dy). For cotangents (u, u_gamma, u_beta) of (dx, dgamma, dbeta), with M values per channel,
    a = dgamma, b = sum(u x_hat) and S = sum(u P(dy)) = sum(u dy) - sum(u) sum(dy) / M - a b / M:

    - d/d dy     = gamma r P(u) + u_gamma x_hat + u_beta
    - d/d gamma  = r S
    - d/d x      = r (w - mean(w) - x_hat (mean(w x_hat) + gamma r S / M)),  w = u_gamma dy - gamma r (a u + b dy) / M

    Every full-size term is one of torch's batch-norm kernels or a multiply-add: torch's own formula for this
    derivative took 2.4-4x as long for a (5, 64, 28, 28) batch, and 12x in channels-last layout
    (docs/performance.md). Checked against it by ``gradgradcheck`` in float64 (tests/nets)."""

    @staticmethod
    def forward(ctx, x, weight, grad_y, mean, invstd, eps):
        ctx.set_materialize_grads(False)  # unused cotangents arrive as None and cost nothing
        grad_x, grad_weight, grad_bias = _batch_norm_backward(grad_y, x, weight, mean, invstd, eps)
        ctx.save_for_backward(x, weight, grad_y, mean, invstd, grad_weight, grad_bias)  # the sums, even without weight
        ctx.eps = eps
        return grad_x, grad_weight, grad_bias

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, u, u_gamma, u_beta):
        x, weight, grad_y, mean, invstd, a, sum_dy = ctx.saved_tensors
        m = x.numel() // x.shape[1]
        r = invstd
        gamma_r = r if weight is None else weight * r
        zero = torch.zeros_like(r)
        u_gamma = zero if u_gamma is None else u_gamma
        u_beta = zero if u_beta is None else u_beta
        if u is None:
            projected, b, sum_u, s = None, zero, zero, zero
        else:
            projected, b, sum_u = _batch_norm_backward(u, x, weight, mean, invstd, ctx.eps)
            s = (u * grad_y).sum(dim=(0, 2, 3)) - (sum_u * sum_dy + a * b) / m
        dy_coefficient = u_gamma - gamma_r * b / m  # w = dy_coefficient dy - u_coefficient u
        u_coefficient = gamma_r * a / m
        mean_w = (dy_coefficient * sum_dy - u_coefficient * sum_u) / m
        k = (dy_coefficient * a - u_coefficient * b + gamma_r * s) / m
        # r (w - mean_w - k x_hat), x_hat = (x - mean) r: three multiply-adds over the batch
        grad_x = torch.addcmul(_per_channel(r * (k * r * mean - mean_w)), grad_y, _per_channel(r * dy_coefficient))
        grad_x.addcmul_(x, _per_channel(-k * r * r))
        if u is not None:
            grad_x.addcmul_(u, _per_channel(-r * u_coefficient))
        shift = _per_channel(u_beta - u_gamma * r * mean)  # u_gamma x_hat + u_beta = (u_gamma r) x + shift
        if projected is None:
            grad_dy = torch.addcmul(shift, x, _per_channel(u_gamma * r))
        else:
            grad_dy = projected.addcmul_(x, _per_channel(u_gamma * r)).add_(shift)
        return grad_x, None if weight is None else r * s, grad_dy, None, None, None


class _EpisodeBatchNorm(torch.autograd.Function):
    """Training-mode batch norm (torch's kernel) whose backward pass is :class:`_EpisodeBatchNormBackward`."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        y, mean, invstd = torch.ops.aten.native_batch_norm(x, weight, bias, None, None, True, 0.0, eps)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.eps = eps
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, weight, mean, invstd = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: this backward pass will be differentiated
            grad_x, grad_weight, grad_bias = _EpisodeBatchNormBackward.apply(x, weight, grad_y, mean, invstd, ctx.eps)
        else:  # the kernel alone: the Function around it took as long again on MAML's Omniglot layers
            grad_x, grad_weight, grad_bias = _batch_norm_backward(grad_y, x, weight, mean, invstd, ctx.eps)
        return (grad_x, grad_weight, grad_bias, None) if weight is not None else (grad_x, None, None, None)


class _PerChannelNorm(nn.Module):
    """A normalisation with an optional weight and bias per channel (torch's defaults: ones and zeros)."""

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if affine else None


class EpisodeBatchNorm2d(_PerChannelNorm):
    """Batch norm that always normalises with the statistics of the batch it is given, as in the MAML
    reference code (per task: the support set during adaptation, the query set when scoring).

    Under ``torch.func`` transforms (``vmap``, ``grad``) it is written from ``mean``/``var``: there, torch's
    batch_norm kernel gives a wrong second-order meta-gradient, while this form is exact. Everywhere else
    (a per-task loop, evaluation) it calls that kernel, which computes the same function and its first
    derivatives in fewer passes over the activations (a second-order MAML step on 15 query images per class ran
    1.4-1.6x faster with it), and differentiates the backward pass with :class:`_EpisodeBatchNormBackward`'s
    closed form, for second-order MAML (docs/performance.md). Under ``torch.compile`` it takes the mean/var form
    too: the compiler fuses its passes, and the functorch check cannot be traced.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return episode_batch_norm(x, self.weight, self.bias, self.eps)


def episode_batch_norm(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> torch.Tensor:
    """:class:`EpisodeBatchNorm2d`'s function."""
    if not _under_transform(x, weight, bias):
        return _EpisodeBatchNorm.apply(x, weight, bias, eps)
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = (x - mean).square().mean(dim=(0, 2, 3), keepdim=True)
    scale = torch.rsqrt(var + eps)
    if weight is None:
        return (x - mean) * scale
    return (x - mean) * (weight.view(1, -1, 1, 1) * scale) + bias.view(1, -1, 1, 1)


def _window_corners(rows: int, columns: int, width: int, device: torch.device) -> torch.Tensor:
    """The flat index, within its (height, ``width``) map, of each 2x2 window's top left, for ``rows`` x
    ``columns`` windows: torch's max-pooling indices are these plus ``width`` (lower row) and 1 (right column)."""
    return torch.arange(0, 2 * rows, 2, device=device).view(-1, 1) * width + torch.arange(
        0, 2 * columns, 2, device=device
    )


class _StridedMaxPool2x2(torch.autograd.Function):
    """2x2 max pooling (stride 2, an odd last row or column dropped) as the maximum of the four strided views,
    with the indices that torch's own kernel would return (first maximum in scan order), so torch's index-based
    backward, and its derivative, apply unchanged."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        rows, columns = height // 2 * 2, width // 2 * 2
        top_left, top_right = x[..., 0:rows:2, 0:columns:2], x[..., 0:rows:2, 1:columns:2]
        bottom_left, bottom_right = x[..., 1:rows:2, 0:columns:2], x[..., 1:rows:2, 1:columns:2]
        top, bottom = torch.maximum(top_left, top_right), torch.maximum(bottom_left, bottom_right)
        pooled = torch.maximum(top, bottom)
        if ctx.needs_input_grad[0]:
            corner = _window_corners(rows // 2, columns // 2, width, x.device)
            # A strict > keeps the first of equal values, as torch's kernel does. Boolean algebra and in-place
            # integer adds: torch.where on these masks, and fresh int64 temporaries, took 1.5x as long.
            lower = bottom > top
            right = (lower & (bottom_right > bottom_left)) | (~lower & (top_right > top_left))
            ctx.save_for_backward(x, torch.add(corner, lower, alpha=width).add_(right))
        return pooled

    @staticmethod
    def backward(ctx, grad_pooled: torch.Tensor) -> torch.Tensor:
        x, indices = ctx.saved_tensors
        return torch.ops.aten.max_pool2d_with_indices_backward(
            grad_pooled, x, [2, 2], [2, 2], [0, 0], [1, 1], False, indices
        )


class MaxPool2x2(nn.Module):
    """``F.max_pool2d(x, 2)``: the same values, gradients and second derivatives (tested), faster on a CPU.

    torch's CPU kernel for the standard (NCHW) layout took 20 ms for a (75, 64, 28, 28) batch on one thread,
    10x its channels-last kernel; the maximum of the four strided views with torch's own backward took 10.4
    against 23.5 ms forward plus backward, and 1.0 against 1.3 ms at 7x7 (docs/performance.md). Used for
    NCHW float tensors of at least 2x2 on a CPU outside ``torch.func`` transforms and ``torch.compile``;
    everything else goes to ``F.max_pool2d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return max_pool_2x2(x)


def _eager_cpu(x: torch.Tensor) -> bool:
    """A CPU batch of images outside ``torch.func`` transforms and ``torch.compile``: where fastadapt's own
    kernels may run."""
    return x.device.type == "cpu" and x.dim() == 4 and not torch.compiler.is_compiling() and not is_functorch_wrapped(x)


def max_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """:class:`MaxPool2x2`'s function."""
    if not _eager_cpu(x) or min(x.shape[-2:]) < 2 or not x.is_floating_point() or not x.is_contiguous():
        return F.max_pool2d(x, 2)
    return _StridedMaxPool2x2.apply(x)


_KERNEL_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}


def _run_kernel(kernels, name: str, dtype: torch.dtype, *tensors_and_sizes) -> None:
    """Call C++ kernel ``name`` for ``dtype`` with tensors passed as their data pointers (None: a null pointer)."""
    arguments = [t.data_ptr() if isinstance(t, torch.Tensor) else t for t in tensors_and_sizes]
    if getattr(kernels, f"fastadapt_{name}_{_KERNEL_SUFFIX[dtype]}")(*arguments):
        raise MemoryError(f"fastadapt's {name} kernel could not allocate its per-channel buffers")


def _pool_relu_backward(
    grad_out: torch.Tensor, out: torch.Tensor, argmax: torch.Tensor, x: torch.Tensor
) -> torch.Tensor:
    """The gradient of relu(max_pool2d(y, 2)) with respect to y, as torch operations that are differentiable in
    ``grad_out``: each window's gradient goes to its maximum (``argmax``, 0-3 in scan order), where ``out > 0``."""
    width = x.shape[-1]
    indices = _window_corners(*out.shape[-2:], width, x.device) + (argmax >> 1).long() * width + (argmax & 1).long()
    return torch.ops.aten.max_pool2d_with_indices_backward(
        grad_out * (out > 0), x, [2, 2], [2, 2], [0, 0], [1, 1], False, indices
    )


class _EpisodeBatchNormPoolReLU(torch.autograd.Function):
    """relu(max_pool2d(batch_norm(x), 2)) by fastadapt's C++ kernel (fastadapt/native/batch_norm_pool_relu.cpp,
    whose header gives the formulas). Its backward pass is the kernel's too, except where it is itself
    differentiated (second-order MAML's inner loop, ``create_graph=True``): there it is torch's index-based pooling
    backward and :class:`_EpisodeBatchNormBackward`, whose derivatives are known."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps, kernels):
        n, c, h, w = x.shape
        out = torch.empty((n, c, h // 2, w // 2), dtype=x.dtype, memory_format=torch.channels_last)
        argmax = torch.empty(out.shape, dtype=torch.uint8, memory_format=torch.channels_last)
        mean, invstd = x.new_empty(c), x.new_empty(c)
        weight = None if weight is None else weight.contiguous()
        bias = None if bias is None else bias.contiguous()
        _run_kernel(
            kernels, "bn_pool_relu_forward", x.dtype, x, weight, bias, n, c, h, w, eps, out, argmax, mean, invstd
        )
        ctx.save_for_backward(x, weight, out, argmax, mean, invstd)
        ctx.eps, ctx.kernels = eps, kernels
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, out, argmax, mean, invstd = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: this backward pass will be differentiated
            grad_y = _pool_relu_backward(grad_out, out, argmax, x)
            grad_x, grad_weight, grad_bias = _EpisodeBatchNormBackward.apply(x, weight, grad_y, mean, invstd, ctx.eps)
        else:
            grad_out = grad_out.contiguous(memory_format=torch.channels_last)
            grad_x = torch.empty_like(x, memory_format=torch.channels_last)
            grad_weight, grad_bias = (
                (None, None) if weight is None else (torch.empty_like(mean), torch.empty_like(mean))
            )
            n, c, h, w = x.shape
            _run_kernel(
                ctx.kernels, "bn_pool_relu_backward", x.dtype,
                grad_out, out, argmax, x, weight, mean, invstd, n, c, h, w, grad_x, grad_weight, grad_bias,
            )  # fmt: skip
        if weight is None:
            grad_weight = grad_bias = None
        return grad_x, grad_weight, grad_bias, None, None


class EpisodeBatchNormPoolReLU(EpisodeBatchNorm2d):
    """:class:`EpisodeBatchNorm2d`, then :class:`MaxPool2x2`, then ReLU, as one layer (the max-pool Conv-4's layer
    after each convolution; fastadapt.engine.fastlayers fuses the three where it finds them). On a CPU, for
    channels-last float images outside ``torch.func`` transforms and ``torch.compile``, it runs fastadapt's C++ kernel
    (:mod:`fastadapt.engine.native`): two passes for the statistics and one over the pooling windows forward, one over
    the windows and one writing the input's gradient backward, where the three layers took about nine. Everywhere
    else, and without a C++ compiler, it runs the three layers. Same values and gradients either way (tested)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return episode_batch_norm_pool_relu(x, self.weight, self.bias, self.eps)


def episode_batch_norm_pool_relu(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> torch.Tensor:
    """:class:`EpisodeBatchNormPoolReLU`'s function."""
    kernels = None
    if _eager_cpu(x) and x.dtype in _KERNEL_SUFFIX and min(x.shape[-2:]) >= 2:
        if x.is_contiguous(memory_format=torch.channels_last) and (weight is None or weight.dtype == x.dtype):
            kernels = native.library()
    if kernels is None:
        return F.relu(max_pool_2x2(episode_batch_norm(x, weight, bias, eps)))
    return _EpisodeBatchNormPoolReLU.apply(x, weight, bias, eps, kernels)


# Normalisation layers whose affine weights torch's vmap batching differentiates wrongly twice. Measured with torch
# 2.13 (bench/vmap_double_backward.py, docs/performance.md): second-order MAML meta-gradients under ``vmap`` were
# 1e-4 to 4e-3 (relative, float64) away from the per-task loop's with nn.LayerNorm, nn.BatchNorm1d/2d (batch
# statistics) and nn.InstanceNorm1d/2d, each with affine weights; without them, and for nn.GroupNorm and
# nn.RMSNorm, they agreed to 1e-15. The layers below compute the same function: torch's kernels outside
# ``torch.func`` transforms, and inside them the normalisation written from means, whose batching is exact.


def _normalise(
    x: torch.Tensor,
    dims: tuple[int, ...],
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    affine_shape: tuple[int, ...],
) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) over ``dims`` (biased variance), then ``* weight + bias`` viewed as
    ``affine_shape``: the decomposed form of every normalisation layer here."""
    mean = x.mean(dim=dims, keepdim=True)
    centred = x - mean
    normalised = centred * torch.rsqrt(centred.square().mean(dim=dims, keepdim=True) + eps)
    if weight is not None:
        normalised = normalised * weight.view(affine_shape)
    if bias is not None:
        normalised = normalised + bias.view(affine_shape)
    return normalised


class EpisodeBatchNorm1d(_PerChannelNorm):
    """``nn.BatchNorm1d(track_running_stats=False)``: batch statistics always, over (N,) or (N, L), for (N, C) or
    (N, C, L) inputs. torch's kernel outside ``torch.func`` transforms, the mean/var form inside them."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _under_transform(x, self.weight, self.bias):
            return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
        dims = (0, *range(2, x.dim()))
        return _normalise(x, dims, self.weight, self.bias, self.eps, (1, -1, *[1] * (x.dim() - 2)))


class VmapSafeLayerNorm(nn.Module):
    """``nn.LayerNorm`` over the last ``len(normalized_shape)`` dimensions, elementwise weight and optional bias.
    torch's kernel outside ``torch.func`` transforms, the mean/var form inside them."""

    def __init__(
        self, normalized_shape: tuple[int, ...], eps: float = 1e-5, elementwise_affine: bool = True, bias: bool = True
    ) -> None:
        super().__init__()
        self.normalized_shape = tuple(normalized_shape)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(self.normalized_shape)) if elementwise_affine else None
        self.bias = nn.Parameter(torch.zeros(self.normalized_shape)) if elementwise_affine and bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _under_transform(x, self.weight, self.bias):
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        dims = tuple(range(-len(self.normalized_shape), 0))
        return _normalise(x, dims, self.weight, self.bias, self.eps, self.normalized_shape)


class VmapSafeInstanceNorm(_PerChannelNorm):
    """``nn.InstanceNorm1d/2d/3d(affine=True, track_running_stats=False)``: each example's channels normalised over
    their ``spatial_dims`` positions, batched (N, C, ...) or unbatched (C, ...) inputs. torch's kernel outside
    ``torch.func`` transforms, the mean/var form inside them."""

    def __init__(self, num_features: int, spatial_dims: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__(num_features, eps, affine)
        self.spatial_dims = spatial_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        unbatched = x.dim() == self.spatial_dims + 1
        if unbatched:
            x = x.unsqueeze(0)
        if not _under_transform(x, self.weight, self.bias):
            y = F.instance_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
        else:
            dims = tuple(range(2, x.dim()))
            y = _normalise(x, dims, self.weight, self.bias, self.eps, (1, -1, *[1] * self.spatial_dims))
        return y.squeeze(0) if unbatched else y
