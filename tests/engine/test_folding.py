"""Tasks folded into channels (fastadapt.engine.folding): the same outputs, gradients and meta-gradients as each task's
network run on its own, and a clear refusal for whatever would mix the tasks."""

import pytest
import torch
from helpers import image_batch, meta_gradient, relative_error, vector_batch
from torch import nn
from torch.func import functional_call

from fastadapt.algorithms import ANIL, MAML, MAMLPlusPlus, MetaSGD, Reptile
from fastadapt.engine.fastlayers import with_fast_layers
from fastadapt.engine.folding import FoldedNetwork, NotFoldable, fold_params
from fastadapt.errors import ConfigError
from fastadapt.nets import MLP, Conv4, Conv4Stride
from fastadapt.nets.resnet import ResNet12


class TorchConv4(nn.Module):
    """torch's layers, a user's forward (spatial mean or flatten), as in bench/speed_maml.py."""

    def __init__(self, strided: bool, hidden: int = 6) -> None:
        super().__init__()
        self.strided = strided
        layers: list[nn.Module] = []
        for i in range(3):
            layers += [
                nn.Conv2d(1 if i == 0 else hidden, hidden, 3, stride=2 if strided else 1, padding=1),
                nn.BatchNorm2d(hidden, track_running_stats=False),
                nn.ReLU(),
            ]
            layers += [] if strided else [nn.MaxPool2d(2)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(hidden * (1 if strided else 4), 3)

    def forward(self, x):
        features = self.features(x)
        return self.head(features.mean(dim=(2, 3)) if self.strided else features.flatten(1))


class Grouped(nn.Module):
    """A grouped convolution without bias, a residual sum, average pooling and torch.flatten."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.grouped = nn.Conv2d(4, 4, 3, padding=1, groups=2, bias=False)
        self.head = nn.Linear(4 * 8 * 8, 2, bias=False)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        h = torch.tanh(h + self.grouped(h)) * 0.5
        return self.head(torch.flatten(nn.functional.avg_pool2d(h, 2), 1))


def all_gradients(learner, batch):
    """The meta-gradient of every meta-learned tensor (MAML++'s included), through ``meta_backward``: chunks of
    tasks and workers as in training."""
    learner.zero_grad(set_to_none=True)
    learner.meta_backward(batch)
    return {name: p.grad.clone() for name, p in learner.named_parameters() if p.grad is not None}


def per_task(module, params, x):
    return torch.stack([functional_call(module, {k: v[i] for k, v in params.items()}, (x[i],)) for i in range(len(x))])


NETWORKS = {
    "conv4-stride": lambda: Conv4Stride(1, 6, 3),
    "conv4 (fused kernel)": lambda: with_fast_layers(Conv4(1, 6, 3, norm="episode", image_size=16)),
    "torch strided": lambda: TorchConv4(True),
    "torch pooled": lambda: with_fast_layers(TorchConv4(False)),
    "torch pooled, torch's layers": lambda: TorchConv4(False),
    "grouped": Grouped,
    "resnet-12 (residual sums)": lambda: ResNet12(1, (4, 4, 6, 6), num_classes=3, norm="episode"),
}


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("name", list(NETWORKS))
def test_folded_network_equals_each_task_on_its_own(name, channels_last):
    torch.manual_seed(0)
    module = NETWORKS[name]().double()
    tasks = 3
    params = {k: p + 0.1 * torch.randn(tasks, *p.shape, dtype=p.dtype) for k, p in module.named_parameters()}
    x = torch.randn(tasks, 4, 1, 16, 16, dtype=torch.float64)
    folded = FoldedNetwork(module)(params, x, channels_last=channels_last)
    torch.testing.assert_close(folded, per_task(module, params, x))
    # the gradient of the summed outputs with respect to the stacked weights: each task's own
    weights = list(params.values())
    got = torch.autograd.grad(folded.square().sum(), weights)
    expected = torch.autograd.grad(per_task(module, params, x).square().sum(), weights)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)


def test_frozen_weights_are_the_modules_own():
    """A weight left out of ``params`` (frozen: not meta-learned) is the module's own, shared by the tasks."""
    torch.manual_seed(6)
    module = Conv4Stride(1, 4, 3).double()
    module.features[0].weight.requires_grad_(False)
    tasks = 2
    params = {k: p.expand(tasks, *p.shape) + 0.0 for k, p in module.named_parameters() if p.requires_grad}
    x = torch.randn(tasks, 3, 1, 16, 16, dtype=torch.float64)
    torch.testing.assert_close(FoldedNetwork(module)(params, x), per_task(module, params, x))


def test_shared_weights_are_broadcast_and_vectors_fold_too():
    torch.manual_seed(1)
    module = MLP(2, (5, 5), 1).double()
    x = torch.randn(4, 7, 2, dtype=torch.float64)
    stacked = fold_params(dict(module.named_parameters()), 4)
    shared = dict(module.named_parameters())
    folded = FoldedNetwork(module)
    torch.testing.assert_close(folded(stacked, x), folded(shared, x))
    torch.testing.assert_close(folded(shared, x), per_task(module, stacked, x))


@pytest.mark.parametrize(
    "module, problem",
    [
        (nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)), "running statistics"),
        (nn.Sequential(nn.Linear(2, 3), nn.Softmax(dim=-1)), "Softmax"),
        (nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect")), "padding_mode"),
        (nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(0)), "Flatten"),
    ],
)
def test_layers_that_would_mix_tasks_are_refused_by_name(module, problem):
    with pytest.raises(NotFoldable, match=problem):
        FoldedNetwork(module)


