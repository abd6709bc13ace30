import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import image_batch, sinusoid_mse_before_and_after
from killing import metrics_without_times

from fastadapt.algorithms.model_based.hypernet import build
from fastadapt.config import make_config
from fastadapt.datasets.sinusoid import SinusoidTasks
from fastadapt.errors import ConfigError
from fastadapt.evaluate import evaluate, evaluate_checkpoint, load_learner
from fastadapt.tasks.episodes import TaskBatch
from fastadapt.tasks.samplers import ClassSplit, EpisodeSampler
from fastadapt.train import train


def hypernet(dataset: str, **settings):
    """The hypernetwork of ``make_config("hypernet", dataset, **settings)``."""
    return build(make_config("hypernet", dataset, **settings))


def classifier(pooling="mean", **options):
    torch.manual_seed(0)
    learner = hypernet(
        "omniglot", network="conv4-8", hypernet_hidden=16, hypernet_pooling=pooling, image_size=16, **options
    )
    return learner.double().eval()


def regressor(pooling="mean", **options):
    torch.manual_seed(0)
    return hypernet("sinusoid", network="mlp", hypernet_hidden=32, hypernet_pooling=pooling, **options).double()


def perturb_generators(learner):
    """Non-zero last layers (they start at zero), so that the generated weights depend on the support set."""
    with torch.no_grad():
        for net in (getattr(learner, "generator", None), getattr(learner, "decoder", None)):
            if net is not None:
                net[-1].weight.normal_(0, 0.1)
                net[-1].bias.normal_(0, 0.1)
        if getattr(learner.pool, "mode", "") == "attention":
            learner.pool.query.normal_()
    return learner


def shuffled_support(batch, perm):
    return TaskBatch(batch.support_x[:, perm], batch.support_y[:, perm], batch.query_x, batch.query_y, batch.ways)


def sinusoid_batch(tasks=3, shots=6, seed=0):
    batch = SinusoidTasks(shots, 5, seed=seed).sample(tasks)
    return TaskBatch(*(t.double() for t in (batch.support_x, batch.support_y, batch.query_x, batch.query_y)), None)


@pytest.mark.parametrize("pooling", ["mean", "attention"])
@pytest.mark.parametrize("steps", [0, 2])
def test_classifier_is_invariant_to_support_order_and_equivariant_to_labels(pooling, steps):
    learner = perturb_generators(classifier(pooling))
    batch = image_batch(tasks=2, ways=3, shots=3, query=2, size=16)
    logits = learner.predict(batch, steps=steps)
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(learner.predict(shuffled_support(batch, perm), steps=steps), logits)
    relabel = torch.tensor([2, 0, 1])  # class c becomes relabel[c]: the logits' columns move with it
    renamed = TaskBatch(batch.support_x, relabel[batch.support_y], batch.query_x, batch.query_y, batch.ways)
    torch.testing.assert_close(learner.predict(renamed, steps=steps)[..., relabel], logits)


@pytest.mark.parametrize("pooling", ["mean", "attention"])
@pytest.mark.parametrize("steps", [0, 2])
def test_regressor_is_invariant_to_support_order(pooling, steps):
    learner = perturb_generators(regressor(pooling))
    batch = sinusoid_batch()
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(
        learner.predict(shuffled_support(batch, perm), steps=steps), learner.predict(batch, steps=steps)
    )


def test_untrained_classifier_is_a_cosine_prototype_classifier():
    """G starts at zero and phi_avg at one: w_c is the mean normalised support feature, b_c = 0, s = 10."""
    learner = classifier()
    batch = image_batch(tasks=2, ways=3, shots=2, query=2, size=16)
    expected = []
    for t in range(2):
        support = F.normalize(learner.embedding(batch.support_x[t]), dim=-1)
        centres = torch.stack([support[batch.support_y[t] == c].mean(0) for c in range(3)])
        query = learner.embedding(batch.query_x[t])
        expected.append(10.0 * F.cosine_similarity(query.unsqueeze(1), centres.unsqueeze(0), dim=-1))
    torch.testing.assert_close(learner.predict(batch), torch.stack(expected))


