"""Networks over feature vectors: identity, residual-H, linear, mlp-H (fastadapt.nets.heads)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fastadapt.algorithms.metric.protonet import ProtoNet
from fastadapt.errors import ConfigError
from fastadapt.nets import build_network
from fastadapt.nets.heads import ResidualHead
from fastadapt.tasks.episodes import TaskBatch


def test_heads_by_name():
    assert isinstance(build_network("identity", None, None, None, "running", in_features=12), nn.Identity)
    residual = build_network("residual-16", None, None, None, "running", in_features=12)
    assert isinstance(residual, ResidualHead) and residual.inner.out_features == 16
    linear = build_network("linear", None, None, 5, "episode", in_features=12)
    assert isinstance(linear, nn.Linear) and (linear.in_features, linear.out_features) == (12, 5)
    mlp = build_network("mlp-8", None, None, 5, "episode", in_features=12)
    assert mlp(torch.zeros(3, 12)).shape == (3, 5) and mlp[0].out_features == 8


def test_residual_head_starts_as_a_scaled_identity():
    g = torch.Generator().manual_seed(0)
    batch = TaskBatch(torch.randn(2, 6, 12, generator=g), torch.arange(3).repeat(2, 2), torch.randn(2, 4, 12),
                      torch.zeros(2, 4, dtype=torch.long), 3)  # fmt: skip
    head = ResidualHead(12, 16, scale=3.0)
    assert torch.equal(head(batch.support_x), 3.0 * batch.support_x)
    plain = ProtoNet(nn.Identity()).predict(batch)
    assert torch.allclose(ProtoNet(head).predict(batch), 9.0 * plain, atol=1e-4)  # squared distances scale by s^2


@pytest.mark.parametrize(
    ("network", "outputs", "features", "message"),
    [
        ("linear", None, 12, "is not an embedding over vectors"),
        ("identity", 5, 12, "is not a classifier over vectors"),
        ("residual-x", None, 12, "hidden units must be a positive integer"),
        ("mlp-0", 5, 12, "hidden units must be a positive integer"),
        ("conv4", 5, 12, "does not take vectors"),
        ("linear", 5, None, "takes vectors"),
    ],
)
def test_wrong_heads_are_one_line(network, outputs, features, message):
    with pytest.raises(ConfigError, match=message) as error:
        build_network(network, 1, 28, outputs, "episode", in_features=features)
    assert "\n" not in str(error.value)
