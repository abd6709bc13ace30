"""The gradient guard and the layer zoo: every strategy gives the per-task loop's meta-gradient, or is refused.

Each network of the zoo is a few-shot network built from one kind of layer. For each, MAML, Meta-SGD, ANIL and
MAML++ (per-step learning rates and the multi-step loss), first and second order, 1 and 3 inner steps, run with the
loop, vmap, fold (where the network folds) and auto, and their meta-gradients are compared with a reference written
here without fastadapt's code: a per-task loop of ``torch.autograd.grad`` over the user's own (unswapped) network,
in float64. Each either agrees to 1e-10 or is refused with a ConfigError that says why: never a silent difference.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import random_batch
from torch import nn
from torch.func import functional_call

from fastadapt.algorithms import ANIL, MAML, MAMLPlusPlus, MetaSGD, Reptile
from fastadapt.engine import strategy as strategy_module
from fastadapt.engine.functional import parameter_key
from fastadapt.engine.guard import check_meta_gradient, disagreeing_layer_types, require_agreement
from fastadapt.engine.strategy import choose_strategy, describe_choice
from fastadapt.errors import ConfigError

WAYS = 2


class Residual(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.inner = nn.Linear(dim, dim)

    def forward(self, x):
        return x + torch.tanh(self.inner(x))


class SoftmaxAttention(nn.Module):
    """Single-head self-attention over 3 tokens of 4 features, written out (a softmax over scores)."""

    def __init__(self) -> None:
        super().__init__()
        self.query, self.key, self.value = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        tokens = x.view(x.shape[0], 3, 4)
        scores = self.query(tokens) @ self.key(tokens).transpose(1, 2) / 2.0
        return (torch.softmax(scores, dim=-1) @ self.value(tokens)).flatten(1)


class Embedded(nn.Module):
    """Token ids from the inputs' magnitudes, embedded and summed."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(8, 5)

    def forward(self, x):
        return torch.tanh(self.embedding((x.abs() * 2).long().clamp(max=7)).sum(1))


def vector(*layers, width=6):
    return (6,), [nn.Linear(6, width), *layers]


def image(*layers, channels=4):
    return (2, 5, 5), [nn.Conv2d(2, channels, 3, padding=1), *layers, nn.Flatten()]


def sequence(*layers):
    return (2, 7), [nn.Conv1d(2, 4, 3, padding=1), *layers, nn.Flatten()]


#: name -> a function making (input shape, fresh layers before the head)
ZOO = {
    "conv1d-stride-padding-groups": lambda: ((2, 7), [nn.Conv1d(2, 4, 3, 2, 1, groups=2), nn.Tanh(), nn.Flatten()]),
    "conv2d-stride-padding-groups": lambda: ((2, 5, 5), [nn.Conv2d(2, 4, 3, 2, 1, groups=2), nn.Tanh(), nn.Flatten()]),
    "linear": lambda: vector(nn.Tanh()),
    "batchnorm1d": lambda: vector(nn.BatchNorm1d(6, track_running_stats=False), nn.Tanh()),
    "batchnorm2d": lambda: image(nn.BatchNorm2d(4, track_running_stats=False), nn.ReLU()),
    "layernorm": lambda: vector(nn.LayerNorm(6), nn.Tanh()),
    "groupnorm": lambda: image(nn.GroupNorm(2, 4), nn.Tanh()),
    "instancenorm1d": lambda: sequence(nn.InstanceNorm1d(4, affine=True), nn.Tanh()),
    "instancenorm2d": lambda: image(nn.InstanceNorm2d(4, affine=True), nn.Tanh()),
    "rmsnorm": lambda: vector(nn.RMSNorm(6), nn.Tanh()),
    "relu": lambda: vector(nn.ReLU()),
    "leakyrelu": lambda: vector(nn.LeakyReLU(0.1)),
    "elu": lambda: vector(nn.ELU()),
    "gelu": lambda: vector(nn.GELU()),
    "silu": lambda: vector(nn.SiLU()),
    "tanh": lambda: vector(nn.Tanh()),
    "sigmoid": lambda: vector(nn.Sigmoid()),
    "softplus": lambda: vector(nn.Softplus()),
    "maxpool2d": lambda: image(nn.ReLU(), nn.MaxPool2d(2)),
    "avgpool2d": lambda: image(nn.Tanh(), nn.AvgPool2d(2)),
    "adaptiveavgpool2d": lambda: image(nn.Tanh(), nn.AdaptiveAvgPool2d(2)),
    "adaptivemaxpool2d": lambda: image(nn.Tanh(), nn.AdaptiveMaxPool2d(2)),
    "flatten": lambda: image(nn.Tanh()),
    "residual": lambda: vector(nn.Tanh(), Residual(6)),
    "softmax-attention": lambda: ((12,), [SoftmaxAttention(), nn.Tanh()]),
    "embedding": lambda: ((3,), [Embedded()]),
}