def test_generated_regressor_runs_each_tasks_own_weights():
    """The batched target network equals a plain per-task MLP with the generated weights; an untrained
    hypernetwork generates the universal weights theta for every task."""
    learner = perturb_generators(regressor())
    batch = sinusoid_batch()
    params = learner.generate(batch.support_x, batch.support_y)
    predictions = learner.regress(params, batch.query_x)
    for t in range(3):
        h = batch.query_x[t]
        for i in (0, 2, 4):
            h = F.linear(h, params[f"{i}.weight"][t], params[f"{i}.bias"][t])
            h = h.relu() if i < 4 else h
        torch.testing.assert_close(predictions[t], h)
    untrained = regressor()
    with torch.no_grad():
        torch.testing.assert_close(untrained.predict(batch), untrained.target(batch.query_x))


def test_test_time_steps_equal_a_plain_per_task_gradient_loop():
    """Steps on the batched generated weights (loss summed over tasks) are each task's own gradient descent,
    checked against torch.autograd on one task at a time in float64, meta-gradient included."""
    learner = perturb_generators(regressor(inner_steps=3, inner_lr=0.05))
    batch = sinusoid_batch()
    learner.zero_grad()
    learner.meta_loss(batch).loss.backward()
    batched_grads = [p.grad.clone() for p in learner.parameters()]

    learner.zero_grad()
    params = learner.generate(batch.support_x, batch.support_y)
    losses = []
    for t in range(3):
        weights = {k: v[t] for k, v in params.items()}
        for _ in range(3):
            support = torch.func.functional_call(learner.target, weights, (batch.support_x[t],))
            grads = torch.autograd.grad(
                F.mse_loss(support, batch.support_y[t]), list(weights.values()), create_graph=True
            )
            weights = {k: w - 0.05 * g for (k, w), g in zip(weights.items(), grads)}
        query = torch.func.functional_call(learner.target, weights, (batch.query_x[t],))
        losses.append(F.mse_loss(query, batch.query_y[t]))
    torch.stack(losses).mean().backward()
    for batched, looped in zip(batched_grads, (p.grad for p in learner.parameters())):
        torch.testing.assert_close(batched, looped)


@pytest.mark.parametrize("kind", ["classification", "regression"])
def test_generated_weights_receive_gradients(kind):
    learner = perturb_generators(classifier() if kind == "classification" else regressor()).train()
    if kind == "classification":
        batch = image_batch(tasks=2, ways=3, shots=2, query=2, size=16)
        support, query = (
            learner.embedding(batch.support_x.flatten(0, 1)),
            learner.embedding(batch.query_x.flatten(0, 1)),
        )
        params = learner.generate(support.view(2, 6, -1), batch.support_y, 3)
        loss = F.cross_entropy(learner.classify(params, query.view(2, 6, -1)).flatten(0, 1), batch.query_y.flatten())
        last_layer, set_encoder = learner.generator[-1].weight, learner.context[0].weight
    else:
        batch = sinusoid_batch()
        params = learner.generate(batch.support_x, batch.support_y)
        loss = F.mse_loss(learner.regress(params, batch.query_x), batch.query_y)
        last_layer, set_encoder = learner.decoder[-1].weight, learner.encoder[0].weight
    for p in params.values():
        p.retain_grad()
    loss.backward()
    for name, p in params.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert last_layer.grad.abs().sum() > 0
    assert set_encoder.grad.abs().sum() > 0  # through the (perturbed) generator into the set encoder


def test_test_time_steps_lower_the_support_loss():
    learner = perturb_generators(regressor())
    batch = sinusoid_batch()
    on_support = TaskBatch(batch.support_x, batch.support_y, batch.support_x, batch.support_y, None)
    with torch.no_grad():  # as in evaluation: the steps still run
        before = F.mse_loss(learner.predict(on_support, steps=0), batch.support_y)
        after = F.mse_loss(learner.predict(on_support, steps=5), batch.support_y)
    assert after < 0.9 * before


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (dict(hypernet_hidden=0), "--hypernet-hidden"),
        (dict(hypernet_layers=0), "--hypernet-layers"),
        (dict(hypernet_pooling="max"), "--hypernet-pooling"),
        (dict(cosine_scale=0.0), "--cosine-scale"),
        (dict(inner_steps=-1), "--inner-steps"),
        (dict(eval_inner_steps=-2), "--eval-inner-steps"),
        (dict(eval_inner_steps=5, inner_lr=0.0), "--inner-lr"),
        (dict(network="resnet12"), "--network"),
    ],
)
def test_bad_options_are_refused_in_one_line(options, named):
    with pytest.raises(ConfigError) as error:
        hypernet("omniglot", **options)
    assert named in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("call", "named"),
    [
        (lambda: hypernet("sinusoid", network="conv4"), "--network mlp"),
        (lambda: hypernet("omniglot", network="mlp"), "--network conv4"),
        (lambda: hypernet("omniglot", image_size=8), "--image-size"),
        (lambda: hypernet("sinusoid", hypernet_width=3), "--hypernet-width"),
        (lambda: hypernet("imagenet"), "imagenet"),
    ],
)
def test_bad_settings_are_refused_in_one_line(call, named):
    with pytest.raises(ConfigError) as error:
        call()
    assert named in str(error.value) and "\n" not in str(error.value)


