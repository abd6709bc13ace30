import torch
from helpers import sinusoid_mse_before_and_after

from fastadapt.algorithms import MAML
from fastadapt.datasets.sinusoid import SinusoidTasks
from fastadapt.nets import MLP


def test_maml_meta_training_lowers_post_adaptation_loss_on_sinusoids():
    torch.manual_seed(0)
    learner = MAML(MLP(1, (40, 40), 1), inner_lr=0.01, inner_steps=1, strategy="vmap")
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
    before, after = sinusoid_mse_before_and_after(learner, optimizer)
    assert after < 0.7 * before


def test_adaptation_lowers_support_loss_and_more_steps_fit_better():
    torch.manual_seed(0)
    learner = MAML(MLP(1, (40, 40), 1), inner_lr=0.01, inner_steps=1)
    batch = SinusoidTasks(shots=10, query=10, seed=3).sample(20)
    support_as_query = type(batch)(batch.support_x, batch.support_y, batch.support_x, batch.support_y, None)
    mse = [(learner.predict(support_as_query, steps=k) - batch.support_y).square().mean().item() for k in (0, 1, 10)]
    assert mse[0] > mse[1] > mse[2]
