"""MANN (Santoro et al. 2016) and its LSTM baseline: the label offset, the sequence protocol, N-way K-shot
prediction, refusals of bad settings, exact resume and a short training run that learns."""

import numpy as np
import pytest
import torch
from helpers import image_batch, make_image_folder
from killing import metrics_without_times

from fastadapt.algorithms.model_based.mann import MANN, MANNOptions, build
from fastadapt.config import make_config
from fastadapt.datasets.sinusoid import SinusoidTasks
from fastadapt.errors import ConfigError, DataError
from fastadapt.evaluate import evaluate_by_instance
from fastadapt.tasks.samplers import ClassSplit, EpisodeSampler
from fastadapt.tasks.sequences import (
    SequenceBatch,
    SequenceSampler,
    accuracy_by_instance,
    instance_numbers,
    previous_labels,
)
from fastadapt.train import train

SMALL = dict(controller_size=16, memory_slots=8, memory_width=6, read_heads=2)


def mann(ways=3, image_size=4, **options) -> MANN:
    """A small MANN (or LSTM baseline) for ``ways`` classes of 1 x image_size x image_size images."""
    return MANN(image_size * image_size, ways, MANNOptions(**{**SMALL, **options}))


def synthetic_split(name="train", classes=30, per_class=6, side=4, noise=0.1, seed=0) -> ClassSplit:
    """Classes as random prototype images plus noise: recognisable from one example, labels meaningless."""
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.rand(classes, 1, 1, side, side, generator=g)
    images = prototypes + noise * torch.randn(classes, per_class, 1, side, side, generator=g)
    rows = [np.arange(c * per_class, (c + 1) * per_class) for c in range(classes)]
    return ClassSplit(name, images.reshape(-1, 1, side, side), rows, [f"c{c}" for c in range(classes)])


def test_previous_labels_offset_the_one_hot_labels_by_exactly_one_step():
    labels = torch.tensor([[2, 0, 0, 1]])
    expected = torch.tensor([[[0, 0, 0], [0, 0, 1], [1, 0, 0], [1, 0, 0]]]).float()
    assert torch.equal(previous_labels(labels, 3), expected)


@pytest.mark.parametrize("memory", [True, False])
def test_each_step_sees_the_previous_label_and_no_later_one(memory):
    """Step t's prediction depends on y_{t-1} and on no label from y_t on."""
    torch.manual_seed(0)
    learner = mann(image_size=3, memory=memory).double()
    images = torch.rand(1, 7, 1, 3, 3, dtype=torch.float64)
    labels = torch.tensor([[0, 1, 2, 0, 1, 2, 0]])
    base = learner.sequence_logits(images, labels)
    for t in range(6):
        changed = labels.clone()
        changed[0, t] = (labels[0, t] + 1) % 3
        logits = learner.sequence_logits(images, changed)
        assert torch.equal(logits[:, : t + 1], base[:, : t + 1]), f"step {t} saw its own label"
        assert not torch.allclose(logits[:, t + 1], base[:, t + 1]), f"step {t + 1} did not see step {t}'s label"


def test_instance_numbers_and_accuracy_by_instance():
    labels = torch.tensor([[1, 0, 1, 1, 0]])
    assert instance_numbers(labels, 2).tolist() == [[1, 1, 2, 3, 2]]
    predictions = torch.tensor([[0, 0, 1, 0, 0]])  # right at steps 1, 2, 4
    acc = accuracy_by_instance(predictions, labels, 2, (1, 2, 3))
    assert acc[1].tolist() == [0.5] and acc[2].tolist() == [1.0] and acc[3].tolist() == [0.0]
    with pytest.raises(DataError, match="4-th instance"):
        accuracy_by_instance(predictions, labels, 2, (4,))


