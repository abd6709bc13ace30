import numpy as np
import pytest
import torch

from fastadapt.engine.functional import parameters_of
from fastadapt.rl.envs import NavigationBatch
from fastadapt.rl.policy import GaussianMLPPolicy
from fastadapt.rl.sampler import Sampler


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
