"""ResNet-12 and the registered backbone names (conv4-32, resnet12)."""

import pytest
import torch

from fastadapt.algorithms import build_algorithm
from fastadapt.config import make_config
from fastadapt.engine.layers import EpisodeBatchNorm2d
from fastadapt.errors import ConfigError
from fastadapt.nets import NETWORKS, ResNet12, build_network
from fastadapt.nets.resnet import ResidualBlock


def test_resnet12_has_the_tadam_metaoptnet_shape():
    net = ResNet12(3)
    blocks = [m for m in net.modules() if isinstance(m, ResidualBlock)]
    assert len(blocks) == 4
    assert [b.shortcut[0].out_channels for b in blocks] == [64, 160, 320, 640]
    convs3 = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs3) == 12  # the "12" of ResNet-12 (plus the 1x1 shortcuts)
    leaky = [m for m in net.modules() if isinstance(m, torch.nn.LeakyReLU)]
    assert leaky and all(m.negative_slope == 0.1 for m in leaky)
    assert net.out_features == 640


def test_resnet12_on_84_and_28_pixel_inputs():
    small = ResNet12(3, widths=(4, 8, 8, 16))
    assert small.features(torch.zeros(2, 3, 84, 84)).shape == (2, 16, 5, 5)
    assert small(torch.zeros(2, 3, 84, 84)).shape == (2, 16)
    gray = ResNet12(1, widths=(4, 8, 8, 16), num_classes=5)
    assert gray(torch.zeros(3, 1, 28, 28)).shape == (3, 5)


def test_resnet12_residual_block_adds_the_projected_input():
    block = ResidualBlock(2, 3).eval()
    x = torch.randn(1, 2, 4, 4)
    expected = block.pool(torch.nn.functional.leaky_relu(block.body(x) + block.shortcut(x), 0.1))
    torch.testing.assert_close(block(x), expected)


def test_resnet12_rejects_wrong_widths():
    with pytest.raises(ValueError, match="four positive"):
        ResNet12(3, widths=(64, 128))


@pytest.mark.parametrize("network", ["conv4-32", "resnet12"])
def test_registered_networks_build_for_metric_and_gradient_methods(network):
    assert network in NETWORKS
    proto = build_network(network, 1, 28, None, norm="running")
    assert proto(torch.zeros(2, 1, 28, 28)).dim() == 2
    maml = build_algorithm(make_config("maml", "omniglot", network=network, ways=5))
    assert maml.model(torch.zeros(2, 1, 28, 28)).shape == (2, 5)
    # MAML adapts per episode: its networks use episode batch statistics.
    assert any(isinstance(m, EpisodeBatchNorm2d) for m in maml.model.modules())


def test_conv4_32_has_32_filters():
    net = build_network("conv4-32", 1, 28, None, norm="running")
    assert {m.out_channels for m in net.modules() if isinstance(m, torch.nn.Conv2d)} == {32}
    assert net(torch.zeros(1, 1, 28, 28)).shape == (1, 32)


def test_small_images_are_refused_with_a_clear_error():
    with pytest.raises(ConfigError, match="image-size of at least 16"):
        build_network("resnet12", 1, 12, None, norm="running")