def test_sequence_sampler_draws_five_classes_of_ten_instances_in_shuffled_order():
    split = synthetic_split(classes=12, per_class=20)
    batch = SequenceSampler(split, ways=5, instances=10, seed=3).sample(4)
    assert batch.images.shape == (4, 50, 1, 4, 4) and batch.labels.shape == (4, 50)
    for e in range(4):
        assert torch.bincount(batch.labels[e], minlength=5).tolist() == [10] * 5
        assert batch.labels[e].tolist() != sorted(batch.labels[e].tolist())  # shuffled
        rows = {tuple(x.flatten().tolist()): y for x, y in zip(batch.images[e], batch.labels[e].tolist())}
        assert len(rows) == 50  # distinct examples
        for label in range(5):  # all examples of a label come from one class
            members = batch.images[e][batch.labels[e] == label].flatten(1)
            owners = {int(torch.cdist(m[None], split.images.flatten(1)).argmin()) // 20 for m in members}
            assert len(owners) == 1
    # Seeded, and resumable from its state.
    sampler = SequenceSampler(split, seed=5)
    sampler.sample(2)
    state = sampler.state_dict()
    after = sampler.sample(2)
    sampler.load_state_dict(state)
    assert torch.equal(sampler.sample(2).labels, after.labels)
    assert torch.equal(SequenceSampler(split, seed=5).sample(2).images, SequenceSampler(split, seed=5).sample(2).images)


def test_sequence_sampler_refuses_impossible_episodes():
    split = synthetic_split(classes=4, per_class=6)
    with pytest.raises(DataError, match="only 4"):
        SequenceSampler(split, ways=5)
    with pytest.raises(DataError, match="at most 6 instances"):
        SequenceSampler(split, ways=3, instances=10)


def test_the_preset_is_the_papers_network():
    config = make_config("mann", "omniglot")
    learner = build(config)
    sizes = (config.controller_size, config.memory_slots, config.memory_width, config.read_heads)
    assert sizes == (200, 128, 40, 4) and config.gamma == 0.95 and config.image_size == 20
    assert config.shots + config.query == 10 and config.ways == 5  # 5 classes x 10 instances per sequence
    assert learner.input_gates.in_features == 20 * 20 + 5 and learner.output.in_features == 200 + 4 * 40
    lstm = build(make_config("mann", "omniglot", memory=False))
    assert lstm.lstm.hidden_size == 200 and lstm.memory is None and lstm.output.in_features == 200


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(memory_slots=3, read_heads=4), "--memory-slots 3 is fewer than --read-heads 4"),
        (dict(gamma=1.2), "--gamma must lie in"),
        (dict(ways=1), "--ways must be at least 2"),
        (dict(controller_size=0), "--controller-size must be at least 1"),
        (dict(train_ways=20), "--train-ways 20, --ways 5"),
    ],
)
def test_bad_settings_are_refused_in_one_line(options, message):
    with pytest.raises(ConfigError, match=message) as error:
        build(make_config("mann", "omniglot", **options))
    assert "\n" not in str(error.value)


def test_mann_refuses_regression_and_other_ways():
    with pytest.raises(ConfigError, match="regression") as error:
        make_config("mann", "sinusoid")
    assert "\n" not in str(error.value)
    learner = mann()
    with pytest.raises(ConfigError, match="cannot learn regression"):
        learner.meta_loss(SinusoidTasks(shots=5, query=5, seed=0).sample(2))
    with pytest.raises(ConfigError, match="3 outputs"):
        learner.predict(image_batch(tasks=2, ways=5, shots=1, query=1, size=4, dtype=torch.float32))
    with pytest.raises(ConfigError, match="inputs of 16 values"):
        learner.predict(image_batch(tasks=2, ways=3, shots=1, query=1, size=5, dtype=torch.float32))


@pytest.mark.parametrize("memory", [True, False])
def test_predict_classifies_each_query_on_its_own_after_the_support_sequence(memory):
    torch.manual_seed(0)
    learner = mann(memory=memory).double()
    batch = image_batch(tasks=2, ways=3, shots=2, query=2, size=4)
    logits = learner.predict(batch)
    assert logits.shape == (2, 6, 3)
    # The same as running the (shuffled) support sequence, then one more step for that query alone.
    order = torch.argsort(torch.rand(2, 6, generator=torch.Generator().manual_seed(0)), dim=1)
    for task in range(2):
        support_x, support_y = batch.support_x[task, order[task]], batch.support_y[task, order[task]]
        for q in range(6):
            images = torch.cat([support_x, batch.query_x[task, q : q + 1]]).unsqueeze(0)
            labels = torch.cat([support_y, batch.query_y[task, q : q + 1]]).unsqueeze(0)
            expected = learner.sequence_logits(images, labels)[0, -1]
            torch.testing.assert_close(logits[task, q], expected)
    # Another query set does not change a query's logits; predict is deterministic.
    other = image_batch(tasks=2, ways=3, shots=2, query=2, size=4, seed=1)
    other.support_x, other.support_y = batch.support_x, batch.support_y
    other.query_x[:, 0] = batch.query_x[:, 0]
    torch.testing.assert_close(learner.predict(other)[:, 0], logits[:, 0])
    assert torch.equal(learner.predict(batch), logits)


