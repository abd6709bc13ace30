import dataclasses

import numpy as np
import pytest
import torch
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from fastadapt.algorithms.optimization.maml_rl import MAMLRLOptions, build, options_for
from fastadapt.engine.functional import parameters_of
from fastadapt.errors import ConfigError
from fastadapt.rl import runner
from fastadapt.rl.envs import NavigationBatch
from fastadapt.rl.policy import GaussianMLPPolicy
from fastadapt.rl.sampler import Episodes, Sampler
from fastadapt.rl.trpo import hessian_vector_product

SMALL = MAMLRLOptions(hidden=(16,), meta_batch=3, episodes_per_task=4, iterations=2, eval_tasks=3)


def _double(episodes: Episodes) -> Episodes:
    return Episodes(*(t.double() for t in dataclasses.astuple(episodes)))


def _batch(options=SMALL, dtype=torch.float64, seed=0):
    env = NavigationBatch()
    learner = build(options, env=env)
    tasks = env.sample_tasks(np.random.default_rng(seed), options.meta_batch)
    batch = learner.sample_batch(Sampler(env, options.episodes_per_task, seed=seed), tasks)
    if dtype == torch.float64:
        learner.double()
        batch.train = [_double(e) for e in batch.train]
        batch.valid = _double(batch.valid)
        learner.prepare(batch)
    return learner, batch


def _flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


def test_reinforce_gradient_of_a_one_step_bandit_equals_its_analytic_value():
    # mean mu (the output bias; observations are 0), std sigma, reward -(a - c)^2: J = -((mu - c)^2 + sigma^2),
    # dJ/dmu = -2 (mu - c), dJ/dlog sigma = -2 sigma^2. The inner loss is -J's REINFORCE estimate.
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(1, 1, hidden=(), init_std=0.5).double()
    with torch.no_grad():
        policy.mean[0].bias.fill_(0.3)
    learner = build(MAMLRLOptions(hidden=()), policy=policy, env=_Bandit())
    mu, sigma, c, n = 0.3, 0.5, -0.2, 1_000_000
    actions = mu + sigma * torch.randn(1, n, 1, 1, dtype=torch.float64)
    rewards = -((actions[..., 0] - c) ** 2)
    obs, mask = torch.zeros(1, n, 1, 1, dtype=torch.float64), torch.ones(1, n, 1, dtype=torch.float64)
    params = parameters_of(policy)
    loss = learner.inner_loss({k: v for k, v in params.items()}, obs[0], actions[0], rewards[0], mask[0])
    grad_mu, grad_log_std = torch.autograd.grad(loss, [policy.mean[0].bias, policy.log_std])
    # exactly the score-function estimate of these samples ...
    score_mu = (actions[..., 0] - mu) / policy.log_std.exp().item() ** 2  # the float32-initialised sigma
    assert grad_mu.item() == pytest.approx(-(score_mu * rewards).mean().item(), rel=1e-10)
    # ... whose value is the analytic gradient (1e6 samples: within 1%)
    assert grad_mu.item() == pytest.approx(2 * (mu - c), rel=0.01)
    assert grad_log_std.item() == pytest.approx(2 * sigma**2, rel=0.01)


class _Bandit:
    name, observation_dim, action_dim, horizon = "bandit", 1, 1, 1


def test_meta_gradient_through_the_inner_step_equals_finite_differences():
    learner, batch = _batch()
    params = list(learner.policy.parameters())
    with torch.no_grad():
        old = tuple(t.detach() for t in learner.adapted_distribution(batch, create_graph=False))
    surrogate, _ = learner.surrogate_and_kl(batch, old, create_graph=True)
    grad = _flat(torch.autograd.grad(surrogate, params))
    theta = parameters_to_vector(params).detach().clone()
    v = torch.randn_like(theta, generator=torch.Generator().manual_seed(1))
    eps = 1e-5

    def surrogate_at(vector):
        vector_to_parameters(vector, params)
        with torch.no_grad():
            return learner.surrogate_and_kl(batch, old, create_graph=False)[0]

    fd = (surrogate_at(theta + eps * v) - surrogate_at(theta - eps * v)) / (2 * eps)
    assert grad.dot(v).item() == pytest.approx(fd.item(), rel=1e-5)


