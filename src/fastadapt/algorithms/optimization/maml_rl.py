"""MAML for reinforcement learning (Finn, Abbeel & Levine, "Model-Agnostic Meta-Learning for Fast Adaptation of
Deep Networks", ICML 2017, section 3.2 and 5.3, Algorithm 3).

For a batch of tasks T_i (a goal, a target velocity), with the policy f_theta:

    sample K trajectories D_i with f_theta in T_i
    theta'_i = theta - alpha * grad_theta L_{T_i}(f_theta; D_i)                         (inner step, eq. 1)
    sample trajectories D'_i with f_theta'_i in T_i
    theta <- argmax_theta sum_i L^TRPO_{T_i}(f_theta'_i(theta); D'_i)                   (outer step, eq. 3)
             subject to mean KL(f_theta'_i(theta_old) || f_theta'_i(theta)) <= delta

L_{T_i} is the REINFORCE loss (eq. 4) with advantages from a linear feature baseline fitted per task:
``-mean_t log pi(a_t | s_t) A_t``; the inner step is one step of vanilla policy gradient (``inner_lr`` alpha = 0.1,
K = 20 trajectories). The outer step is TRPO (``max_kl`` delta = 0.01): conjugate gradient on Hessian-vector
products of the KL *through the inner step* (so they involve the inner gradient's derivatives: second order),
then a line search (:mod:`fastadapt.rl.trpo`). The products are computed as J^T M J v (J the Jacobian of the adapted
policies' Gaussians with respect to theta, M the KL's curvature), which equals the KL's Hessian at theta_old
exactly and skips differentiating the inner gradient a third time (tested against finite differences). The inner
step is fastadapt's inner loop, :func:`fastadapt.engine.functional.inner_sgd`, the one MAML's supervised learners run.

Options beyond the paper: ``first_order`` (the inner gradient is a constant in the outer step, as in FOMAML),
``outer="ppo"`` (a clipped-ratio surrogate, Schulman et al. 2017, optimised with Adam for ``ppo_epochs`` epochs in
place of the TRPO step), ``gae_lambda`` < 1 (generalised advantage estimation), ``inner_steps`` > 1 (fresh
trajectories before each further inner step, as in the paper's evaluation). ``inner_steps=0`` trains one policy on
all tasks jointly with the same TRPO step: the paper's "pretrained" baseline (Figure 5).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fastadapt import atomic
from fastadapt.algorithms.base import MetaLearner, MetaOutput
from fastadapt.algorithms.registry import Algorithm, register
from fastadapt.engine.functional import Params, call, inner_sgd, map_tasks, parameters_of
from fastadapt.errors import ConfigError
from fastadapt.options import MethodOptions, option
from fastadapt.rl import runner
from fastadapt.rl.baseline import LinearFeatureBaseline, advantages
from fastadapt.rl.envs import ENV_IDS, BatchedEnv, env_name, make_batched
from fastadapt.rl.policy import GaussianMLPPolicy, check_policy, kl_divergence, log_prob
from fastadapt.rl.sampler import Episodes, Sampler, action_distribution
from fastadapt.rl.trpo import TRPOStats, gauss_newton_product, trpo_step

ENV_CHOICES = tuple(ENV_IDS)


@dataclass
class MetaRLBatch:
    """The trajectories of one outer step: ``train[k]`` sampled before inner step k (with the policy after k
    steps), ``valid`` with the adapted policies; advantages are filled in by :meth:`MAMLRL.prepare`."""

    tasks: np.ndarray
    train: list[Episodes]
    valid: Episodes
    train_advantages: list[Tensor] = field(default_factory=list)
    valid_advantages: Tensor | None = None


class MAMLRL(MetaLearner):
    def __init__(self, policy: GaussianMLPPolicy, options: MAMLRLOptions) -> None:
        super().__init__()
        self.policy = policy
        self.options = options
        self.baseline = LinearFeatureBaseline()
        self.optimizer = torch.optim.Adam(policy.parameters(), lr=options.outer_lr) if options.outer == "ppo" else None
        self.last_stats: dict = {}

    # --- the inner step: vanilla policy gradient (REINFORCE with the linear baseline), fastadapt's inner loop

    def inner_loss(
        self, params: Params, observations: Tensor, actions: Tensor, advantage: Tensor, mask: Tensor
    ) -> Tensor:
        """The REINFORCE loss of one task's episodes, eq. (4): -mean over valid steps of log pi(a|s) * A."""
        mean = call(self.policy, params, observations)
        logp = log_prob(mean, params["log_std"], actions)
        return -(logp * advantage * mask).sum() / mask.sum().clamp_min(1)

    def adapt(
        self, params: Params, episodes: Episodes, advantage: Tensor, *, per_task: bool, create_graph: bool
    ) -> Params:
        """One inner step for every task: theta'_i = theta - alpha grad L_{T_i}(theta; episodes_i). ``params`` are
        shared or (``per_task``) one set per task; the result has a leading task dimension."""
        names = list(params)
        tasks = episodes.tasks
        tracking = torch.is_grad_enabled() and all(v.requires_grad for v in params.values())
        stacked = [params[k] if per_task else params[k].expand(tasks, *params[k].shape) for k in names]

        def one_task(obs, act, adv, mask, *values, vectorised: bool) -> tuple[Tensor, ...]:
            start = dict(zip(names, values))
            if not vectorised and not tracking:  # values only (sampling, evaluation, line search): fresh leaves
                start = {k: v.detach().requires_grad_() for k, v in start.items()}
            loss = lambda p: self.inner_loss(p, obs, act, adv, mask)
            adapted = inner_sgd(
                loss, start, 1, self.options.inner_lr, first_order=not create_graph, vectorised=vectorised
            )
            return tuple(adapted[k] for k in names)

        per_task_inputs = [episodes.observations, episodes.actions, advantage, episodes.mask, *stacked]
        return dict(zip(names, map_tasks(one_task, per_task_inputs, self.options.strategy)))

    def advantages(self, episodes: Episodes) -> Tensor:
        o = self.options
        return advantages(episodes, self.baseline, o.gamma, o.gae_lambda, o.normalize_advantages)

    # --- sampling a batch

    def sample_batch(self, sampler: Sampler, tasks: np.ndarray) -> MetaRLBatch:
        """Trajectories for one outer step: before each inner step and after the last."""
        params = {k: v.detach() for k, v in parameters_of(self.policy).items()}
        train = []
        for step in range(self.options.inner_steps):
            episodes = sampler.sample(self.policy, params, tasks, per_task=step > 0)
            train.append(episodes)
            adapted = self.adapt(params, episodes, self.advantages(episodes), per_task=step > 0, create_graph=False)
            params = {k: v.detach() for k, v in adapted.items()}
        valid = sampler.sample(self.policy, params, tasks, per_task=self.options.inner_steps > 0)
        return self.prepare(MetaRLBatch(tasks, train, valid))

    def prepare(self, batch: MetaRLBatch) -> MetaRLBatch:
        batch.train_advantages = [self.advantages(e) for e in batch.train]
        batch.valid_advantages = self.advantages(batch.valid)
        return batch

    # --- the outer objective

    def adapted_distribution(self, batch: MetaRLBatch, create_graph: bool) -> tuple[Tensor, Tensor]:
        """The adapted policies' Gaussians on the validation observations, as functions of theta."""
        params: Params = parameters_of(self.policy)
        for step, (episodes, advantage) in enumerate(zip(batch.train, batch.train_advantages)):
            create = create_graph and not self.options.first_order
            params = self.adapt(params, episodes, advantage, per_task=step > 0, create_graph=create)
        return action_distribution(self.policy, params, batch.valid.observations, per_task=len(batch.train) > 0)

    def surrogate_and_kl(
        self, batch: MetaRLBatch, old: tuple[Tensor, Tensor], create_graph: bool, clip: float | None = None
    ) -> tuple[Tensor, Tensor]:
        """Mean over tasks of the importance-weighted surrogate, mean_t ratio_t * A_t (clipped as in PPO when
        ``clip``), and of the mean KL(pi_old || pi_theta) over the validation steps."""
        return self._objectives(batch, old, *self.adapted_distribution(batch, create_graph), clip)

    @staticmethod
    def _step_weights(batch: MetaRLBatch) -> Tensor:
        """Weight of each validation step in "mean over tasks of the mean over the task's valid steps"."""
        mask = batch.valid.mask
        return mask / mask.sum((1, 2), keepdim=True).clamp_min(1) / mask.shape[0]

    def _objectives(
        self, batch: MetaRLBatch, old: tuple[Tensor, Tensor], mean: Tensor, log_std: Tensor, clip: float | None
    ) -> tuple[Tensor, Tensor]:
        actions, weights = batch.valid.actions, self._step_weights(batch)
        old_mean, old_log_std = old
        ratio = torch.exp(log_prob(mean, log_std, actions) - log_prob(old_mean, old_log_std, actions))
        objective = ratio * batch.valid_advantages
        if clip is not None:
            objective = torch.minimum(objective, ratio.clamp(1 - clip, 1 + clip) * batch.valid_advantages)
        surrogate = (objective * weights).sum()
        kl = (kl_divergence(old_mean, old_log_std, mean, log_std) * weights).sum()
        return surrogate, kl

    def kl_hessian_product(
        self, batch: MetaRLBatch, old: tuple[Tensor, Tensor], mean: Tensor, log_std: Tensor, damping: float = 0.0
    ):
        """v -> H v + damping v, H the Hessian of the mean KL(pi_old || pi_theta) with respect to theta *through
        the inner step*, at theta = theta_old (``mean``, ``log_std``: the adapted distribution with its graph).
        There H = J^T M J exactly, J = d(mean, log_std) / d theta and M the Gaussian KL's curvature: 1/sigma^2 for
        the mean, 2 for the log standard deviation, times each step's weight."""
        weights = self._step_weights(batch).unsqueeze(-1)
        metrics = [(weights / torch.exp(2 * old[1])).expand_as(mean), (2 * weights).expand_as(log_std)]
        return gauss_newton_product([mean, log_std], metrics, list(parameters_of(self.policy).values()), damping)

    def meta_loss(self, batch: MetaRLBatch) -> MetaOutput:
        """-surrogate at theta (ratio 1; its gradient is the policy gradient of the adapted policies through the
        inner step); predictions: each task's mean validation return."""
        with torch.no_grad():
            old = tuple(t.detach() for t in self.adapted_distribution(batch, create_graph=False))
        surrogate, _ = self.surrogate_and_kl(batch, old, create_graph=True)
        return MetaOutput(-surrogate, batch.valid.returns().mean(1))

    def outer_step(self, batch: MetaRLBatch) -> dict:
        """One outer update of the policy on ``batch`` (TRPO, or PPO epochs); returns statistics."""
        o = self.options
        with torch.no_grad():
            old = tuple(t.detach() for t in self.adapted_distribution(batch, create_graph=False))
        if o.outer == "trpo":
            params = list(parameters_of(self.policy).values())
            mean, log_std = self.adapted_distribution(batch, create_graph=True)
            surrogate, _ = self._objectives(batch, old, mean, log_std, None)
            fisher = self.kl_hessian_product(batch, old, mean, log_std, o.cg_damping)
            stats: TRPOStats = trpo_step(
                params,
                surrogate,
                fisher,
                lambda: self.surrogate_and_kl(batch, old, create_graph=False),
                max_kl=o.max_kl,
                cg_iterations=o.cg_iterations,
                line_search_steps=o.line_search_steps,
                backtrack=o.line_search_backtrack,
            )
            self.last_stats = {**stats.__dict__}
        else:
            assert self.optimizer is not None
            for _ in range(o.ppo_epochs):
                surrogate, kl = self.surrogate_and_kl(batch, old, create_graph=True, clip=o.ppo_clip)
                self.optimizer.zero_grad()
                (-surrogate).backward()
                self.optimizer.step()
            self.last_stats = {"surrogate_after": float(surrogate.detach()), "kl": float(kl.detach())}
        return self.last_stats

    # --- adaptation at test time

    @torch.no_grad()
    def adaptation_returns(self, sampler: Sampler, tasks: np.ndarray, steps: int) -> Tensor:
        """Mean undiscounted return of each task's ``episodes_per_task`` trajectories after 0..``steps`` inner
        steps (fresh trajectories before each step), shape (steps + 1, tasks)."""
        params = {k: v.detach() for k, v in parameters_of(self.policy).items()}
        results = []
        for step in range(steps + 1):
            episodes = sampler.sample(self.policy, params, tasks, per_task=step > 0)
            results.append(episodes.returns().mean(1))
            if step < steps:
                adapted = self.adapt(params, episodes, self.advantages(episodes), per_task=step > 0, create_graph=False)
                params = {k: v.detach() for k, v in adapted.items()}
        return torch.stack(results)

    def predict(self, batch: MetaRLBatch) -> Tensor:
        """Mean actions of the adapted policies on the validation observations (tasks, episodes, time, action)."""
        with torch.no_grad():
            return self.adapted_distribution(batch, create_graph=False)[0]