def test_short_training_lowers_sinusoid_mse():
    learner = hypernet("sinusoid", network="mlp", hypernet_layers=3)
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
    before, after = sinusoid_mse_before_and_after(learner, optimizer, steps=150)
    assert after < 0.5 * before, (before, after)


def synthetic_split(name, classes, seed, per_class=6, size=16):
    """Classes of noisy copies of a random blob pattern: learnable, and different classes per split."""
    rng = np.random.default_rng(seed)
    patterns = rng.random((classes, 4, 4)) > 0.5
    images = []
    for pattern in patterns:
        base = np.kron(pattern, np.ones((size // 4, size // 4)))
        images.append(np.clip(base + rng.normal(0, 0.6, (per_class, size, size)), 0, 1))
    images = torch.from_numpy(np.concatenate(images)).float().unsqueeze(1)
    indices = [np.arange(c * per_class, (c + 1) * per_class) for c in range(classes)]
    return ClassSplit(name, images, indices, [f"{name}{c}" for c in range(classes)])


def test_short_training_learns_above_chance():
    torch.manual_seed(0)
    learner = hypernet("omniglot", network="conv4-16", hypernet_hidden=32, image_size=16)
    train_tasks = EpisodeSampler(synthetic_split("train", 40, seed=0), ways=5, shots=1, query=3, seed=0)
    test_split = synthetic_split("test", 20, seed=1)
    accuracy_before = evaluate(learner, EpisodeSampler(test_split, 5, 1, 3, seed=2), episodes=60).mean()
    optimizer = torch.optim.Adam(learner.parameters(), lr=3e-3)
    for _ in range(60):
        optimizer.zero_grad()
        learner.meta_loss(train_tasks.sample(4)).loss.backward()
        optimizer.step()
    accuracy = evaluate(learner, EpisodeSampler(test_split, 5, 1, 3, seed=2), episodes=60).mean()
    assert accuracy > 0.6 and accuracy > accuracy_before + 0.1, (accuracy_before, accuracy)


def test_training_resumes_exactly(tmp_path):
    settings = dict(steps=6, val_every=3, val_episodes=4, test_episodes=4, meta_batch_size=2, hypernet_hidden=16)
    straight = train(make_config("hypernet", "sinusoid", out=str(tmp_path / "straight"), **settings), progress=False)
    train(make_config("hypernet", "sinusoid", out=str(tmp_path / "resumed"), **dict(settings, steps=3)), progress=False)
    config = make_config("hypernet", "sinusoid", out=str(tmp_path / "resumed"), **settings)
    resumed = train(config, resume=True, progress=False)
    assert resumed.step == 6
    for name, tensor in straight.learner.state_dict().items():
        torch.testing.assert_close(resumed.learner.state_dict()[name], tensor, rtol=0, atol=0)

    def validations(run):  # the wall clock aside
        return [r for r in metrics_without_times(tmp_path / run / "metrics.jsonl") if "val_mse" in r]

    assert validations("resumed") == validations("straight") and len(validations("straight")) == 2

    other = make_config("hypernet", "sinusoid", out=str(tmp_path / "resumed"), **dict(settings, hypernet_hidden=8))
    with pytest.raises(ConfigError, match="different configuration.*hypernet_hidden"):
        train(other, resume=True, progress=False)


def test_checkpoint_evaluates_with_test_time_steps(tmp_path):
    settings = dict(steps=2, val_every=2, val_episodes=4, test_episodes=4, meta_batch_size=2, hypernet_hidden=16)
    train(make_config("hypernet", "sinusoid", out=str(tmp_path), **settings), progress=False)
    plain = evaluate_checkpoint(tmp_path / "best.pt", episodes=20, progress=False)
    stepped = evaluate_checkpoint(tmp_path / "best.pt", episodes=20, progress=False, eval_inner_steps=5)
    assert plain["episodes"] == 20 and stepped["mse_mean"] != plain["mse_mean"]
    learner, loaded = load_learner(tmp_path / "best.pt", eval_inner_steps=5)
    assert learner.eval_inner_steps == 5 and loaded.hypernet_hidden == 16
