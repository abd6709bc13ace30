"""MAML++'s switches (Antoniou et al. 2019): each changes what it should and nothing else.

Every meta-gradient is checked against one plain reference written without the core: a per-task loop
with ``torch.autograd.grad`` in which the per-step learning rates, the per-step batch-norm weights and the
weights of the per-step query losses are explicit arguments.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import image_batch, relative_error
from torch.func import functional_call

from fastadapt.algorithms import MAML, MAMLPlusPlus, build_algorithm
from fastadapt.algorithms.optimization.maml_plus_plus import multi_step_loss_weights
from fastadapt.config import make_config
from fastadapt.engine.functional import parameters_of
from fastadapt.errors import ConfigError
from fastadapt.nets import MLP, Conv4Stride
from fastadapt.train import outer_optimizer, train

STEPS = 3


def reference_meta_loss(model, batch, lr_at, loss_weights, first_order=False, bn_rows=None):
    """Mean over tasks of sum_k loss_weights[k] * L^query(theta^(k+1)); ``lr_at(k, name)`` is the step size
    of parameter ``name`` in step k; ``bn_rows`` maps batch-norm parameter names to (steps, C) tensors used
    row k in step k and held out of the inner loop (None: batch norm adapted like every other weight)."""
    bn_rows = bn_rows or {}
    adapted = {n: p for n, p in model.named_parameters() if n not in bn_rows}
    names = list(adapted)
    total = 0.0
    for i in range(batch.num_tasks):
        fast = list(adapted.values())
        for k, weight in enumerate(loss_weights):
            step_bn = {n: rows[k] for n, rows in bn_rows.items()}
            logits = functional_call(model, {**dict(zip(names, fast)), **step_bn}, (batch.support_x[i],))
            grads = torch.autograd.grad(F.cross_entropy(logits, batch.support_y[i]), fast, create_graph=not first_order)
            fast = [w - lr_at(k, n) * g for n, w, g in zip(names, fast, grads)]
            logits = functional_call(model, {**dict(zip(names, fast)), **step_bn}, (batch.query_x[i],))
            total = total + weight * F.cross_entropy(logits, batch.query_y[i])
    return total / batch.num_tasks


def trainable(learner):
    return [p for p in learner.parameters() if p.requires_grad]


def learner_gradients(learner, batch):
    learner.zero_grad()
    learner.meta_loss(batch).loss.backward()
    return [p.grad.clone() for p in trainable(learner)]


def reference_gradients(learner, loss):
    return torch.autograd.grad(loss, trainable(learner))


def last_step_only(steps=STEPS):
    return [0.0] * (steps - 1) + [1.0]


def make(strategy="loop", steps=STEPS, seed=0, **switches):
    torch.manual_seed(seed)
    return MAMLPlusPlus(Conv4Stride(1, 8, 3).double(), inner_lr=0.3, inner_steps=steps, strategy=strategy, **switches)


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_all_switches_off_is_plain_maml(strategy):
    learner = make(strategy, multi_step_loss=False, per_step_lr=False, per_step_bn=False, first_order_steps=0)
    batch = image_batch()
    expected = reference_gradients(
        learner, reference_meta_loss(learner.model, batch, lambda k, n: 0.3, last_step_only())
    )
    assert relative_error(expected, learner_gradients(learner, batch)) < 1e-10


def test_multi_step_loss_weights_follow_the_papers_annealing():
    assert multi_step_loss_weights(5, 0.0) == pytest.approx([0.2] * 5)
    assert multi_step_loss_weights(5, 1.0) == pytest.approx([0.006] * 4 + [1 - 4 * 0.006])
    assert multi_step_loss_weights(5, 0.5) == pytest.approx([0.1] * 4 + [0.6])
    for progress in (0.0, 0.3, 0.97, 1.0):
        assert sum(multi_step_loss_weights(4, progress)) == pytest.approx(1.0)
    learner = make(multi_step_loss=True, multi_step_loss_steps=10)
    learner.training_step = 5
    assert learner.step_loss_weights() == pytest.approx(multi_step_loss_weights(STEPS, 0.5))
    learner.training_step = 10  # annealing over: only the last step's loss counts, as plain MAML
    assert learner.step_loss_weights() is None


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_multi_step_loss_is_the_weighted_sum_of_per_step_query_losses(strategy):
    learner = make(strategy, multi_step_loss=True, multi_step_loss_steps=10)
    learner.training_step = 4
    weights = multi_step_loss_weights(STEPS, 0.4)
    batch = image_batch()
    expected = reference_gradients(learner, reference_meta_loss(learner.model, batch, lambda k, n: 0.3, weights))
    got = learner_gradients(learner, batch)
    assert relative_error(expected, got) < 1e-10
    plain = learner_gradients(make(strategy), batch)
    assert relative_error(plain, got) > 1e-3  # it really changes the meta-gradient


@pytest.mark.parametrize("weights, plain_steps", [([0.0, 0.0, 1.0], 3), ([1.0, 0.0, 0.0], 1), ([0.0, 1.0, 0.0], 2)])
def test_one_hot_step_weights_give_mamls_meta_gradient_for_that_many_steps(weights, plain_steps):
    learner = make(multi_step_loss=True, multi_step_loss_steps=10)
    learner.step_loss_weights = lambda: weights
    batch = image_batch()
    plain = make(steps=plain_steps)
    assert relative_error(learner_gradients(plain, batch), learner_gradients(learner, batch)) < 1e-10


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_per_step_learning_rates_get_gradients_and_equal_rates_give_maml(strategy):
    learner = make(strategy, per_step_lr=True)
    batch = image_batch()
    assert set(learner.step_lrs) == {n.replace(".", "-") for n in parameters_of(learner.model)}
    got = learner_gradients(learner, batch)
    for name, rates in learner.step_lrs.items():
        assert rates.shape == (STEPS,)
        assert (rates.grad.abs() > 0).all(), name  # every layer's rate of every step is meta-learned
    plain = make(strategy)
    theta = len(list(plain.parameters()))
    assert relative_error(learner_gradients(plain, batch), got[:theta]) < 1e-10


def test_per_step_learning_rates_are_used_per_layer_and_step():
    learner = make(per_step_lr=True)
    with torch.no_grad():
        for rates in learner.step_lrs.values():
            rates.uniform_(0.05, 0.5)
    rates = {n: learner.step_lrs[n.replace(".", "-")] for n in parameters_of(learner.model)}
    batch = image_batch()
    loss = reference_meta_loss(learner.model, batch, lambda k, n: rates[n][k], last_step_only())
    assert relative_error(reference_gradients(learner, loss), learner_gradients(learner, batch)) < 1e-10


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_per_step_batch_norm_with_identical_rows_equals_shared_batch_norm(strategy):
    shared = make(strategy)
    per_step = make(strategy, per_step_bn=True)  # same seed: same initial weights
    batch = image_batch()
    bn_names = per_step.step_bn_names
    assert len(bn_names) == 8 and not set(bn_names) & set(parameters_of(per_step.model))
    # Shared batch-norm weights held out of the inner loop (MAML++'s code does not adapt them).
    model = shared.model
    bn = {n: p.unsqueeze(0).expand(STEPS, -1) for n, p in model.named_parameters() if n in bn_names}
    expected = torch.autograd.grad(
        reference_meta_loss(model, batch, lambda k, n: 0.3, last_step_only(), bn_rows=bn), list(model.parameters())
    )
    expected = dict(zip([n for n, _ in model.named_parameters()], expected))
    per_step.zero_grad()
    per_step.meta_loss(batch).loss.backward()
    for name, p in per_step.model.named_parameters():
        if name in bn_names:
            assert p.grad is None  # replaced by the per-step rows
            rows = per_step.step_bn_params[name.replace(".", "-")].grad
            torch.testing.assert_close(rows.sum(0), expected[name])  # the rows' gradients add up to the shared one
        else:
            torch.testing.assert_close(p.grad, expected[name])


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_per_step_batch_norm_rows_are_used_step_by_step(strategy):
    learner = make(strategy, per_step_bn=True, per_step_lr=True, multi_step_loss=True, multi_step_loss_steps=10)
    with torch.no_grad():
        for rows in learner.step_bn_params.values():
            rows.add_(0.3 * torch.randn_like(rows))
    learner.training_step = 2
    bn = {n: learner.step_bn_params[n.replace(".", "-")] for n in learner.step_bn_names}
    rates = {n: learner.step_lrs[n.replace(".", "-")] for n in parameters_of(learner.model)}
    batch = image_batch()
    weights = multi_step_loss_weights(STEPS, 0.2)
    loss = reference_meta_loss(learner.model, batch, lambda k, n: rates[n][k], weights, bn_rows=bn)
    expected = reference_gradients(learner, loss)
    got = learner_gradients(learner, batch)
    assert relative_error(expected, got) < 1e-10
    assert all(p.grad.abs().sum() > 0 for p in learner.step_bn_params.values())


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_derivative_order_annealing_is_first_order_then_second_order(strategy):
    batch = image_batch()
    annealed = make(strategy, first_order_steps=5)
    first = learner_gradients(make(strategy, first_order=True), batch)
    second = learner_gradients(make(strategy), batch)
    annealed.training_step = 4
    assert relative_error(first, learner_gradients(annealed, batch)) < 1e-12
    annealed.training_step = 5
    assert relative_error(second, learner_gradients(annealed, batch)) < 1e-12
    assert relative_error(first, second) > 1e-3


def test_cosine_schedule_follows_the_formula():
    config = make_config("maml", "sinusoid", lr_schedule="cosine", lr=1e-3, lr_min=1e-5, steps=40)
    optimizer, scheduler = outer_optimizer(MAML(MLP(1, (4,), 1)), config)
    for step in range(41):
        expected = 1e-5 + (1e-3 - 1e-5) * (1 + math.cos(math.pi * step / 40)) / 2
        assert optimizer.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-9, abs=1e-12), step
        optimizer.step()
        scheduler.step()


def test_maml_plus_plus_preset_turns_every_switch_on():
    config = make_config("maml++", "omniglot", strategy="loop")
    assert (config.multi_step_loss, config.per_step_lr, config.per_step_bn) == (True, True, True)
    assert config.first_order_steps > 0 and config.multi_step_loss_steps > 0 and config.lr_schedule == "cosine"
    learner = build_algorithm(config)
    assert isinstance(learner, MAML) and learner.per_step_bn and learner.per_step_lr and learner.multi_step_loss
    plain = make_config("maml", "omniglot")
    assert not (plain.multi_step_loss or plain.per_step_lr or plain.per_step_bn or plain.first_order_steps)


@pytest.mark.parametrize(
    "algorithm, dataset, overrides, message",
    [
        ("anil", "omniglot", dict(per_step_lr=True), "applies to --algorithm maml"),
        ("maml", "sinusoid", dict(per_step_bn=True), "batch norm"),
        ("maml", "omniglot", dict(multi_step_loss=True), "multi-step-loss-steps"),
        ("maml", "omniglot", dict(per_step_lr=True, inner_steps=0), "inner-steps"),
        ("maml", "omniglot", dict(lr_schedule="cosine", lr_min=0.1, lr=0.01), "lr-min"),
    ],
)
def test_bad_switch_combinations_give_one_clear_error(algorithm, dataset, overrides, message):
    with pytest.raises(ConfigError, match=message):
        make_config(algorithm, dataset, **overrides)


def test_maml_plus_plus_trains_and_the_trainer_drives_its_schedules(tmp_path):
    config = make_config(
        "maml++", "sinusoid", steps=4, val_every=4, val_episodes=2, test_episodes=2, meta_batch_size=2,
        inner_steps=2, eval_inner_steps=2, multi_step_loss_steps=2, first_order_steps=1, strategy="loop",
        out=str(tmp_path),
    )  # fmt: skip
    result = train(config, progress=False)
    assert result.learner.training_step == 3  # set before each of the 4 outer steps
    assert result.learner.step_loss_weights() is None and not result.learner.uses_first_order()
    assert not torch.equal(result.learner.step_lrs["0-weight"], torch.full((2,), config.inner_lr))