@dataclass
class MAMLRLOptions(MethodOptions):
    """MAML-RL's whole configuration: it trains with its own loop (fastadapt.rl.runner), not the episodic trainer."""

    env: str = option("navigation-2d", "task distribution", choices=ENV_CHOICES)
    hidden: tuple[int, ...] = option((100, 100), "policy MLP hidden sizes (ReLU), e.g. --hidden 100 100")
    init_std: float = option(1.0, "initial standard deviation of the Gaussian policy, in units of --action-scale")
    action_scale: float = option(
        1.0, "the policy's mean and standard deviation in units of this (0.1 on 2D navigation: rllab's normalize)"
    )
    inner_lr: float = option(0.1, "alpha: step size of the inner policy-gradient step (eq. 1)")
    inner_steps: int = option(1, "inner steps in training (0: one policy pretrained on all tasks)")
    episodes_per_task: int = option(20, "K: trajectories per task before each inner step and after the last")
    meta_batch: int = option(20, "tasks per outer step")
    gamma: float = option(0.99, "discount factor")
    gae_lambda: float = option(1.0, "GAE lambda (1.0: discounted returns minus the baseline)")
    normalize_advantages: bool = option(True, "centre and scale the advantages per task")
    first_order: bool = option(False, "first order: the inner gradient is a constant in the outer step")
    outer: str = option("trpo", "outer step", choices=("trpo", "ppo"))
    max_kl: float = option(0.01, "TRPO: delta, the bound on the mean KL of a step")
    cg_iterations: int = option(10, "TRPO: conjugate-gradient iterations")
    cg_damping: float = option(1e-5, "TRPO: damping added to the Hessian-vector products")
    line_search_steps: int = option(15, "TRPO: line-search backtracking steps")
    line_search_backtrack: float = option(0.8, "TRPO: step shrink per backtrack")
    ppo_epochs: int = option(5, "PPO: optimisation epochs per batch")
    ppo_clip: float = option(0.2, "PPO: ratio clipping epsilon")
    outer_lr: float = option(3e-4, "PPO: Adam learning rate")
    iterations: int = option(100, "outer steps (meta-iterations) of training", run_only=True)
    eval_tasks: int = option(40, "new tasks in evaluation", run_only=True)
    eval_steps: int = option(3, "adaptation steps reported in evaluation", run_only=True)
    strategy: str = option(
        "loop", "the tasks' inner steps: a per-task loop or vmap", choices=("loop", "vmap"), run_only=True
    )
    seed: int = option(0, "random seed (policy initialisation, tasks, sampling)")
    checkpoint_every: int = option(10, "iterations between checkpoints", run_only=True)

    def validate(self) -> None:
        env_name(self.env)
        positive = ("inner_lr", "episodes_per_task", "meta_batch", "max_kl", "iterations", "eval_tasks", "init_std",
                    "action_scale")  # fmt: skip
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}; use the preset's value")
        if self.inner_steps < 0 or self.eval_steps < 0:
            raise ConfigError("inner_steps and eval_steps must be >= 0; use 1 and 3 as in the paper")
        if self.outer not in ("trpo", "ppo"):
            raise ConfigError(f"unknown outer step {self.outer!r}; choose trpo or ppo")
        if self.strategy not in ("loop", "vmap"):
            raise ConfigError(f"unknown strategy {self.strategy!r} for maml-rl; choose loop or vmap")
        if not 0.0 < self.gamma <= 1.0 or not 0.0 <= self.gae_lambda <= 1.0:
            raise ConfigError("gamma must be in (0, 1] and gae_lambda in [0, 1]; use 0.99 and 1.0")
        if any(h <= 0 for h in self.hidden):
            raise ConfigError(f"--hidden sizes must be positive, got {self.hidden}; use e.g. --hidden 100 100")

    def replace(self, **changes) -> MAMLRLOptions:
        known = {f.name for f in fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise ConfigError(f"unknown maml-rl option(s) {sorted(unknown)}; see MAMLRLOptions")
        return MAMLRLOptions(**{**{f.name: getattr(self, f.name) for f in fields(self)}, **changes})


#: Per environment. Values from Finn et al. 2017, section 5.3 and appendix A.2 (alpha = 0.1, K = 20 trajectories,
#: TRPO delta = 0.01, meta-batch 20 for 2D navigation and 40 for locomotion, horizon 100 / 200), the policy from the
#: authors' code (100-100 ReLU). ``iterations`` from the authors' scripts (cbfinn/maml_rl: maml_trpo_point.py runs
#: 100 iterations, with meta-batch 40; cluster_maml_trpo_cheetah.py 1000).
PRESETS: dict[str, dict] = {
    "navigation-2d": {"env": "navigation-2d", "meta_batch": 20, "iterations": 100},
    "halfcheetah-vel": {"env": "halfcheetah-vel", "meta_batch": 40, "iterations": 1000},
}


def options_for(env: str, **changes) -> MAMLRLOptions:
    """The preset for ``env`` with ``changes`` applied, validated."""
    options = MAMLRLOptions().replace(**PRESETS[env_name(env)]).replace(**changes)
    options.validate()
    return options


def build(options: MAMLRLOptions, policy: GaussianMLPPolicy | None = None, env: BatchedEnv | None = None) -> MAMLRL:
    """The learner for ``options``; a new Gaussian MLP policy (seeded by ``options.seed``) unless ``policy``."""
    options.validate()
    env = env or make_batched(options.env)
    if policy is None:
        torch.manual_seed(options.seed)
        policy = GaussianMLPPolicy(
            env.observation_dim, env.action_dim, options.hidden, options.init_std, options.action_scale
        )
    check_policy(policy, env.observation_dim, env.action_dim, env.name)
    return MAMLRL(policy, options)


# --- the hooks of a method with its own training loop (fastadapt.algorithms.registry): `fastadapt train` and `eval`


def run(options: MAMLRLOptions, out: Path, resume: bool = False, progress: bool = True) -> dict:
    """Train ``options`` into the folder ``out`` (``checkpoint.pt``, ``metrics.jsonl``); with ``resume``, continue
    from its checkpoint exactly. Returns the run's totals, the checkpoint's path and a one-line summary."""
    trained = runner.train(options, out, build, resume=resume, progress=progress)
    summary = trained.summary()
    checkpoint = Path(out) / runner.CHECKPOINT_NAME
    line = (
        f"trained {summary['iterations']} meta-iterations on {options.env} in {summary['wall_s']:.0f} s "
        f"({summary['env_steps_per_s']:.0f} environment steps/s); last meta-batch's return "
        f"{summary['return_before']:.2f} before adaptation, {summary['return_after']:.2f} after; outputs in {out}"
    )
    return {**summary, "checkpoint": checkpoint, "summary": line}


#: `fastadapt eval` flags that mean something for a maml-rl checkpoint, and the evaluation's names for them
EVAL_FLAGS = {"tasks": "tasks", "eval_inner_steps": "steps", "out": "out"}


def evaluate(checkpoint: Path, **overrides) -> str:
    """``fastadapt eval --checkpoint``: the checkpoint's policy adapted on new tasks after 0..``eval_steps`` inner
    steps (``--tasks``, ``--eval-inner-steps`` override), with the oracle on 2D navigation; writes ``eval.json``
    beside the checkpoint (or into ``--out``) and returns the table."""
    refused = sorted(set(overrides) - set(EVAL_FLAGS))
    if refused:
        flags = ", ".join("--" + name.replace("_", "-") for name in refused)
        raise ConfigError(f"{flags}: not a setting of a maml-rl evaluation; it takes --tasks and --eval-inner-steps")
    settings = {EVAL_FLAGS[k]: v for k, v in overrides.items()}
    out = Path(settings.pop("out", None) or Path(checkpoint).parent)
    results = runner.evaluate_checkpoint(checkpoint, MAMLRLOptions, build, **settings)
    atomic.write_json(out / "eval.json", {"checkpoint": str(checkpoint), **results})
    return runner.format_table(results)


def owns_checkpoint(path: Path) -> bool:
    return runner.is_checkpoint(path)


register(
    Algorithm(
        name="maml-rl",
        family="optimization",
        summary="MAML for reinforcement learning (Finn et al. 2017, sec. 5.3): policy-gradient inner step, TRPO outer",
        options=MAMLRLOptions,
        build=build,
        presets=PRESETS,
        supports_regression=False,
        run=run,
        evaluate=evaluate,
        owns_checkpoint=owns_checkpoint,
        preset_option="env",
    )
)
