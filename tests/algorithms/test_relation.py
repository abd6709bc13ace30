import pytest
import torch
from helpers import adam_meta_losses, image_batch

from fastadapt.algorithms.metric.relation import RelationNet, relation_pairs
from fastadapt.nets.relation import RelationEmbedding, RelationModule, relation_networks
from fastadapt.tasks.episodes import TaskBatch


def tiny_relation_net(hidden=4):
    torch.manual_seed(0)
    return RelationNet(RelationEmbedding(1, hidden), RelationModule(hidden, hidden, feature_size=5)).double()


def naive_scores(learner, batch):
    """Eq. (1) one (class, query) pair at a time; class maps are sums of the class's support maps."""
    f, g = learner.embedding, learner.relation
    out = []
    for t in range(batch.num_tasks):
        xs, ys = batch.support_x[t], batch.support_y[t]
        classes = [sum(f(xs[i : i + 1])[0] for i in range(len(ys)) if ys[i] == k) for k in range(batch.ways)]
        rows = []
        for xq in batch.query_x[t]:
            fq = f(xq.unsqueeze(0))[0]
            rows.append(torch.stack([g(torch.cat([c, fq]).unsqueeze(0))[0, 0] for c in classes]))
        out.append(torch.stack(rows))
    return torch.stack(out)


def test_batched_scores_equal_naive_per_pair_computation():
    learner = tiny_relation_net().eval()  # running BatchNorm statistics: each pair scored on its own
    batch = image_batch(tasks=2, size=28, uniform=True)
    with torch.no_grad():
        torch.testing.assert_close(learner.predict(batch), naive_scores(learner, batch))


def test_batched_scores_equal_naive_with_a_linear_embedding():
    torch.manual_seed(0)
    relation = torch.nn.Sequential(torch.nn.Linear(10, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1), torch.nn.Sigmoid())
    learner = RelationNet(torch.nn.Linear(6, 5), relation).double()
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat_interleave(2).repeat(2, 1)
    batch = TaskBatch(
        torch.randn(2, 6, 6, generator=g, dtype=torch.float64), labels,
        torch.randn(2, 6, 6, generator=g, dtype=torch.float64), labels, 3,
    )  # fmt: skip
    torch.testing.assert_close(learner.predict(batch), naive_scores(learner, batch))


def test_scores_are_in_unit_interval_and_loss_is_mse_to_one_hot():
    learner = tiny_relation_net()
    batch = image_batch(tasks=2, size=28, uniform=True)
    output = learner.meta_loss(batch)
    assert output.predictions.shape == (2, 6, 3)
    assert output.predictions.min() >= 0 and output.predictions.max() <= 1
    one_hot = torch.nn.functional.one_hot(batch.query_y, 3).double()
    torch.testing.assert_close(output.loss, (output.predictions - one_hot).square().mean())


def test_prediction_is_invariant_to_support_order():
    learner = tiny_relation_net().eval()
    batch = image_batch(tasks=2, size=28, uniform=True)
    perm = torch.randperm(batch.support_x.shape[1], generator=torch.Generator().manual_seed(1))
    shuffled = TaskBatch(batch.support_x[:, perm], batch.support_y[:, perm], batch.query_x, batch.query_y, batch.ways)
    with torch.no_grad():
        torch.testing.assert_close(learner.predict(batch), learner.predict(shuffled))


def test_adam_steps_lower_the_meta_loss():
    learner = tiny_relation_net(hidden=8)
    batch = image_batch(tasks=2, seed=1, size=28, uniform=True)
    losses = adam_meta_losses(learner, batch, steps=15)
    assert losses[-1] < 0.8 * losses[0], (losses[0], losses[-1])


@pytest.mark.parametrize("channels, image_size, side, fc_inputs", [(1, 28, 5, 64), (3, 84, 19, 576)])
def test_paper_networks_for_omniglot_and_miniimagenet_sizes(channels, image_size, side, fc_inputs):
    torch.manual_seed(0)
    embedding, relation = relation_networks(channels, image_size)
    assert relation.score[0].in_features == fc_inputs
    with torch.no_grad():
        features = embedding(torch.rand(2, channels, image_size, image_size))
        assert features.shape == (2, 64, side, side)
        scores = relation(torch.cat([features, features.flip(0)], 1))
    assert scores.shape == (2, 1)


def test_too_small_images_are_rejected():
    with pytest.raises(ValueError, match="too small"):
        relation_networks(1, 12)


def test_score_pairs_equals_the_module_on_concatenated_pairs():
    torch.manual_seed(0)
    for padding in (0, 1):
        side = 12 if padding == 0 else 5
        module = RelationModule(4, 3, feature_size=side, padding=padding).double()
        classes, queries = torch.randn(2, 3, 4, side, side).double(), torch.randn(2, 5, 4, side, side).double()
        pairs = relation_pairs(classes, queries).flatten(0, 2)
        expected = module(pairs).reshape(2, 5, 3)
        torch.testing.assert_close(module.score_pairs(classes, queries), expected)
        grads = torch.autograd.grad(module.score_pairs(classes, queries).sum(), list(module.parameters()))
        expected_grads = torch.autograd.grad(expected.sum(), list(module.parameters()))
        for a, b in zip(grads, expected_grads):
            torch.testing.assert_close(a, b)
