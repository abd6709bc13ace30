"""A user's network with torch's layers swapped for fastadapt's equivalents, where that is exact.

The MAML family runs a user's ``nn.Module`` through :func:`with_fast_layers` (``fast_layers=True``, the default).
The swaps compute the same function, gradients and second derivatives (tested), and keep every parameter and
its name, so checkpoints and optimisers see the same network:

- ``nn.BatchNorm2d(track_running_stats=False)``, batch statistics always (MAML's reference code and
  learn2learn's Conv-4), becomes :class:`~fastadapt.nets.EpisodeBatchNorm2d`. This is about correctness as well as
  speed: under ``vmap`` torch's batch-norm kernel gives a wrong second-order meta-gradient, and the replacement
  is exact there. Batch norms that keep running statistics are left alone.
- For the same reason (torch's ``vmap`` differentiates their affine weights wrongly twice; bench/
  vmap_double_backward.py), ``nn.BatchNorm1d(track_running_stats=False)`` becomes
  :class:`~fastadapt.engine.layers.EpisodeBatchNorm1d`, ``nn.LayerNorm`` with a weight becomes
  :class:`~fastadapt.engine.layers.VmapSafeLayerNorm`, and ``nn.InstanceNorm1d/2d/3d(affine=True)`` without running
  statistics becomes :class:`~fastadapt.engine.layers.VmapSafeInstanceNorm`. Each runs torch's kernel outside
  ``torch.func`` transforms, so only ``vmap`` sees a difference: the right meta-gradient.
- ``nn.MaxPool2d(2)`` (2x2 windows, stride 2, no padding) becomes :class:`~fastadapt.engine.layers.MaxPool2x2`,
  about 2x faster on a CPU forward plus backward (docs/performance.md).
- In an ``nn.Sequential``, a ReLU (or a leaky ReLU) directly followed by that pooling is run after it instead:
  max commutes with a non-decreasing map, so the values and the gradient are the same, and the ReLU and its
  backward pass touch a quarter of the activations.
- In an ``nn.Sequential``, that batch norm, pooling and ReLU in a row (after the move above) become one
  :class:`~fastadapt.engine.layers.EpisodeBatchNormPoolReLU`, which runs fastadapt's C++ kernel on a CPU
  (fastadapt.engine.native): 1.8-2.5x faster forward plus backward for the max-pool Conv-4's layers on channels-last
  images (docs/performance.md). It takes the batch norm's place, so its parameters keep their names;
  the pooling and the ReLU become ``nn.Identity``.

Only layers of exactly these types, without hooks, are swapped (a subclass may change ``forward``). The
network returned shares the original's parameters and buffers; modules on the path to a swapped layer are
copies, everything else is the original's own module. Without anything to swap, the network itself is returned.
"""

from __future__ import annotations

from torch import nn

from fastadapt.engine.layers import (
    EpisodeBatchNorm1d,
    EpisodeBatchNorm2d,
    EpisodeBatchNormPoolReLU,
    MaxPool2x2,
    VmapSafeInstanceNorm,
    VmapSafeLayerNorm,
)
from fastadapt.engine.taskpool import shallow_replica

#: Non-decreasing activations, which commute with max pooling.
_MONOTONE = (nn.ReLU, nn.LeakyReLU)


def _pair(value: int | tuple[int, ...]) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _has_hooks(layer: nn.Module) -> bool:
    return bool(layer._forward_hooks or layer._forward_pre_hooks or layer._backward_hooks or layer._backward_pre_hooks)


def _is_pool_2x2(layer: nn.Module) -> bool:
    return type(layer) is nn.MaxPool2d and (
        _pair(layer.kernel_size) == (2, 2)
        and _pair(layer.stride or layer.kernel_size) == (2, 2)
        and _pair(layer.padding) == (0, 0)
        and _pair(layer.dilation) == (1, 1)
        and not layer.ceil_mode
        and not layer.return_indices
    )


