"""Advantages for the policy gradient: the linear feature baseline of rllab, fitted per task, and GAE.

The baseline (rllab's ``LinearFeatureBaseline``, which the MAML authors use) predicts the discounted return from
the time step ``t`` of an episode with features ``[o, o^2, t/100, (t/100)^2, (t/100)^3, 1]`` (``o`` the
observation clipped to [-10, 10]), by ridge regression (regulariser 1e-5, multiplied by 10 up to four times while
the solution is not finite). It is refitted on every batch of episodes, separately for each task (the least
squares of all tasks are solved as one batched linear system), and predicts on the same episodes.

Advantages are generalised advantage estimates (Schulman et al. 2016) on the baseline's values; with
``gae_lambda=1`` (the default) they are the discounted returns minus the baseline, REINFORCE with a baseline
(Williams 1992) as in the paper.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastadapt.rl.sampler import Episodes


class LinearFeatureBaseline:
    def __init__(self, reg_coeff: float = 1e-5) -> None:
        self.reg_coeff = reg_coeff
        #: the last fit's coefficients, (tasks, features) (float64)
        self.coefficients: Tensor | None = None

    @staticmethod
    def features(episodes: Episodes) -> Tensor:
        """(tasks, episodes, time, 2 * observation_dim + 4), zero on padding, float64."""
        obs = episodes.observations.double().clamp(-10, 10)
        time = torch.arange(obs.shape[2], dtype=torch.float64).div(100).view(1, 1, -1, 1).expand(*obs.shape[:3], 1)
        features = torch.cat([obs, obs.square(), time, time.square(), time.pow(3), torch.ones_like(time)], -1)
        return features * episodes.mask.double().unsqueeze(-1)

    def fit(self, episodes: Episodes, returns: Tensor) -> None:
        """Least squares of ``returns`` (tasks, episodes, time) on the features, one solution per task."""
        features = self.features(episodes).flatten(1, 2)  # (tasks, samples, features)
        targets = (returns.double() * episodes.mask.double()).flatten(1, 2)
        gram = features.transpose(1, 2) @ features
        rhs = (features.transpose(1, 2) @ targets.unsqueeze(-1)).squeeze(-1)
        eye = torch.eye(gram.shape[-1], dtype=torch.float64)
        reg = self.reg_coeff
        coefficients = torch.linalg.lstsq(gram + reg * eye, rhs.unsqueeze(-1)).solution.squeeze(-1)
        for _ in range(4):  # rllab: grow the regulariser while the solve is not finite
            bad = ~torch.isfinite(coefficients).all(-1)
            if not bad.any():
                break
            reg *= 10
            retry = torch.linalg.lstsq(gram[bad] + reg * eye, rhs[bad].unsqueeze(-1)).solution.squeeze(-1)
            coefficients[bad] = retry
        self.coefficients = coefficients

    def predict(self, episodes: Episodes) -> Tensor:
        """Baseline values (tasks, episodes, time), float32, zero on padding."""
        assert self.coefficients is not None, "fit the baseline first"
        return torch.einsum("bnef,bf->bne", self.features(episodes), self.coefficients).float()

    def state_dict(self) -> dict:
        return {"reg_coeff": self.reg_coeff, "coefficients": self.coefficients}

    def load_state_dict(self, state: dict) -> None:
        self.reg_coeff, self.coefficients = state["reg_coeff"], state["coefficients"]


def discounted_returns(rewards: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """sum_k gamma^k r_{t+k} within each episode, (tasks, episodes, time)."""
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[..., 0])
    for t in range(rewards.shape[-1] - 1, -1, -1):
        running = (rewards[..., t] + gamma * running) * mask[..., t]
        returns[..., t] = running
    return returns


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> Tensor:
    """Generalised advantage estimates; the value after an episode's last step is 0 (it ended or was cut)."""
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[..., 0])
    next_value = torch.zeros_like(rewards[..., 0])
    for t in range(rewards.shape[-1] - 1, -1, -1):
        delta = rewards[..., t] + gamma * next_value - values[..., t]
        running = (delta + gamma * lam * running) * mask[..., t]
        advantages[..., t] = running
        next_value = values[..., t] * mask[..., t]
    return advantages


def masked_normalize(values: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """Zero mean, unit standard deviation over each task's valid steps (rllab's ``center_adv``)."""
    dims = tuple(range(1, values.dim()))
    count = mask.sum(dims, keepdim=True).clamp_min(1)
    mean = (values * mask).sum(dims, keepdim=True) / count
    var = ((values - mean).square() * mask).sum(dims, keepdim=True) / count
    return (values - mean) / (var.sqrt() + eps) * mask


def advantages(
    episodes: Episodes,
    baseline: LinearFeatureBaseline,
    gamma: float,
    gae_lambda: float = 1.0,
    normalize: bool = True,
) -> Tensor:
    """Fit ``baseline`` to each task's discounted returns and return the (normalised) advantages."""
    returns = discounted_returns(episodes.rewards, episodes.mask, gamma)
    baseline.fit(episodes, returns)
    values = baseline.predict(episodes)
    result = gae(episodes.rewards, values, episodes.mask, gamma, gae_lambda)
    return masked_normalize(result, episodes.mask) if normalize else result
