import math

import pytest
import torch

from fastadapt.rl.baseline import LinearFeatureBaseline, discounted_returns, gae, masked_normalize
from fastadapt.rl.sampler import Episodes


def _episodes(observations, rewards, mask):
    tasks, eps, steps = mask.shape
    return Episodes(observations, torch.zeros(tasks, eps, steps, 1), rewards, mask)


def test_discounted_returns_and_gae_against_hand_computed_values():
    rewards = torch.tensor([[[1.0, 2.0, 3.0, 0.0]]])
    mask = torch.tensor([[[1.0, 1.0, 1.0, 0.0]]])
    returns = discounted_returns(rewards, mask, 0.5)
    assert returns[0, 0].tolist() == [1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3, 0]
    values = torch.tensor([[[0.5, 1.0, 2.0, 9.0]]])
    # lambda = 1: returns minus values
    assert torch.allclose(gae(rewards, values, mask, 0.5, 1.0), (returns - values) * mask)
    # lambda = 0: one-step TD errors, the value after the last step is 0
    expected = [1 + 0.5 * 1.0 - 0.5, 2 + 0.5 * 2.0 - 1.0, 3 + 0 - 2.0, 0]
    assert gae(rewards, values, mask, 0.5, 0.0)[0, 0].tolist() == pytest.approx(expected)


def test_linear_baseline_recovers_returns_that_are_linear_in_its_features():
    torch.manual_seed(0)
    obs = torch.randn(2, 3, 5, 2)
    mask = torch.ones(2, 3, 5)
    mask[0, 1, 3:] = 0
    episodes = _episodes(obs, torch.zeros(2, 3, 5), mask)
    features = LinearFeatureBaseline.features(episodes)
    assert features.shape == (2, 3, 5, 2 * 2 + 4)
    assert torch.allclose(features[0, 0, 2, 4:], torch.tensor([0.02, 0.0004, 0.000008, 1.0], dtype=torch.float64))
    coefficients = torch.randn(2, 8, dtype=torch.float64)  # a different linear function per task
    targets = torch.einsum("bnef,bf->bne", features, coefficients).float()
    baseline = LinearFeatureBaseline(reg_coeff=1e-10)
    baseline.fit(episodes, targets)
    assert torch.allclose(baseline.predict(episodes), targets * mask, atol=1e-4)
    assert baseline.predict(episodes)[0, 1, 3:].abs().max() == 0


def test_masked_normalize_gives_each_task_zero_mean_unit_std_over_valid_steps():
    values = torch.tensor([[1.0, 2.0, 3.0, 100.0], [5.0, 5.0, 7.0, 7.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    out = masked_normalize(values, mask)
    assert out[0, 3] == 0
    assert out[0, :3].tolist() == pytest.approx([-math.sqrt(1.5), 0, math.sqrt(1.5)], rel=1e-5)
    assert out[1].tolist() == pytest.approx([-1, -1, 1, 1], rel=1e-5)