#: Instance norms by their number of spatial dimensions.
_INSTANCE_NORMS = {nn.InstanceNorm1d: 1, nn.InstanceNorm2d: 2, nn.InstanceNorm3d: 3}


def _sharing_weights(fast: nn.Module, layer: nn.Module) -> nn.Module:
    """``fast`` holding ``layer``'s own weight and bias (None where it has none), in its training mode."""
    fast.weight, fast.bias = layer.weight, layer.bias
    return fast.train(layer.training)


def fast_equivalent(layer: nn.Module) -> nn.Module | None:
    """fastadapt's equivalent of ``layer``, sharing its parameters; None where there is none."""
    if _has_hooks(layer):
        return None
    kind = type(layer)
    if kind in (nn.BatchNorm1d, nn.BatchNorm2d) and not layer.track_running_stats:
        norm = EpisodeBatchNorm2d if kind is nn.BatchNorm2d else EpisodeBatchNorm1d
        return _sharing_weights(norm(layer.num_features, eps=layer.eps, affine=False), layer)
    if kind is nn.LayerNorm and layer.elementwise_affine:
        return _sharing_weights(VmapSafeLayerNorm(layer.normalized_shape, layer.eps, elementwise_affine=False), layer)
    if kind in _INSTANCE_NORMS and layer.affine and not layer.track_running_stats:
        fast = VmapSafeInstanceNorm(layer.num_features, _INSTANCE_NORMS[kind], eps=layer.eps, affine=False)
        return _sharing_weights(fast, layer)
    if _is_pool_2x2(layer):
        return MaxPool2x2().train(layer.training)
    return None


def _pool_first(children: list[nn.Module]) -> bool:
    """Move each ReLU that is directly followed by a 2x2 max pool behind it, in place; True if any moved."""
    moved = False
    for i in range(len(children) - 1):
        activation, pool = children[i], children[i + 1]
        if type(activation) in _MONOTONE and not _has_hooks(activation) and type(pool) is MaxPool2x2:
            if getattr(activation, "negative_slope", 0.0) >= 0:
                children[i], children[i + 1] = pool, activation
                moved = True
    return moved


def _fuse_norm_pool_relu(children: list[nn.Module]) -> bool:
    """Replace each run of EpisodeBatchNorm2d, MaxPool2x2, ReLU by one EpisodeBatchNormPoolReLU (sharing the batch
    norm's parameters, in its place, so that their names stay) and two identities, in place; True if any."""
    fused = False
    for i in range(len(children) - 2):
        norm, pool, activation = children[i : i + 3]
        if type(norm) is EpisodeBatchNorm2d and type(pool) is MaxPool2x2 and type(activation) is nn.ReLU:
            if not any(_has_hooks(layer) for layer in (norm, activation)):
                layer = EpisodeBatchNormPoolReLU(norm.num_features, eps=norm.eps, affine=norm.weight is not None)
                layer.weight, layer.bias = norm.weight, norm.bias
                children[i : i + 3] = [layer.train(norm.training), nn.Identity(), nn.Identity()]
                fused = True
    return fused


def with_fast_layers(model: nn.Module) -> nn.Module:
    """``model`` with its swappable layers replaced (see the module docstring); ``model`` itself is unchanged."""
    children = {name: None if child is None else with_fast_layers(child) for name, child in model._modules.items()}
    for name, child in children.items():
        fast = None if child is None else fast_equivalent(child)
        if fast is not None:
            children[name] = fast
    if type(model) is nn.Sequential and not _has_hooks(model):
        order = list(children.values())
        if _pool_first(order) | _fuse_norm_pool_relu(order):
            children = dict(zip(children, order))
    if all(children[name] is child for name, child in model._modules.items()):
        return model
    copy = shallow_replica(model)  # its submodules are the ones above: copied where something was swapped
    copy._modules = children
    return copy
