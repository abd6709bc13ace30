"""Task distributions for meta-reinforcement learning (Finn, Abbeel & Levine, ICML 2017, section 5.3).

Two environments, each as a gymnasium ``Env`` for one task and as a *batched* form that steps many tasks'
environments at once (the sampler's interface):

- **2D navigation** (``fastadapt/Navigation2D-v0``): a point starts at (0, 0); a task is a goal drawn uniformly
  from [-0.5, 0.5]^2. The observation is the point's position, the action a velocity clipped to [-0.1, 0.1] per
  axis and added to the position, the reward the negative L2 distance from the new position to the goal. An
  episode ends within 0.01 of the goal or after 100 steps. The batched form is pure numpy: one array operation
  per step for all environments.
- **Half-cheetah velocity** (``fastadapt/HalfCheetahVel-v0``): gymnasium's MuJoCo HalfCheetah (v5 model and
  observation); a task is a target forward velocity drawn uniformly from [0, 2]; reward =
  -|forward velocity - target| - 0.05 * ||action||^2 (the control cost of the authors' rllab environment,
  0.5 * 0.1), horizon 200. MuJoCo is an optional dependency (``pip install fastadapt[rl]``), imported only when
  this environment is made.

Environment names accepted by :func:`make_batched`: ``navigation-2d`` and ``halfcheetah-vel`` (or the
gymnasium ids above).
"""

from __future__ import annotations

import functools
from typing import Any, Protocol

import numpy as np

from fastadapt.errors import ConfigError

NAVIGATION_ID = "fastadapt/Navigation2D-v0"
HALFCHEETAH_VEL_ID = "fastadapt/HalfCheetahVel-v0"
#: short names (the CLI's ``--env``) -> gymnasium ids
ENV_IDS = {"navigation-2d": NAVIGATION_ID, "halfcheetah-vel": HALFCHEETAH_VEL_ID}

NAV_GOAL_LOW, NAV_GOAL_HIGH = -0.5, 0.5
NAV_MAX_SPEED = 0.1
NAV_GOAL_RADIUS = 0.01
NAV_HORIZON = 100

CHEETAH_VEL_LOW, CHEETAH_VEL_HIGH = 0.0, 2.0
CHEETAH_CTRL_COST = 0.05  # rllab's half_cheetah_env_rand: 0.5 * 1e-1 * ||a||^2
CHEETAH_HORIZON = 200

MISSING_MUJOCO = "half-cheetah needs MuJoCo: pip install fastadapt[rl] (installs gymnasium[mujoco] and mujoco)"


def _gym():
    try:
        import gymnasium
    except ImportError as error:
        raise ConfigError("meta-RL needs gymnasium: pip install fastadapt[rl]") from error
    return gymnasium


# ---------------------------------------------------------------------------------------------------------------
# 2D navigation