def zoo_network(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    torch.manual_seed(0)
    shape, layers = ZOO[name]()
    body = nn.Sequential(*layers)
    features = body(torch.randn(2, *shape)).shape[-1]
    return nn.Sequential(*layers, nn.Linear(features, WAYS)).double(), shape


def make_learner(method: str, net: nn.Module, steps: int, first_order: bool, strategy: str):
    common = dict(inner_lr=0.3, inner_steps=steps, first_order=first_order, strategy=strategy, workers=1)
    if method == "maml":
        return MAML(net, **common)
    if method == "metasgd":
        learner = MetaSGD(net, **common)
        with torch.no_grad():  # distinct rates, so that a mixed-up alpha would show
            for alpha in learner.inner_lrs.values():
                alpha.uniform_(0.1, 0.5)
        return learner
    if method == "anil":
        return ANIL(net, head=f"{len(net) - 1}.", **common)
    learner = MAMLPlusPlus(net, multi_step_loss=True, multi_step_loss_steps=10, per_step_lr=True, **common)
    with torch.no_grad():
        for rates in learner.step_lrs.values():
            rates.uniform_(0.1, 0.5)
    return learner


def reference_loss(method: str, learner, net: nn.Module, batch) -> torch.Tensor:
    """The meta-loss by a plain per-task loop over the user's network."""
    theta = {n: p for n, p in net.named_parameters() if p.requires_grad}
    head = f"{len(net) - 1}."
    adapted = [n for n in theta if method != "anil" or n.startswith(head)]
    steps = learner.inner_steps

    def lr(step, name):
        if method == "metasgd":
            return learner.inner_lrs[parameter_key(name)]
        if method == "maml++":
            return learner.step_lrs[parameter_key(name)][step]
        return learner.inner_lr

    weights = learner.step_loss_weights() if method == "maml++" else None
    weights = weights or [0.0] * (steps - 1) + [1.0]
    total = 0.0
    for task in range(batch.num_tasks):
        fast = dict(theta)
        for step in range(steps):
            support = F.cross_entropy(functional_call(net, fast, (batch.support_x[task],)), batch.support_y[task])
            grads = torch.autograd.grad(support, [fast[n] for n in adapted], create_graph=not learner.first_order)
            fast.update({n: fast[n] - lr(step, n) * g for n, g in zip(adapted, grads)})
            if weights[step]:
                query = F.cross_entropy(functional_call(net, fast, (batch.query_x[task],)), batch.query_y[task])
                total = total + weights[step] * query
    return total / batch.num_tasks


def relative_error(a, b) -> float:
    num = torch.sqrt(sum((x - y).square().sum() for x, y in zip(a, b)))
    return (num / torch.sqrt(sum(y.square().sum() for y in b))).item()


def trained_gradients(learner, batch) -> list[torch.Tensor]:
    learner.zero_grad(set_to_none=True)
    learner.meta_backward(batch)
    return [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in learner.parameters() if p.requires_grad]


@pytest.fixture
def untimed(monkeypatch):
    """auto's timing replaced by one that prefers the vectorised candidate: the guard alone decides what is left."""
    monkeypatch.setattr(
        strategy_module,
        "time_strategies",
        lambda learner, batch, trials, candidates: {
            strategy_module.choice_label(*c): 1.0 if c[0] == "loop" else 0.5 for c in candidates
        },
    )


@pytest.mark.parametrize("layer", sorted(ZOO))
def test_every_strategy_gives_the_loops_meta_gradient_or_is_refused(layer, untimed):
    for method in ("maml", "metasgd", "anil", "maml++"):
        for first_order in (False, True):
            for steps in (1, 3):
                net, shape = zoo_network(layer)
                batch = random_batch(tasks=2, ways=WAYS, shots=2, query=2, shape=shape, seed=steps)
                for strategy in ("loop", "vmap", "fold", "auto"):
                    case = f"{layer} {method} {'first' if first_order else 'second'} order, {steps} steps, {strategy}"
                    try:
                        learner = make_learner(method, net, steps, first_order, strategy)
                        if strategy == "auto":
                            choose_strategy(learner, batch, trials=1)
                        else:
                            require_agreement(learner, batch)
                    except ConfigError as refusal:
                        assert strategy == "fold" and "fold" in str(refusal), case  # the network does not fold
                        continue
                    trainable = [p for p in learner.parameters() if p.requires_grad]
                    grads = torch.autograd.grad(
                        reference_loss(method, learner, net, batch), trainable, allow_unused=True
                    )
                    reference = [torch.zeros_like(p) if g is None else g for p, g in zip(trainable, grads)]
                    error = relative_error(trained_gradients(learner, batch), reference)
                    assert error < 1e-10, f"{case} ({learner.strategy}): relative error {error:.1e}"


def test_torchs_own_layer_norm_under_vmap_is_refused_or_left_out_naming_it(untimed):
    """Without fastadapt's swapped layers, torch's vmap gets LayerNorm's second-order meta-gradient wrong."""
    net, shape = zoo_network("layernorm")
    batch = random_batch(tasks=4, ways=WAYS, shots=2, query=2, shape=shape)
    explicit = MAML(net, inner_lr=0.3, strategy="vmap", fast_layers=False)
    with pytest.raises(ConfigError, match=r"--strategy vmap would train on a wrong meta-gradient.*LayerNorm.*loop"):
        require_agreement(explicit, batch)

    auto = MAML(net, inner_lr=0.3, strategy="auto", fast_layers=False, workers=1)
    measured = choose_strategy(auto, batch, trials=1)
    assert auto.strategy == "loop"
    excluded = {check["strategy"]: check for check in measured["gradient_checks"]}
    assert not excluded["vmap"]["agrees"] and excluded["vmap"]["relative_error"] > 1e-6
    assert excluded["vmap"]["layers"] == ["LayerNorm"] and excluded["vmap"]["parameter"]
    assert "vmap excluded" in describe_choice(measured) and "LayerNorm" in describe_choice(measured)
    # the same settings without the check would have trained with vmap
    unchecked = MAML(net, inner_lr=0.3, strategy="auto", fast_layers=False, workers=1)
    choose_strategy(unchecked, batch, trials=1, gradient_check=False)
    assert unchecked.strategy == "vmap"


def test_the_check_sees_each_phase_of_maml_plus_plus_schedule():
    """First order agrees under torch's vmap; derivative-order annealing turns second order later: checked too."""
    net, shape = zoo_network("layernorm")
    batch = random_batch(tasks=2, ways=WAYS, shots=2, query=2, shape=shape)
    learner = MAMLPlusPlus(net, inner_lr=0.3, strategy="vmap", fast_layers=False, first_order_steps=100)
    assert learner.schedule_phases() == [0, 100]
    assert not check_meta_gradient(learner, batch, "vmap").agrees
    first_order_only = MAML(net, inner_lr=0.3, strategy="vmap", fast_layers=False, first_order=True)
    assert check_meta_gradient(first_order_only, batch, "vmap").agrees


def test_the_check_leaves_the_learner_as_it_was():
    net, shape = zoo_network("batchnorm2d")
    batch = random_batch(tasks=3, ways=WAYS, shots=2, query=2, shape=shape).with_dtype(torch.float32)
    learner = MAML(net.float(), inner_lr=0.3, strategy="fold")
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    check = check_meta_gradient(learner, batch, "fold")
    assert check.agrees and check.seconds > 0
    assert learner.strategy == "fold" and all(p.grad is None for p in learner.parameters())
    assert all(torch.equal(before[k], v) and v.dtype == torch.float32 for k, v in learner.state_dict().items())


def test_each_strategy_is_checked_from_the_same_draws_and_buffers():
    """Reptile draws its support mini-batches at random and carries Adam's moments in buffers that its meta-loss
    updates: both strategies must start from the same draws and moments (before that, vmap's check on this network
    disagreed by 0.9 and auto never timed it), and the check must not change what training draws next."""
    net, shape = zoo_network("batchnorm2d")  # a convolution's bias before batch norm: a zero gradient, exactly
    batch = random_batch(tasks=3, ways=WAYS, shots=3, query=2, shape=shape)
    learner = Reptile(net, inner_steps=3, inner_batch_size=2, adam_state="carried", strategy="auto")
    torch.manual_seed(4)
    state = torch.random.get_rng_state()
    check = check_meta_gradient(learner, batch, "vmap")
    assert check.agrees, check.describe()
    assert torch.equal(torch.random.get_rng_state(), state)
    assert learner.inner_optimizer == "adam" and learner.adam_state == "carried"  # the probe's SGD is its own


def test_a_strategy_that_fails_to_run_is_excluded_with_its_error():
    """Batch norm with running statistics updates a buffer in place: vmap cannot run it, the loop can."""
    net = nn.Sequential(nn.Linear(6, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, WAYS)).double()
    batch = random_batch(tasks=2, ways=WAYS, shots=2, query=2, shape=(6,))
    check = check_meta_gradient(MAML(net, inner_lr=0.3), batch, "vmap")
    assert not check.agrees and check.error and "vmap failed on this network" in check.describe()


def test_layers_are_named_by_checking_each_alone():
    net = nn.Sequential(nn.Linear(6, 6), nn.LayerNorm(6), nn.Tanh(), nn.Linear(6, 6), nn.GroupNorm(2, 6)).double()
    batch = random_batch(tasks=2, ways=WAYS, shots=2, query=2, shape=(6,))
    assert disagreeing_layer_types(net, batch) == ("LayerNorm",)


def layer_norm_maml(config):
    """What a user's network with torch's own LayerNorm (no fastadapt swap) gives the trainer."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(1, 8), nn.LayerNorm(8), nn.Tanh(), nn.Linear(8, 1))
    return MAML(
        net, inner_lr=0.01, strategy=config.strategy, gradient_check=config.gradient_check, fast_layers=False, workers=1
    )


def test_training_refuses_an_explicit_strategy_that_disagrees_unless_told(tmp_path, monkeypatch, capsys):
    import fastadapt.train as train_module
    from fastadapt.checkpoint import load_checkpoint
    from fastadapt.cli import main
    from fastadapt.config import make_config
    from fastadapt.train import train

    monkeypatch.setattr(train_module, "build_algorithm", layer_norm_maml)
    run = dict(steps=2, val_every=2, val_episodes=2, test_episodes=2, meta_batch_size=4)
    argv = ["train", "--algorithm", "maml", "--dataset", "sinusoid", "--quiet", "--strategy", "vmap"]
    argv += ["--steps", "2", "--val-every", "2", "--val-episodes", "2", "--test-episodes", "2"]
    assert main([*argv, "--meta-batch-size", "4", "--out", str(tmp_path / "cli")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "LayerNorm" in error and "--strategy loop" in error
    assert not (tmp_path / "cli" / "last.pt").exists()

    unchecked = make_config("maml", "sinusoid", strategy="vmap", gradient_check=False, out=str(tmp_path / "a"), **run)
    assert train(unchecked, progress=False).learner.strategy == "vmap"  # the user said they know

    auto = make_config("maml", "sinusoid", strategy="auto", out=str(tmp_path / "b"), **run)
    assert train(auto, progress=False).learner.strategy == "loop"  # LayerNorm does not fold; vmap disagrees
    [check] = load_checkpoint(tmp_path / "b" / "last.pt")["gradient_checks"]
    assert check["strategy"] == "vmap" and not check["agrees"] and check["layers"] == ["LayerNorm"]
