import math

import numpy as np
import pytest
import torch

from fastadapt.functional import parameters_of
from fastadapt.rl.baseline import LinearFeatureBaseline, discounted_returns, gae, masked_normalize
from fastadapt.rl.envs import NavigationBatch
from fastadapt.rl.policy import GaussianMLPPolicy, kl_divergence, log_prob
from fastadapt.rl.sampler import Episodes, Sampler
from fastadapt.rl.trpo import conjugate_gradient


def test_sampler_pads_and_masks_episodes_that_end_early():
    env = NavigationBatch()
    sampler = Sampler(env, episodes_per_task=3, seed=0)
    tasks = np.array([[0.15, 0.0], [0.5, 0.5]])
    episodes = sampler.sample_with(env.oracle_actions, tasks)
    # stepping stops once every episode has ended: 5 steps, the longest episode
    assert episodes.observations.shape == (2, 3, 5, 2) and episodes.mask.shape == (2, 3, 5)
    # the oracle reaches the first goal in 2 steps: rewards -0.05 then -0.0, masked after
    assert episodes.mask[0, 0, :3].tolist() == [1, 1, 0]
    assert episodes.returns()[0].tolist() == pytest.approx([-0.05] * 3, abs=1e-6)
    # the second goal takes 5 steps at 0.1 per axis
    assert episodes.mask[1].sum(-1).tolist() == [5, 5, 5]
    assert sampler.total_steps == 3 * 2 + 3 * 5


def test_sampler_uses_each_tasks_parameters_and_its_generator_state_resumes_exactly():
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(2, 2, hidden=(8,))
    params = {k: v.detach() for k, v in parameters_of(policy).items()}
    stacked = {k: torch.stack([v, v + 1.0]) for k, v in params.items()}  # task 1's policy is shifted
    env = NavigationBatch()
    tasks = env.sample_tasks(np.random.default_rng(0), 2)
    a = Sampler(env, 4, seed=7)
    state = a.state_dict()
    first = a.sample(policy, stacked, tasks, per_task=True)
    b = Sampler(NavigationBatch(), 4, seed=123)
    b.load_state_dict(state)
    second = b.sample(policy, stacked, tasks, per_task=True)
    assert torch.equal(first.actions, second.actions)
    shared = Sampler(env, 4, seed=7).sample(policy, params, tasks)
    assert torch.allclose(first.actions[0, :, 0], shared.actions[0, :, 0])  # same noise, same policy for task 0
    assert not torch.allclose(first.actions[1, :, 0], shared.actions[1, :, 0])


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


def test_log_prob_and_kl_match_torch_distributions():
    torch.manual_seed(0)
    mean, log_std, actions = torch.randn(4, 3), torch.randn(3) * 0.3, torch.randn(4, 3)
    normal = torch.distributions.Normal(mean, log_std.exp())
    assert torch.allclose(log_prob(mean, log_std, actions), normal.log_prob(actions).sum(-1))
    mean_q, log_std_q = torch.randn(4, 3), torch.randn(3) * 0.3
    other = torch.distributions.Normal(mean_q, log_std_q.exp())
    expected = torch.distributions.kl_divergence(normal, other).sum(-1)
    assert torch.allclose(kl_divergence(mean, log_std, mean_q, log_std_q), expected, atol=1e-6)


def test_conjugate_gradient_solves_a_positive_definite_system():
    torch.manual_seed(0)
    a = torch.randn(6, 6, dtype=torch.float64)
    a = a @ a.T + 0.5 * torch.eye(6, dtype=torch.float64)
    b = torch.randn(6, dtype=torch.float64)
    x = conjugate_gradient(lambda v: a @ v, b, iterations=6)
    assert torch.allclose(x, torch.linalg.solve(a, b), atol=1e-8)
