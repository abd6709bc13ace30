"""A user's own nn.Module meta-trains through the public API with every gradient-based method."""

import pytest
import torch
from helpers import image_batch
from torch import nn

from fastadapt.algorithms import ANIL, MAML, MetaSGD, Reptile
from fastadapt.engine.layers import EpisodeBatchNorm2d
from fastadapt.tasks.episodes import TaskBatch


class UserNet(nn.Module):
    """Written as a user would: any layers, a classifier called ``head`` (only ANIL cares)."""

    def __init__(self, ways: int = 3) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.BatchNorm2d(
                8, track_running_stats=False
            ),  # swapped for EpisodeBatchNorm2d (fastadapt.engine.fastlayers)
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 8, 3, padding=1),
            EpisodeBatchNorm2d(8),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
        )
        self.head = nn.Linear(32, ways)

    def forward(self, x):
        return self.head(self.body(x))


@pytest.mark.parametrize("method", ["maml", "fomaml", "metasgd", "anil", "reptile"])
def test_user_module_meta_trains(method):
    torch.manual_seed(0)
    net = UserNet()
    learner = {
        "maml": lambda: MAML(net, inner_lr=0.1, inner_steps=1),
        "fomaml": lambda: MAML(net, inner_lr=0.1, inner_steps=1, first_order=True),
        "metasgd": lambda: MetaSGD(net, inner_lr=0.1, inner_steps=1),
        "anil": lambda: ANIL(net, inner_lr=0.1, inner_steps=1),
        "reptile": lambda: Reptile(net, inner_lr=0.3, inner_steps=3, inner_optimizer="sgd"),
    }[method]()
    episodes = image_batch(tasks=4, ways=3, shots=2, query=1, size=8, dtype=torch.float32)
    # Score on the support images themselves: random images have no class structure to generalise from,
    # and Reptile never sees query labels; what every method must learn is to adapt well in few steps.
    batch = TaskBatch(episodes.support_x, episodes.support_y, episodes.support_x, episodes.support_y, 3)
    optimizer = (
        torch.optim.SGD(learner.parameters(), lr=0.5)
        if method == "reptile"
        else torch.optim.Adam(learner.parameters(), lr=1e-2)
    )

    def query_loss():
        logits = learner.predict(batch)
        return torch.nn.functional.cross_entropy(logits.reshape(-1, 3), batch.query_y.reshape(-1)).item()

    before = query_loss()
    for _ in range(30):
        loss = learner.meta_loss(batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert query_loss() < 0.8 * before