def navigation_step(
    position: np.ndarray, goal: np.ndarray, action: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One step of 2D navigation for any leading batch shape: ``(new_position, reward, reached_goal)``."""
    new_position = position + np.clip(action, -NAV_MAX_SPEED, NAV_MAX_SPEED)
    distance = np.linalg.norm(new_position - goal, axis=-1)
    return new_position, -distance, distance < NAV_GOAL_RADIUS


@functools.cache
def _navigation_env_class():
    gym = _gym()
    from gymnasium import spaces

    class Navigation2DEnv(gym.Env):
        """One 2D-navigation task as a gymnasium environment. The goal is a constructor argument or
        ``reset(options={"goal": ...})``; without either, ``reset`` draws one from the task distribution with the
        environment's seeded generator. The 100-step limit is gymnasium's ``TimeLimit`` (``max_episode_steps``)."""

        metadata = {"render_modes": []}

        def __init__(self, goal: Any = None) -> None:
            self.observation_space = spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
            self.action_space = spaces.Box(-NAV_MAX_SPEED, NAV_MAX_SPEED, shape=(2,), dtype=np.float32)
            self.goal = None if goal is None else _check_goal(goal)
            self.position = np.zeros(2)

        def reset(self, *, seed: int | None = None, options: dict | None = None):
            super().reset(seed=seed)
            if options and options.get("goal") is not None:
                self.goal = _check_goal(options["goal"])
            elif self.goal is None:
                self.goal = self.np_random.uniform(NAV_GOAL_LOW, NAV_GOAL_HIGH, size=2)
            self.position = np.zeros(2)
            return self.position.astype(np.float32), {"goal": self.goal.copy()}

        def step(self, action):
            self.position, reward, reached = navigation_step(self.position, self.goal, np.asarray(action, float))
            return self.position.astype(np.float32), float(reward), bool(reached), False, {"goal": self.goal.copy()}

    return Navigation2DEnv


def _check_goal(goal: Any) -> np.ndarray:
    goal = np.asarray(goal, dtype=float)
    if goal.shape != (2,):
        raise ConfigError(f"a 2D-navigation goal is two numbers (x, y), got shape {goal.shape}; pass goal=(x, y)")
    return goal


class BatchedEnv(Protocol):
    """Many environments stepped at once, each with its own task (one row of ``tasks``)."""

    name: str
    observation_dim: int
    action_dim: int
    horizon: int

    def sample_tasks(self, rng: np.random.Generator, count: int) -> np.ndarray: ...

    def reset(self, tasks: np.ndarray, rng: np.random.Generator) -> np.ndarray: ...

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


class NavigationBatch:
    """``len(tasks)`` 2D-navigation environments as two numpy arrays (positions and goals): each step is one
    vectorised :func:`navigation_step`, no loop over environments. Environments whose episode ended keep being
    stepped; the sampler masks what follows the end."""

    name = "navigation-2d"
    observation_dim = 2
    action_dim = 2
    horizon = NAV_HORIZON

    def __init__(self) -> None:
        self.positions = np.zeros((0, 2))
        self.goals = np.zeros((0, 2))

    def sample_tasks(self, rng: np.random.Generator, count: int) -> np.ndarray:
        """Goals, shape (count, 2), uniform in [-0.5, 0.5]^2."""
        return rng.uniform(NAV_GOAL_LOW, NAV_GOAL_HIGH, size=(count, 2))

    def reset(self, tasks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        self.goals = np.asarray(tasks, dtype=float).reshape(-1, 2)
        self.positions = np.zeros_like(self.goals)
        return self.positions.copy()

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        self.positions, rewards, reached = navigation_step(self.positions, self.goals, actions)
        return self.positions.copy(), rewards, reached

    def oracle_actions(self, observations: np.ndarray) -> np.ndarray:
        """The analytic greedy policy: straight at the goal at full speed (clipped per axis), the paper's oracle
        reference."""
        return np.clip(self.goals - observations, -NAV_MAX_SPEED, NAV_MAX_SPEED)


# ---------------------------------------------------------------------------------------------------------------
# Half-cheetah velocity (MuJoCo, optional)


@functools.cache
def _halfcheetah_env_class():
    _gym()
    try:
        import mujoco  # noqa: F401
        from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv
    except ImportError as error:
        raise ConfigError(MISSING_MUJOCO) from error

    class HalfCheetahVelEnv(HalfCheetahEnv):
        """gymnasium's HalfCheetah-v5 whose reward asks for a target forward velocity (one task). The target is a
        constructor argument or ``reset(options={"velocity": ...})``; without either, ``reset`` draws one
        uniformly from [0, 2]."""

        def __init__(self, velocity: float | None = None, **kwargs: Any) -> None:
            kwargs.setdefault("ctrl_cost_weight", CHEETAH_CTRL_COST)
            super().__init__(**kwargs)
            self.velocity = velocity

        def reset(self, *, seed: int | None = None, options: dict | None = None):
            if options and options.get("velocity") is not None:
                self.velocity = float(options["velocity"])
            observation, info = super().reset(seed=seed)
            if self.velocity is None:
                self.velocity = float(self.np_random.uniform(CHEETAH_VEL_LOW, CHEETAH_VEL_HIGH))
            return observation, {**info, "velocity": self.velocity}

        def step(self, action):
            # actions outside [-1, 1] are clipped before the physics and the control cost (rllab's normalize)
            return super().step(np.clip(action, -1.0, 1.0))

        def _get_rew(self, x_velocity: float, action):
            forward = -abs(x_velocity - self.velocity)
            control = self.control_cost(action)
            return forward - control, {"reward_forward": forward, "reward_ctrl": -control}

    return HalfCheetahVelEnv


class HalfCheetahVelBatch:
    """Many half-cheetah-velocity environments on one compiled MuJoCo model, one ``MjData`` each. MuJoCo steps one
    ``MjData`` at a time, so stepping loops over the environments (each iteration one C call of ``frame_skip``
    physics steps); observations, rewards and the velocity targets are computed for all at once in numpy.
    Dynamics, observation, reward and initial-state noise are those of :class:`HalfCheetahVelEnv` (gymnasium's
    HalfCheetah-v5), step for step (tested)."""

    name = "halfcheetah-vel"
    observation_dim = 17
    action_dim = 6
    horizon = CHEETAH_HORIZON

    def __init__(self) -> None:
        template = _halfcheetah_env_class()()
        import mujoco

        self._mujoco = mujoco
        self.model = template.model
        self.frame_skip, self.dt = template.frame_skip, template.dt
        self.init_qpos, self.init_qvel = template.init_qpos.copy(), template.init_qvel.copy()
        self.noise_scale = template._reset_noise_scale
        self.ctrl_cost = template._ctrl_cost_weight
        self.datas: list = []
        self.count = 0
        self.velocities = np.zeros(0)

    def sample_tasks(self, rng: np.random.Generator, count: int) -> np.ndarray:
        """Target velocities, shape (count,), uniform in [0, 2]."""
        return rng.uniform(CHEETAH_VEL_LOW, CHEETAH_VEL_HIGH, size=count)

    def reset(self, tasks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        self.velocities = np.asarray(tasks, dtype=float).reshape(-1)
        self.count = len(self.velocities)
        while len(self.datas) < self.count:
            self.datas.append(self._mujoco.MjData(self.model))
        # gymnasium's reset_model noise, drawn from the sampler's generator (exact resume)
        nq, nv = self.model.nq, self.model.nv
        qpos = self.init_qpos + rng.uniform(-self.noise_scale, self.noise_scale, size=(self.count, nq))
        qvel = self.init_qvel + self.noise_scale * rng.standard_normal((self.count, nv))
        for data, position, velocity in zip(self.datas, qpos, qvel):
            self._mujoco.mj_resetData(self.model, data)
            data.qpos[:], data.qvel[:] = position, velocity
            self._mujoco.mj_forward(self.model, data)
        return self._observations()

    def _observations(self) -> np.ndarray:
        # as HalfCheetah-v5: qpos without the x position, then qvel
        datas = self.datas[: self.count]
        return np.concatenate([np.stack([d.qpos[1:] for d in datas]), np.stack([d.qvel for d in datas])], 1)

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        actions = np.clip(np.asarray(actions, dtype=float), -1.0, 1.0)
        datas = self.datas[: self.count]
        x_before = np.array([d.qpos[0] for d in datas])
        for data, action in zip(datas, actions):
            data.ctrl[:] = action
            self._mujoco.mj_step(self.model, data, nstep=self.frame_skip)
        x_velocity = (np.array([d.qpos[0] for d in datas]) - x_before) / self.dt
        rewards = -np.abs(x_velocity - self.velocities) - self.ctrl_cost * np.square(actions).sum(-1)
        return self._observations(), rewards, np.zeros(self.count, dtype=bool)


# ---------------------------------------------------------------------------------------------------------------
# Registration and construction

_BATCHED = {"navigation-2d": NavigationBatch, "halfcheetah-vel": HalfCheetahVelBatch}


def env_name(name: str) -> str:
    """The short name for ``name`` (a short name or a registered gymnasium id); ConfigError when unknown."""
    for short, gym_id in ENV_IDS.items():
        if name in (short, gym_id):
            return short
    raise ConfigError(f"unknown env {name!r}; choose one of {', '.join(ENV_IDS)}")


def make_batched(name: str) -> BatchedEnv:
    """The batched form of environment ``name`` (``navigation-2d`` or ``halfcheetah-vel``)."""
    return _BATCHED[env_name(name)]()


def register() -> None:
    """Register both environments with gymnasium (idempotent). Called on import of ``fastadapt.rl``."""
    gym = _gym()
    if NAVIGATION_ID not in gym.registry:
        gym.register(NAVIGATION_ID, entry_point=_navigation_env_class(), max_episode_steps=NAV_HORIZON)
    if HALFCHEETAH_VEL_ID not in gym.registry:
        gym.register(HALFCHEETAH_VEL_ID, entry_point=make_halfcheetah_vel, max_episode_steps=CHEETAH_HORIZON)


def make_halfcheetah_vel(**kwargs: Any):
    """gymnasium's entry point for ``fastadapt/HalfCheetahVel-v0``: imports MuJoCo only now."""
    return _halfcheetah_env_class()(**kwargs)


def __getattr__(name: str):
    # the gymnasium classes are built on first use, so that the numpy batched form needs no gymnasium import
    if name == "Navigation2DEnv":
        return _navigation_env_class()
    if name == "HalfCheetahVelEnv":
        return _halfcheetah_env_class()
    raise AttributeError(name)
