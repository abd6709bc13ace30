import math
import sys

import numpy as np
import pytest

gym = pytest.importorskip("gymnasium")

import fastadapt.rl  # noqa: E402,F401  (registers the environments)
from fastadapt.errors import ConfigError  # noqa: E402
from fastadapt.rl import envs  # noqa: E402


def test_navigation_steps_match_hand_computed_dynamics_and_reward():
    env = gym.make("fastadapt/Navigation2D-v0", goal=(0.3, -0.2))
    obs, info = env.reset(seed=0)
    assert np.allclose(obs, [0, 0]) and np.allclose(info["goal"], [0.3, -0.2])
    # (0.05, 0.2) is clipped to (0.05, 0.1): position (0.05, 0.1), distance sqrt(0.25^2 + 0.3^2)
    obs, reward, terminated, truncated, _ = env.step(np.array([0.05, 0.2]))
    assert np.allclose(obs, [0.05, 0.1])
    assert reward == pytest.approx(-math.hypot(0.25, 0.3))
    assert not terminated and not truncated
    # (-0.5, -0.5) is clipped to (-0.1, -0.1): (-0.05, 0.0), distance sqrt(0.35^2 + 0.2^2)
    obs, reward, *_ = env.step(np.array([-0.5, -0.5]))
    assert np.allclose(obs, [-0.05, 0.0], atol=1e-7)
    assert reward == pytest.approx(-math.hypot(0.35, 0.2))


def test_navigation_ends_within_001_of_the_goal_or_after_100_steps():
    env = gym.make("fastadapt/Navigation2D-v0", goal=(0.095, 0.0))
    env.reset()
    *_, terminated, _, _ = env.step(np.array([0.1, 0.0]))  # 0.005 from the goal
    assert terminated
    env = gym.make("fastadapt/Navigation2D-v0", goal=(0.5, 0.5))
    env.reset()
    for t in range(100):
        *_, terminated, truncated, _ = env.step(np.array([0.0, 0.0]))
        assert not terminated
        assert truncated == (t == 99)


def test_navigation_passes_gymnasiums_env_checker_and_draws_goals_when_none_given():
    from gymnasium.utils.env_checker import check_env

    check_env(gym.make("fastadapt/Navigation2D-v0").unwrapped, skip_render_check=True)
    env = gym.make("fastadapt/Navigation2D-v0")
    _, info = env.reset(seed=3)
    assert np.all(np.abs(info["goal"]) <= 0.5)
    _, info2 = env.reset(options={"goal": (0.1, 0.2)})
    assert np.allclose(info2["goal"], [0.1, 0.2])


def test_batched_navigation_equals_single_environments_step_for_step():
    rng = np.random.default_rng(0)
    batch = envs.NavigationBatch()
    goals = batch.sample_tasks(rng, 6)
    obs = batch.reset(goals, rng)
    singles = [gym.make("fastadapt/Navigation2D-v0", goal=g) for g in goals]
    single_obs = np.stack([e.reset()[0] for e in singles])
    assert np.allclose(obs, single_obs)
    for _ in range(30):
        actions = rng.normal(0, 0.15, size=(6, 2))
        obs, rewards, terminated = batch.step(actions)
        for i, env in enumerate(singles):
            o, r, term, _, _ = env.step(actions[i])
            assert np.allclose(obs[i], o, atol=1e-6)
            assert rewards[i] == pytest.approx(r)
            assert terminated[i] == term


def test_oracle_goes_straight_to_the_goal():
    batch = envs.NavigationBatch()
    batch.reset(np.array([[0.25, -0.05]]), np.random.default_rng(0))
    obs = np.zeros((1, 2))
    for expected in ([0.1, -0.05], [0.2, -0.05], [0.25, -0.05]):
        obs, _, done = batch.step(batch.oracle_actions(obs))
        assert np.allclose(obs, [expected])
    assert done[0]


def test_unknown_env_is_one_clear_error():
    with pytest.raises(ConfigError, match="unknown env 'cartpole'; choose one of navigation-2d, halfcheetah-vel"):
        envs.make_batched("cartpole")
    assert isinstance(envs.make_batched("fastadapt/Navigation2D-v0"), envs.NavigationBatch)


def test_missing_mujoco_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "mujoco", None)  # import mujoco now raises ImportError
    envs._halfcheetah_env_class.cache_clear()
    try:
        with pytest.raises(ConfigError, match=r"pip install fastadapt\[rl\]"):
            envs.make_batched("halfcheetah-vel")
    finally:
        envs._halfcheetah_env_class.cache_clear()


@pytest.fixture
def mujoco():
    return pytest.importorskip("mujoco")


def test_halfcheetah_velocity_reward_is_minus_speed_error_minus_control_cost(mujoco):
    env = gym.make("fastadapt/HalfCheetahVel-v0", velocity=1.5)
    env.reset(seed=0)
    action = np.full(6, 0.5)
    _, reward, terminated, _, info = env.step(action)
    assert reward == pytest.approx(-abs(info["x_velocity"] - 1.5) - 0.05 * np.sum(action**2))
    assert not terminated
    assert env.spec.max_episode_steps == 200


def test_batched_halfcheetah_equals_single_environments_step_for_step(mujoco):
    batch = envs.make_batched("halfcheetah-vel")
    rng = np.random.default_rng(1)
    velocities = batch.sample_tasks(rng, 3)
    assert np.all((velocities >= 0) & (velocities <= 2))
    obs = batch.reset(velocities, np.random.default_rng(5))
    singles = []
    for i, velocity in enumerate(velocities):
        env = gym.make("fastadapt/HalfCheetahVel-v0").unwrapped
        env.reset(seed=0, options={"velocity": velocity})
        env.set_state(batch.datas[i].qpos.copy(), batch.datas[i].qvel.copy())  # the batch's initial noise
        assert np.array_equal(env._get_obs(), obs[i])
        singles.append(env)
    for _ in range(40):
        actions = rng.uniform(-1.2, 1.2, size=(3, 6))  # some outside [-1, 1]: both clip
        obs, rewards, _ = batch.step(actions)
        for i, env in enumerate(singles):
            o, r, *_ = env.step(actions[i])
            assert np.array_equal(obs[i], o)
            assert rewards[i] == pytest.approx(r, abs=1e-12)
