import torch
from helpers import vector_batch

from fastadapt.algorithms import ProtoNet
from fastadapt.algorithms.metric.protonet import prototypes, squared_euclidean
from fastadapt.tasks.episodes import TaskBatch


def naive_logits(embed, batch):
    out = []
    for t in range(batch.num_tasks):
        zs, zq = embed(batch.support_x[t]), embed(batch.query_x[t])
        centres = torch.stack([zs[batch.support_y[t] == k].mean(0) for k in range(batch.ways)])
        out.append(torch.stack([torch.stack([-((q - c) ** 2).sum() for c in centres]) for q in zq]))
    return torch.stack(out)


def test_batched_distances_equal_naive_per_episode_computation():
    torch.manual_seed(0)
    encoder = torch.nn.Linear(6, 5).double()
    batch = vector_batch()
    torch.testing.assert_close(ProtoNet(encoder).predict(batch), naive_logits(encoder, batch))


def test_prediction_is_invariant_to_support_order():
    torch.manual_seed(0)
    learner = ProtoNet(torch.nn.Linear(6, 5).double())
    batch = vector_batch()
    perm = torch.randperm(batch.support_x.shape[1])
    shuffled = TaskBatch(batch.support_x[:, perm], batch.support_y[:, perm], batch.query_x, batch.query_y, batch.ways)
    torch.testing.assert_close(learner.predict(batch), learner.predict(shuffled))


def test_prototypes_are_class_means_and_distance_is_squared_euclidean():
    z = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [1.0, 3.0]]])
    y = torch.tensor([[0, 0, 1]])
    torch.testing.assert_close(prototypes(z, y, 2), torch.tensor([[[1.0, 0.0], [1.0, 3.0]]]))
    d = squared_euclidean(torch.tensor([[[1.0, 1.0]]]), torch.tensor([[[1.0, 0.0], [4.0, 5.0]]]))
    torch.testing.assert_close(d, torch.tensor([[[1.0, 25.0]]]))


def test_cosine_distance_option():
    torch.manual_seed(0)
    learner = ProtoNet(torch.nn.Linear(6, 5).double(), distance="cosine")
    logits = learner.predict(vector_batch())
    assert logits.abs().max() <= 1 + 1e-9