def test_kl_hessian_vector_product_through_the_inner_step_equals_finite_differences():
    learner, batch = _batch()
    params = list(learner.policy.parameters())
    with torch.no_grad():
        old = tuple(t.detach() for t in learner.adapted_distribution(batch, create_graph=False))
    theta = parameters_to_vector(params).detach().clone()
    _, kl = learner.surrogate_and_kl(batch, old, create_graph=True)
    v = torch.randn_like(theta, generator=torch.Generator().manual_seed(2))
    hv = hessian_vector_product(kl, params)(v)

    def kl_gradient_at(vector):
        vector_to_parameters(vector, params)
        _, kl = learner.surrogate_and_kl(batch, old, create_graph=True)
        return _flat(torch.autograd.grad(kl, params))

    eps = 1e-5
    fd = (kl_gradient_at(theta + eps * v) - kl_gradient_at(theta - eps * v)) / (2 * eps)
    assert torch.allclose(hv, fd, rtol=1e-4, atol=1e-8 * fd.abs().max().item())
    # the product TRPO uses, J^T M J v, is the same Hessian at theta_old
    vector_to_parameters(theta, params)
    mean, log_std = learner.adapted_distribution(batch, create_graph=True)
    assert torch.allclose(learner.kl_hessian_product(batch, old, mean, log_std)(v), hv, rtol=1e-8, atol=1e-12)
    # the inner step matters: without it (first order) the product is different
    vector_to_parameters(theta, params)
    first = dataclasses.replace(learner.options, first_order=True)
    learner.options = first
    _, kl_first = learner.surrogate_and_kl(batch, old, create_graph=True)
    hv_first = hessian_vector_product(kl_first, params)(v)
    assert not torch.allclose(hv, hv_first, rtol=1e-3)


def test_first_order_meta_gradient_is_the_sum_of_the_adapted_policies_gradients():
    learner, batch = _batch(SMALL.replace(first_order=True))
    with torch.no_grad():
        old = tuple(t.detach() for t in learner.adapted_distribution(batch, create_graph=False))
    surrogate, _ = learner.surrogate_and_kl(batch, old, create_graph=True)
    grads = torch.autograd.grad(surrogate, list(learner.policy.parameters()))
    # reference: the adapted parameters as leaves, the same surrogate written out by hand
    from fastadapt.rl.sampler import action_distribution

    adapted = learner.adapt(
        parameters_of(learner.policy), batch.train[0], batch.train_advantages[0], per_task=False, create_graph=False
    )
    leaves = {k: v.detach().requires_grad_() for k, v in adapted.items()}
    mean, log_std = action_distribution(learner.policy, leaves, batch.valid.observations, per_task=True)
    from fastadapt.rl.policy import log_prob

    lp = log_prob(mean, log_std, batch.valid.actions)
    ratio = torch.exp(lp - lp.detach())
    mask = batch.valid.mask
    reference = ((ratio * batch.valid_advantages * mask).sum((1, 2)) / mask.sum((1, 2))).mean()
    leaf_grads = torch.autograd.grad(reference, list(leaves.values()))
    for g, leaf_g in zip(grads, leaf_grads):
        assert torch.allclose(g, leaf_g.sum(0), atol=1e-10)


def test_vmap_strategy_gives_the_loop_meta_gradient():
    grads = []
    for strategy in ("loop", "vmap"):
        learner, batch = _batch(SMALL.replace(strategy=strategy))
        with torch.no_grad():
            old = tuple(t.detach() for t in learner.adapted_distribution(batch, create_graph=False))
        surrogate, _ = learner.surrogate_and_kl(batch, old, create_graph=True)
        grads.append(_flat(torch.autograd.grad(surrogate, list(learner.policy.parameters()))))
    assert torch.allclose(grads[0], grads[1], atol=1e-9)


def test_trpo_step_improves_the_surrogate_within_the_kl_bound():
    learner, batch = _batch(SMALL.replace(max_kl=0.005), dtype=torch.float32)
    with torch.no_grad():
        old = tuple(t.detach() for t in learner.adapted_distribution(batch, create_graph=False))
    before = parameters_to_vector(learner.policy.parameters()).detach().clone()
    stats = learner.outer_step(batch)
    assert stats["accepted"]
    assert not torch.equal(before, parameters_to_vector(learner.policy.parameters()))
    with torch.no_grad():
        surrogate, kl = learner.surrogate_and_kl(batch, old, create_graph=False)
    assert 0 < kl.item() <= 0.005
    assert surrogate.item() > 0  # the surrogate is 0 at the old policy (normalised advantages, ratio 1)
    assert stats["kl"] == pytest.approx(kl.item(), rel=1e-4)


def test_ppo_outer_step_runs_and_moves_the_policy():
    learner, batch = _batch(SMALL.replace(outer="ppo", ppo_epochs=2), dtype=torch.float32)
    before = parameters_to_vector(learner.policy.parameters()).detach().clone()
    stats = learner.outer_step(batch)
    assert np.isfinite(stats["kl"]) and stats["kl"] > 0
    assert not torch.equal(before, parameters_to_vector(learner.policy.parameters()))


