"""Trajectory sampling for a batch of tasks: ``episodes_per_task`` episodes of every task, all environments
stepped together (one batched environment step and one policy pass per time step, for all tasks).

Episodes come back as padded tensors: (tasks, episodes, time, ...) with a mask that is 1 for the steps taken
before the episode ended. Every random number (the policy's action noise, the environments' initial states) comes
from the sampler's own ``numpy.random.Generator``, whose state is part of :meth:`Sampler.state_dict`, so a resumed
run samples exactly what an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import vmap

from fastadapt.engine.functional import Params, call
from fastadapt.errors import ConfigError
from fastadapt.rl.envs import BatchedEnv


@dataclass
class Episodes:
    """Padded episodes of a batch of tasks; every tensor's first two dimensions are (tasks, episodes)."""

    observations: Tensor  # (tasks, episodes, time, observation_dim), the observation each action was taken in
    actions: Tensor  # (tasks, episodes, time, action_dim), as sampled (the environment clips them)
    rewards: Tensor  # (tasks, episodes, time), zero after the episode's end
    mask: Tensor  # (tasks, episodes, time), 1.0 while the episode runs

    @property
    def tasks(self) -> int:
        return self.observations.shape[0]

    def returns(self) -> Tensor:
        """Undiscounted return of every episode, (tasks, episodes)."""
        return (self.rewards * self.mask).sum(-1)

    def steps(self) -> int:
        """Environment steps the episodes hold (padding excluded)."""
        return int(self.mask.sum().item())

    def task(self, index: int) -> Episodes:
        """The episodes of one task, keeping a task dimension of 1."""
        return Episodes(*(t[index : index + 1] for t in (self.observations, self.actions, self.rewards, self.mask)))


def action_distribution(
    policy: nn.Module, params: Params, observations: Tensor, per_task: bool
) -> tuple[Tensor, Tensor]:
    """Mean and log standard deviation of the policy's Gaussian for ``observations`` (tasks, ..., obs_dim).

    ``per_task``: ``params`` carry a leading task dimension (each task's adapted policy; run vectorised with
    ``vmap``); otherwise all tasks share ``params``."""
    if per_task:
        mean = vmap(lambda p, o: call(policy, p, o))(params, observations)
        log_std = params["log_std"].view(params["log_std"].shape[0], *([1] * (mean.dim() - 2)), -1)
    else:
        mean = call(policy, params, observations)
        log_std = params["log_std"]
    return mean, log_std.expand_as(mean)


class Sampler:
    """Samples ``episodes_per_task`` episodes of each task in a batch with a policy."""

    def __init__(self, env: BatchedEnv, episodes_per_task: int, seed: int = 0) -> None:
        if episodes_per_task < 1:
            raise ConfigError(f"episodes_per_task must be at least 1, got {episodes_per_task}")
        self.env = env
        self.episodes_per_task = episodes_per_task
        self.rng = np.random.default_rng(seed)
        #: environment steps taken so far (padding excluded), for steps-per-second reports
        self.total_steps = 0

    def sample(self, policy: nn.Module, params: Params, tasks: np.ndarray, *, per_task: bool = False) -> Episodes:
        """Episodes of every task in ``tasks`` with the Gaussian policy ``policy`` run with ``params`` (shared, or
        one set per task when ``per_task``)."""
        count, episodes = len(tasks), self.episodes_per_task
        action_dim = self.env.action_dim

        def act(observations: np.ndarray) -> np.ndarray:
            obs = torch.as_tensor(observations, dtype=torch.float32).view(count, episodes, -1)
            with torch.no_grad():
                mean, log_std = action_distribution(policy, params, obs, per_task)
            noise = torch.from_numpy(self.rng.standard_normal((count * episodes, action_dim), dtype=np.float32))
            return (mean.reshape(-1, action_dim) + torch.exp(log_std).reshape(-1, action_dim) * noise).numpy()

        return self.sample_with(act, tasks)

    def sample_with(self, act: Callable[[np.ndarray], np.ndarray], tasks: np.ndarray) -> Episodes:
        """Episodes with any policy ``act``: observations (environments, obs_dim) -> actions (environments,
        action_dim); environment ``i`` runs task ``tasks[i // episodes_per_task]``."""
        count, episodes = len(tasks), self.episodes_per_task
        env_tasks = np.repeat(np.asarray(tasks), episodes, axis=0)
        observation = self.env.reset(env_tasks, self.rng)
        alive = np.ones(len(env_tasks), dtype=bool)
        observations, actions, rewards, masks = [], [], [], []
        for _ in range(self.env.horizon):
            action = np.asarray(act(observation), dtype=np.float32)
            next_observation, reward, terminated = self.env.step(action)
            observations.append(observation.astype(np.float32))
            actions.append(action)
            rewards.append(np.where(alive, reward, 0.0).astype(np.float32))
            masks.append(alive.astype(np.float32))
            alive = alive & ~terminated
            observation = next_observation
            if not alive.any():
                break

        def stack(arrays: list[np.ndarray]) -> Tensor:
            # (time, environments, ...) -> (tasks, episodes, time, ...)
            array = np.stack(arrays, axis=1)
            return torch.from_numpy(array.reshape(count, episodes, *array.shape[1:]))

        result = Episodes(stack(observations), stack(actions), stack(rewards), stack(masks))
        self.total_steps += result.steps()
        return result

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state, "total_steps": self.total_steps}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.total_steps = state["total_steps"]
