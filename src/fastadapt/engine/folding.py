"""Tasks folded into channels: the networks of T tasks, each with its own weights, run as one network.

In MAML's inner loops every task has its own weights theta_i, so a chunk of T tasks is T small networks. Here
their activations lie side by side in the channel dimension, ``(N, T*C, H, W)`` for N examples per task, with
task i's channels at ``i*C .. (i+1)*C``. Then

- a convolution with per-task weights is one grouped convolution (``groups=T``);
- batch norm with each task's own statistics is ordinary batch norm over ``T*C`` channels (fastadapt's episode
  batch norm, with its closed-form double backward and, for the max-pool Conv-4, its fused C++ kernel);
- a linear layer is one batched matrix product over the tasks;
- element-wise layers, pooling, spatial means and ``flatten(1)`` act per channel and need no change.

Each task's loss depends on its own weights only, so the gradient of the sum of the T losses with respect to the
stacked ``(T, ...)`` weights holds each task's own gradient: the inner loop is plain autograd
(``torch.autograd.grad``, ``create_graph=True`` for second order) on ordinary tensors. That is what ``vmap`` does
for this network, without torch.func's wrapping of every operation, and with the batch-norm kernels that cannot run
under ``vmap``.

The network is read with ``torch.fx``. Only the layers and operations above are accepted, so that nothing mixes
the tasks' channels; anything else raises :class:`NotFoldable`, naming it, and ``strategy="auto"`` then does not
try folding (fastadapt.engine.strategy).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from fastadapt.engine.functional import Params
from fastadapt.engine.layers import (
    EpisodeBatchNorm1d,
    EpisodeBatchNorm2d,
    EpisodeBatchNormPoolReLU,
    MaxPool2x2,
    VmapSafeInstanceNorm,
    VmapSafeLayerNorm,
    episode_batch_norm,
    episode_batch_norm_pool_relu,
)


class NotFoldable(Exception):
    """The network has a layer or an operation that folding cannot run per task."""


#: Layers without parameters that act on each channel (or each element) alone.
_PER_CHANNEL_LAYERS = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Identity,
    nn.Dropout,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    MaxPool2x2,
)
_KNOWN_LAYERS = (
    nn.Conv2d,
    nn.Linear,
    nn.BatchNorm2d,
    nn.Flatten,
    EpisodeBatchNorm2d,
    EpisodeBatchNormPoolReLU,
    *_PER_CHANNEL_LAYERS,
)
_PER_CHANNEL_FUNCTIONS = {
    torch.relu,
    torch.sigmoid,
    torch.tanh,
    F.relu,
    F.leaky_relu,
    F.elu,
    F.gelu,
    F.silu,
    F.dropout,
    F.max_pool2d,
    F.avg_pool2d,
    F.adaptive_avg_pool2d,
    F.adaptive_max_pool2d,
}
_PER_CHANNEL_METHODS = {"relu", "sigmoid", "tanh", "contiguous"}
_BINARY = {operator.add, operator.sub, operator.mul, operator.truediv, torch.add, torch.sub, torch.mul}
_REDUCTIONS = {"mean", "sum", "amax"}


class _Leaves(fx.Tracer):
    """Traces into user modules, but keeps torch's layers and fastadapt's as single calls."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        fastadapt_layers = (EpisodeBatchNorm2d, MaxPool2x2, EpisodeBatchNorm1d, VmapSafeLayerNorm, VmapSafeInstanceNorm)
        return isinstance(module, fastadapt_layers) or super().is_leaf_module(module, qualified_name)


def _dims(args: Sequence[Any], kwargs: Mapping[str, Any], name: str) -> tuple[int, ...] | None:
    dims = kwargs.get(name, args[0] if args else None)
    return None if dims is None else tuple(dims) if isinstance(dims, (tuple, list)) else (dims,)