def test_short_training_on_navigation_improves_the_one_step_return(tmp_path):
    options = SMALL.replace(hidden=(32, 32), meta_batch=5, episodes_per_task=5, iterations=4)
    tasks = NavigationBatch().sample_tasks(np.random.default_rng(99), 5)
    initial = runner.Run(options, build).learner
    before = runner.adaptation_curve(initial, "navigation-2d", tasks, 1, 10, seed=5)[1].mean()
    run = runner.train(options, tmp_path, build, progress=False)
    after = runner.adaptation_curve(run.learner, "navigation-2d", tasks, 1, 10, seed=5)[1].mean()
    assert after > before + 10  # returns are about -100 at the start; a few steps gain tens
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4 and (tmp_path / "checkpoint.pt").is_file()


@pytest.mark.parametrize("outer", ["trpo", "ppo"])
def test_resumed_training_equals_uninterrupted_training(tmp_path, outer):
    options = SMALL.replace(outer=outer, ppo_epochs=2, iterations=3, checkpoint_every=1)
    straight = runner.train(options, tmp_path / "a", build, progress=False)
    runner.train(options.replace(iterations=2), tmp_path / "b", build, progress=False)
    resumed = runner.train(options, tmp_path / "b", build, resume=True, progress=False)
    assert resumed.iteration == 3
    for (name, p), q in zip(straight.learner.policy.state_dict().items(), resumed.learner.policy.state_dict().values()):
        assert torch.equal(p, q), name
    drop = {"sample_s", "update_s", "cpu_s", "wall_s"}
    assert [{k: v for k, v in m.items() if k not in drop} for m in straight.history] == [
        {k: v for k, v in m.items() if k not in drop} for m in resumed.history
    ]


def test_training_stops_at_its_time_budget_with_a_checkpoint(tmp_path):
    options = SMALL.replace(iterations=50, checkpoint_every=100)
    run = runner.train(options, tmp_path, build, progress=False, time_budget_s=0)
    assert run.iteration == 1 and runner.load_run(tmp_path / "checkpoint.pt", MAMLRLOptions, build).iteration == 1


def test_bad_input_is_one_clear_error(tmp_path):
    env = NavigationBatch()
    with pytest.raises(ConfigError, match="does not take navigation-2d's 2-d observations"):
        build(SMALL, policy=GaussianMLPPolicy(3, 2), env=env)
    with pytest.raises(ConfigError, match="actions are 3-d but navigation-2d's are 2-d"):
        build(SMALL, policy=GaussianMLPPolicy(2, 3), env=env)
    with pytest.raises(ConfigError, match="unknown env 'pong'"):
        options_for("pong")
    with pytest.raises(ConfigError, match="unknown outer step 'sgd'"):
        SMALL.replace(outer="sgd").validate()
    with pytest.raises(ConfigError, match="unknown maml-rl option"):
        SMALL.replace(inner_rate=0.1)
    with pytest.raises(ConfigError, match="no checkpoint at"):
        runner.load_run(tmp_path / "missing.pt", MAMLRLOptions, build)
    runner.train(SMALL.replace(iterations=1), tmp_path, build, progress=False)
    with pytest.raises(ConfigError, match=r"trained with other \['inner_lr'\]"):
        runner.train(SMALL.replace(inner_lr=0.5), tmp_path, build, resume=True, progress=False)


def test_evaluation_table_has_every_policy_the_oracle_and_steps(tmp_path):
    run = runner.train(SMALL.replace(iterations=1), tmp_path, build, progress=False)
    assert runner.is_checkpoint(tmp_path / "checkpoint.pt") and not runner.is_checkpoint(tmp_path / "metrics.jsonl")
    results = runner.evaluate_checkpoint(tmp_path / "checkpoint.pt", MAMLRLOptions, build, tasks=3, steps=2)
    assert len(results["checkpoint"]["mean"]) == 3 and len(results["checkpoint"]["per_task"][0]) == 3
    assert results["oracle"]["mean"][0] > max(results["checkpoint"]["mean"])  # the oracle knows the goal
    table = runner.format_table(results)
    assert "checkpoint" in table and "oracle" in table and "2 steps" in table
    assert run.options.env == "navigation-2d"


def test_presets_follow_the_paper():
    nav, cheetah = options_for("navigation-2d"), options_for("halfcheetah-vel")
    assert (nav.inner_lr, nav.episodes_per_task, nav.meta_batch, nav.max_kl) == (0.1, 20, 20, 0.01)
    assert nav.hidden == (100, 100) and nav.iterations == 100
    assert cheetah.meta_batch == 40 and cheetah.env == "halfcheetah-vel"
