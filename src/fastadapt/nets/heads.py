"""Networks over feature vectors (sentence embeddings, fixed image features), by name.

- ``identity``: the vectors as they are (ProtoNet: nearest prototype in the encoder's own space; nothing to train);
- ``residual-H``: s * (x + W2 relu(W1 x + b1) + b2), :class:`ResidualHead`, an embedding that starts as the identity;
- ``linear``: one linear layer to the outputs (a classifier head with one output per way: MAML);
- ``mlp-H``: a linear layer of H hidden units with ReLU, then a linear layer to the outputs.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fastadapt.errors import ConfigError
from fastadapt.nets.mlp import MLP

#: The names of the networks over vectors (H: a number of hidden units, e.g. mlp-256).
HEADS = ("identity", "residual-H", "linear", "mlp-H")
HEAD_HELP = "identity or residual-H for an embedding (protonet), linear or mlp-H for a classifier (maml)"


class ResidualHead(nn.Module):
    """s * (x + W2 relu(W1 x + b1) + b2), with W2 and b2 starting at zero (the identity) and a learned scale s.

    s sets the softmax temperature of ProtoNet's squared distances (they scale by s^2); it starts at 3, as unit-norm
    sentence embeddings are at squared distances below 4 from each other and would give a near-uniform softmax."""

    def __init__(self, dim: int, hidden: int, scale: float = 3.0) -> None:
        super().__init__()
        self.inner = nn.Linear(dim, hidden)
        self.outer = nn.Linear(hidden, dim)
        nn.init.zeros_(self.outer.weight)
        nn.init.zeros_(self.outer.bias)
        self.scale = nn.Parameter(torch.tensor(float(scale)))

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * (x + self.outer(torch.relu(self.inner(x))))


def is_head(name: str) -> bool:
    """Whether ``name`` names a network over vectors."""
    return name in ("identity", "linear") or name.startswith(("residual-", "mlp-"))


def _hidden_units(name: str, prefix: str) -> int:
    tail = name[len(prefix) :]
    if not tail.isdigit() or int(tail) < 1:
        raise ConfigError(f"--network {name}: the number of hidden units must be a positive integer, e.g. {prefix}256.")
    return int(tail)


def build_head(name: str, in_features: int, num_outputs: int | None) -> nn.Module:
    """The network ``name`` over ``in_features``-dimensional vectors: an embedding (``num_outputs=None``: identity,
    residual-H) or a classifier with ``num_outputs`` outputs (linear, mlp-H)."""
    if num_outputs is None:
        if name == "identity":
            return nn.Identity()
        if name.startswith("residual-"):
            return ResidualHead(in_features, _hidden_units(name, "residual-"))
    else:
        if name == "linear":
            return nn.Linear(in_features, num_outputs)
        if name.startswith("mlp-"):
            return MLP(in_features, (_hidden_units(name, "mlp-"),), num_outputs)
    wanted = "an embedding" if num_outputs is None else "a classifier"
    raise ConfigError(f"--network {name} is not {wanted} over vectors here; use {HEAD_HELP}.")