class ChannelMean(nn.Module):
    def forward(self, x):
        return x.mean(dim=1)


class Reshaped(nn.Module):
    def forward(self, x):
        return x.view(x.shape[0], -1)


class FlattenedAll(nn.Module):
    def __init__(self, method: bool):
        super().__init__()
        self.method = method

    def forward(self, x):
        return x.flatten() if self.method else torch.flatten(x)


def test_operations_that_would_mix_tasks_are_refused():
    with pytest.raises(NotFoldable, match="reduction over dims"):
        FoldedNetwork(ChannelMean())(dict(), torch.randn(2, 3, 4, 5, 5))
    for method, call in ((True, "x.flatten"), (False, "torch.flatten")):
        with pytest.raises(NotFoldable, match=rf"{call}\(0, -1\); only flattening from dim 1"):
            FoldedNetwork(FlattenedAll(method))(dict(), torch.randn(2, 3, 4, 5, 5))
    with pytest.raises(NotFoldable):
        FoldedNetwork(Reshaped())


@pytest.mark.parametrize("first_order", [False, True])
def test_maml_plus_plus_switches_and_meta_sgd_fold_exactly(first_order):
    """Per-step batch-norm weights (shared by the tasks), per-step learning rates and the multi-step loss; Meta-SGD's
    per-parameter learning rates."""
    torch.manual_seed(2)
    batch = image_batch(tasks=3)
    options = dict(multi_step_loss=True, multi_step_loss_steps=10, per_step_lr=True, per_step_bn=True)
    grads = {}
    for strategy in ("loop", "fold"):
        torch.manual_seed(3)
        learner = MAMLPlusPlus(
            Conv4Stride(1, 6, 3).double(), 0.3, 2, first_order=first_order, strategy=strategy, **options
        )
        grads[strategy] = all_gradients(learner, batch)
    assert grads["loop"].keys() == grads["fold"].keys() and any("step_bn" in name for name in grads["fold"])
    assert relative_error(grads["loop"], grads["fold"]) < 1e-10
    vectors = vector_batch(tasks=3)
    for strategy in ("loop", "fold"):
        torch.manual_seed(4)
        learner = MetaSGD(MLP(6, (8,), 4).double(), 0.1, 2, first_order=first_order, strategy=strategy)
        grads[strategy] = all_gradients(learner, vectors)
    assert relative_error(grads["loop"], grads["fold"]) < 1e-10


def test_predictions_and_chunks_of_tasks_match_the_loop():
    """Evaluation (under no_grad, which still adapts) and a meta-batch split into chunks of folded tasks."""
    torch.manual_seed(5)
    model = Conv4Stride(1, 6, 3).double()
    batch = image_batch(tasks=5)
    loop = MAML(model, 0.3, 2, strategy="loop", workers=1)
    fold = MAML(model, 0.3, 2, strategy="fold", workers=2, vmap_chunk=2)  # chunks of 2, 2, 1 on two workers
    with torch.no_grad():
        torch.testing.assert_close(fold.predict(batch), loop.predict(batch))
    assert relative_error(all_gradients(loop, batch), all_gradients(fold, batch)) < 1e-10
    assert relative_error(meta_gradient(loop, batch), meta_gradient(fold, batch)) < 1e-10  # one call, all tasks


def test_default_fold_chunk_follows_what_a_task_holds():
    """As vmap's (tests/algorithms/test_maml.py); none for the loop."""
    net = MLP(1, (8,), 1)
    assert MAML(net, inner_steps=1, strategy="fold", workers=2).tasks_per_call() == 4
    assert MAML(net, inner_steps=5, strategy="fold", workers=2).tasks_per_call() == 2
    assert MAML(net, inner_steps=1, first_order=True, strategy="fold", workers=1).tasks_per_call() == 16
    assert MAML(net, inner_steps=5, first_order=True, strategy="fold", workers=2).tasks_per_call() == 4
    assert MAML(net, inner_steps=5, strategy="loop", workers=2).tasks_per_call() == 1


def test_fold_is_refused_with_the_reason_where_it_cannot_run():
    with pytest.raises(ConfigError, match="Softmax"):
        MAML(nn.Sequential(nn.Linear(2, 3), nn.Softmax(dim=-1)), strategy="fold")
    with pytest.raises(ConfigError, match="ANIL"):
        ANIL(MLP(1, (8,), 1), strategy="fold", head="2.")
    with pytest.raises(ConfigError, match="compile"):
        MAML(MLP(1, (8,), 1), strategy="fold", compile=True)
    with pytest.raises(ConfigError, match="Reptile"):
        Reptile(MLP(1, (8,), 1), strategy="fold")