def test_meta_loss_on_task_batches_reaches_every_parameter():
    torch.manual_seed(0)
    learner = mann()
    batch = image_batch(tasks=2, ways=3, shots=1, query=2, size=4, dtype=torch.float32)
    torch.manual_seed(1)
    output = learner.meta_backward(batch)
    assert output.predictions.shape == (2, 6, 3) and torch.isfinite(output.loss)
    # Support and query as one shuffled sequence; the predictions are the query examples' steps.
    torch.manual_seed(1)
    order = torch.argsort(torch.rand(2, 9), dim=1)
    images = torch.cat([batch.support_x, batch.query_x], 1)[torch.arange(2)[:, None], order]
    labels = torch.cat([batch.support_y, batch.query_y], 1).gather(1, order)
    with torch.no_grad():
        logits = learner.sequence_logits(images, labels)
    for task in range(2):
        for q in range(6):
            step = int((order[task] == 3 + q).nonzero())
            torch.testing.assert_close(output.predictions[task, q], logits[task, step])
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in learner.parameters())
    sequence = SequenceBatch(torch.rand(2, 6, 1, 4, 4), torch.tensor([[0, 1, 2, 0, 1, 2]] * 2), 3)
    assert learner.meta_loss(sequence).predictions.shape == (2, 6, 3)


def test_a_short_training_run_learns_above_chance():
    """3 classes x 4 instances: chance is 1/3 from the 2nd instance on (the 1st can exclude labels already seen)."""
    torch.manual_seed(0)
    learner = mann(controller_size=32, memory_slots=16, memory_width=8)
    test = synthetic_split("test", seed=10)  # classes never seen in training
    untrained = evaluate_by_instance(learner, test, 300, instances=4, reported=(2, 3, 4))
    train_tasks = EpisodeSampler(synthetic_split("train"), ways=3, shots=1, query=3, seed=0)
    optimizer = torch.optim.Adam(learner.parameters(), lr=3e-3)
    for _ in range(60):
        optimizer.zero_grad()
        learner.meta_loss(train_tasks.sample(32)).loss.backward()
        optimizer.step()
    after = evaluate_by_instance(learner, test, 300, instances=4, reported=(2, 3, 4))
    mean = lambda result: sum(result[k]["accuracy_mean"] for k in ("2", "3", "4")) / 3
    assert mean(untrained) < 0.37 < 0.42 < mean(after), (mean(untrained), mean(after))  # 900 predictions each


@pytest.mark.parametrize("memory", [True, False])
def test_training_from_the_cli_configuration_resumes_exactly(tmp_path, memory):
    settings = dict(SMALL, memory=memory, dataset="folder", data_dir=str(make_image_folder(tmp_path / "data")),
                    image_size=8, ways=3, shots=1, query=2, meta_batch_size=4, steps=6, val_every=3,
                    val_episodes=4, test_episodes=4)  # fmt: skip
    straight = train(make_config("mann", out=str(tmp_path / "straight"), **settings), progress=False)
    train(make_config("mann", out=str(tmp_path / "resumed"), **dict(settings, steps=3)), progress=False)
    resumed = train(make_config("mann", out=str(tmp_path / "resumed"), **settings), resume=True, progress=False)
    assert resumed.step == 6
    for name, tensor in straight.learner.state_dict().items():
        torch.testing.assert_close(resumed.learner.state_dict()[name], tensor, rtol=0, atol=0)
    validations = lambda run: [  # the wall clock aside
        r for r in metrics_without_times(tmp_path / run / "metrics.jsonl") if "val_acc" in r
    ]
    assert validations("resumed") == validations("straight") and len(validations("straight")) == 2
    other = make_config("mann", out=str(tmp_path / "resumed"), **dict(settings, read_heads=1))
    with pytest.raises(ConfigError, match="different configuration.*read_heads"):
        train(other, resume=True, progress=False)


def test_mann_is_a_meta_learner():
    from fastadapt.algorithms.base import MetaLearner

    assert issubclass(MANN, MetaLearner) and not MANN.supports_regression
