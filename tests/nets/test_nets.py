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


def test_conv4_width_is_read_from_the_network_name():
    from fastadapt.errors import ConfigError
    from fastadapt.nets import build_network
    from fastadapt.nets.conv import conv4_filters

    assert [conv4_filters(n) for n in ("conv4", "conv4-32", "conv4-96")] == [64, 32, 96]
    assert [conv4_filters(n) for n in ("conv4-stride", "conv4-0", "conv4-", "resnet12", None)] == [None] * 5
    net = build_network("conv4-96", 1, 28, None, norm="running")
    assert net.out_features == 96 and net(torch.zeros(2, 1, 28, 28)).shape == (2, 96)
    with pytest.raises(ConfigError, match="conv4-N"):
        build_network("conv4-wide", 1, 28, None, norm="running")
