"""The Gaussian MLP policy of MAML-RL.

As in the authors' code (cbfinn/maml_rl, ``MAMLGaussianMLPPolicy(hidden_sizes=(100, 100),
hidden_nonlinearity=relu)``): the mean of a diagonal Gaussian over actions is an MLP with two hidden layers of
100 ReLU units and a linear output; the log standard deviation is one learned vector independent of the state,
initialised to log(1) = 0. All parameters, the log standard deviation included, are adapted by the inner step.

``action_scale`` (default 1: the authors' policy) expresses the mean and the standard deviation in units of the
action bound: mean = action_scale * MLP(observation), and the log standard deviation starts at
log(action_scale * init_std). Every gradient with respect to the parameters is
then that of the unscaled policy on an environment whose actions are divided by ``action_scale``, the usual
normalisation of an action space to [-1, 1].

The module's ``forward`` returns the mean; the log standard deviation is the parameter ``log_std``, so a policy
run with given parameters (``fastadapt.engine.functional.call(policy, params, obs)``) reads it from
``params["log_std"]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from fastadapt.errors import ConfigError


class GaussianMLPPolicy(nn.Module):
    def __init__(
        self,
        observation_dim: int,
        action_dim: int,
        hidden: Sequence[int] = (100, 100),
        init_std: float = 1.0,
        action_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if not init_std > 0 or not action_scale > 0:
            raise ConfigError(
                f"init_std and action_scale must be positive, got {init_std} and {action_scale}; pass e.g. 1.0"
            )
        self.action_scale = float(action_scale)
        self.observation_dim, self.action_dim = observation_dim, action_dim
        layers: list[nn.Module] = []
        width = observation_dim
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        layers.append(nn.Linear(width, action_dim))
        self.mean = nn.Sequential(*layers)
        self.log_std = nn.Parameter(torch.full((action_dim,), math.log(init_std * action_scale)))

    def forward(self, observations: Tensor) -> Tensor:
        """The mean action for each observation (..., observation_dim) -> (..., action_dim)."""
        return self.action_scale * self.mean(observations)  # x * 1.0 is x exactly: the authors' policy unchanged


def log_prob(mean: Tensor, log_std: Tensor, actions: Tensor) -> Tensor:
    """log N(actions; mean, diag(exp(log_std))^2), summed over the action dimension."""
    z = (actions - mean) * torch.exp(-log_std)
    return (-0.5 * z.square() - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


def kl_divergence(mean_p: Tensor, log_std_p: Tensor, mean_q: Tensor, log_std_q: Tensor) -> Tensor:
    """KL(p || q) of two diagonal Gaussians, summed over the action dimension."""
    var_p, var_q = torch.exp(2 * log_std_p), torch.exp(2 * log_std_q)
    return (log_std_q - log_std_p + (var_p + (mean_p - mean_q).square()) / (2 * var_q) - 0.5).sum(-1)


def check_policy(policy: nn.Module, observation_dim: int, action_dim: int, env: str) -> None:
    """ConfigError unless ``policy`` maps the env's observations to its actions."""
    dtype = next(policy.parameters()).dtype
    try:
        with torch.no_grad():
            out = policy(torch.zeros(1, observation_dim, dtype=dtype))
    except RuntimeError as error:
        raise ConfigError(
            f"the policy does not take {env}'s {observation_dim}-d observations ({str(error).splitlines()[0]}); "
            f"build it with GaussianMLPPolicy({observation_dim}, {action_dim})"
        ) from None
    log_std = getattr(policy, "log_std", None)
    if out.shape[-1] != action_dim or log_std is None or log_std.shape != (action_dim,):
        raise ConfigError(
            f"the policy's actions are {out.shape[-1]}-d but {env}'s are {action_dim}-d (and need a log_std "
            f"parameter of that size); build it with GaussianMLPPolicy({observation_dim}, {action_dim})"
        )