def _check_reduction(dims: tuple[int, ...] | None, ndim: int) -> None:
    if dims is None or {d % ndim for d in dims} & {0, 1}:
        raise NotFoldable(f"a reduction over dims {dims} of a {ndim}-d activation mixes examples or channels")


def _check_flatten(start: int, end: int, call: str) -> None:
    # flatten(1) keeps each example's row; any other range would mix examples with the tasks' channels.
    if start != 1 or end != -1:
        raise NotFoldable(f"{call}({start}, {end}); only flattening from dim 1 to the end")


def fold_params(params: Mapping[str, Tensor], tasks: int) -> Params:
    """Every task's starting weights, stacked: ``(tasks, *shape)`` views of the shared ``params``."""
    return {name: p.expand(tasks, *p.shape) for name, p in params.items()}


class FoldedNetwork:
    """``module`` run for T tasks at once: ``folded(params, x)`` with ``params[name]`` of shape ``(T, *shape)`` (or
    the module's own shape, shared by all tasks) and ``x`` of shape ``(T, N, ...)`` gives ``(T, N, ...)``, the
    same as ``torch.stack([functional_call(module, params_i, x_i) for i in range(T)])`` (tested), for the layers
    and operations of the module docstring. Raises :class:`NotFoldable` at construction for anything else."""

    def __init__(self, module: nn.Module) -> None:
        try:
            graph = _Leaves().trace(module)
        except Exception as error:  # control flow on tensor values, say
            raise NotFoldable(f"torch.fx cannot trace the network ({error})") from None
        self.module = module
        self.nodes = list(graph.nodes)
        self.shapes = {name: p.shape for name, p in module.named_parameters()}
        placeholders = [node for node in self.nodes if node.op == "placeholder"]
        if len(placeholders) != 1:
            raise NotFoldable(f"the network takes {len(placeholders)} inputs; folding runs networks of one input")
        for node in self.nodes:
            self._check(node)

    def _check(self, node: fx.Node) -> None:
        if node.op == "call_module":
            layer = self.module.get_submodule(node.target)
            if isinstance(layer, nn.Conv2d) and layer.padding_mode != "zeros":
                raise NotFoldable(f"{node.target}: a convolution with padding_mode={layer.padding_mode!r}")
            if isinstance(layer, nn.BatchNorm2d) and layer.track_running_stats:
                raise NotFoldable(f"{node.target}: a batch norm with running statistics, which the tasks would share")
            if isinstance(layer, nn.Flatten):
                _check_flatten(layer.start_dim, layer.end_dim, f"{node.target}: nn.Flatten")
            if type(layer) not in _KNOWN_LAYERS:
                raise NotFoldable(f"{node.target}: {type(layer).__name__} is not a layer folding knows")
        elif node.op == "call_function":
            if node.target not in _PER_CHANNEL_FUNCTIONS | _BINARY | {torch.flatten, torch.mean, torch.sum}:
                raise NotFoldable(f"the operation {getattr(node.target, '__name__', node.target)}")
        elif node.op == "call_method":
            if node.target not in _PER_CHANNEL_METHODS | _REDUCTIONS | {"flatten"}:
                raise NotFoldable(f"the tensor method .{node.target}()")
        elif node.op == "get_attr":
            raise NotFoldable(f"{node.target}, a parameter or buffer used outside a layer")

    def __call__(self, params: Mapping[str, Tensor], x: Tensor, channels_last: bool = False) -> Tensor:
        tasks, examples = x.shape[:2]
        given = {**dict(self.module.named_parameters()), **params}  # frozen weights stay the module's own
        stacked = {
            name: p if p.dim() > len(self.shapes[name]) else p.expand(tasks, *p.shape) for name, p in given.items()
        }
        values: dict[str, Any] = {}
        folded = x.transpose(0, 1).reshape(examples, tasks * x.shape[2], *x.shape[3:])
        if channels_last and folded.dim() == 4:
            folded = folded.contiguous(memory_format=torch.channels_last)
        output: Any = None
        for node in self.nodes:
            args = fx.node.map_arg(node.args, lambda n: values[n.name])
            kwargs = fx.node.map_arg(node.kwargs, lambda n: values[n.name])
            if node.op == "placeholder":
                values[node.name] = folded
            elif node.op == "call_module":
                values[node.name] = self._layer(node.target, stacked, tasks, *args, **kwargs)
            elif node.op == "call_function":
                values[node.name] = self._function(node.target, args, kwargs)
            elif node.op == "call_method":
                values[node.name] = self._method(node.target, args, kwargs)
            elif node.op == "output":
                output = args[0]
        if not isinstance(output, Tensor):
            raise NotFoldable("the network returns something other than one tensor")
        return output.reshape(examples, tasks, -1, *output.shape[2:]).transpose(0, 1)  # (T, N, C, ...)

    def _layer(self, name: str, params: Params, tasks: int, x: Tensor) -> Tensor:
        layer = self.module.get_submodule(name)
        weight, bias = params.get(f"{name}.weight"), params.get(f"{name}.bias")
        flat = lambda t: None if t is None else t.reshape(-1, *t.shape[2:])  # (T, C, ...) -> (T*C, ...)
        if isinstance(layer, nn.Conv2d):
            return F.conv2d(
                x, flat(weight), flat(bias), layer.stride, layer.padding, layer.dilation, layer.groups * tasks
            )
        if isinstance(layer, nn.Linear):
            if x.dim() != 2:
                raise NotFoldable(f"{name}: a linear layer on a {x.dim()}-d activation")
            per_task = x.view(x.shape[0], tasks, -1).transpose(0, 1)  # (T, N, in)
            transposed = weight.transpose(1, 2)
            out = (
                torch.bmm(per_task, transposed)
                if bias is None
                else torch.baddbmm(bias.unsqueeze(1), per_task, transposed)
            )
            return out.transpose(0, 1).reshape(x.shape[0], -1)
        if isinstance(layer, EpisodeBatchNormPoolReLU):
            return episode_batch_norm_pool_relu(x, flat(weight), flat(bias), layer.eps)
        if isinstance(layer, EpisodeBatchNorm2d):
            return episode_batch_norm(x, flat(weight), flat(bias), layer.eps)
        if isinstance(layer, nn.BatchNorm2d):
            return F.batch_norm(x, None, None, flat(weight), flat(bias), True, 0.0, layer.eps)
        return layer(x)  # per channel, no parameters (checked at construction)

    @staticmethod
    def _function(target: Callable, args: tuple, kwargs: dict) -> Any:
        if target in _BINARY:
            a, b = args[:2]
            if isinstance(a, Tensor) and isinstance(b, Tensor) and a.shape != b.shape:
                raise NotFoldable(f"{target.__name__} of activations shaped {tuple(a.shape)} and {tuple(b.shape)}")
        elif target is torch.flatten:
            start = kwargs.get("start_dim", args[1] if len(args) > 1 else 0)
            end = kwargs.get("end_dim", args[2] if len(args) > 2 else -1)
            _check_flatten(start, end, "torch.flatten")
        elif target in (torch.mean, torch.sum):
            _check_reduction(_dims(args[1:], kwargs, "dim"), args[0].dim())
        return target(*args, **kwargs)

    @staticmethod
    def _method(name: str, args: tuple, kwargs: dict) -> Any:
        x, rest = args[0], args[1:]
        if name in _REDUCTIONS:
            _check_reduction(_dims(rest, kwargs, "dim"), x.dim())
        elif name == "flatten":
            start = kwargs.get("start_dim", rest[0] if rest else 0)
            end = kwargs.get("end_dim", rest[1] if len(rest) > 1 else -1)
            _check_flatten(start, end, "x.flatten")
        return getattr(x, name)(*rest, **kwargs)
