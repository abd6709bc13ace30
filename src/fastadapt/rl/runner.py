"""Training and evaluation of MAML-RL (and of its baselines) from Python; the CLI's ``train --algorithm maml-rl``
and ``eval --checkpoint`` call these.

- :func:`train` runs ``options.iterations`` outer steps, writes ``metrics.jsonl`` (one line per iteration) and
  ``checkpoint.pt`` into ``out_dir`` every ``options.checkpoint_every`` iterations and at the end, and resumes
  from that checkpoint exactly: the policy, the PPO optimiser's state, the baseline, the sampler's generator (action
  noise and environments' initial states) and the task generator are restored, so an interrupted run continues
  with the same numbers as one that was never stopped.
- :func:`evaluate` adapts each policy on ``eval_tasks`` new tasks and reports the mean return after 0..``steps``
  inner steps (mean over tasks and a 95% confidence interval, 1.96 standard errors); :func:`format_table` prints
  it. For 2D navigation it adds the oracle (the analytic greedy policy that knows the goal).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import torch

from fastadapt.algorithms.optimization.maml_rl import MAMLRL, MAMLRLOptions, build
from fastadapt.errors import ConfigError, TrainingDiverged
from fastadapt.rl.envs import NavigationBatch, make_batched
from fastadapt.rl.policy import GaussianMLPPolicy
from fastadapt.rl.sampler import Sampler

CHECKPOINT_FORMAT = "fastadapt-maml-rl/1"
CHECKPOINT_NAME = "checkpoint.pt"
#: options that may differ between a checkpoint and the run resuming it
RESUMABLE_CHANGES = {"iterations", "checkpoint_every", "eval_tasks", "eval_steps", "strategy"}
#: seeds of the evaluation's task and sampling generators, far from training's (seed, seed + 1, seed + 2)
EVAL_SEED = 10_000


def _atomic_save(obj: object, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _options_from(saved: dict) -> MAMLRLOptions:
    known = {f.name for f in fields(MAMLRLOptions)}
    values = {k: v for k, v in saved.items() if k in known}
    values["hidden"] = tuple(values.get("hidden", (100, 100)))
    return MAMLRLOptions(**values)


class Run:
    """Everything a training run carries between iterations (and saves in its checkpoint)."""

    def __init__(self, options: MAMLRLOptions) -> None:
        options.validate()
        self.options = options
        self.env = make_batched(options.env)
        self.learner: MAMLRL = build(options, env=self.env)
        self.sampler = Sampler(self.env, options.episodes_per_task, seed=options.seed + 1)
        self.task_rng = np.random.default_rng(options.seed + 2)
        self.iteration = 0
        self.wall_time = 0.0
        self.history: list[dict] = []

    def state_dict(self) -> dict:
        optimizer = self.learner.optimizer
        return {
            "format": CHECKPOINT_FORMAT,
            "options": asdict(self.options),
            "iteration": self.iteration,
            "wall_time": self.wall_time,
            "policy": self.learner.policy.state_dict(),
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "baseline": self.learner.baseline.state_dict(),
            "sampler": self.sampler.state_dict(),
            "task_rng": self.task_rng.bit_generator.state,
            "history": self.history,
        }

    def load_state_dict(self, state: dict) -> None:
        self.iteration, self.wall_time, self.history = state["iteration"], state["wall_time"], state["history"]
        self.learner.policy.load_state_dict(state["policy"])
        if self.learner.optimizer is not None and state["optimizer"] is not None:
            self.learner.optimizer.load_state_dict(state["optimizer"])
        self.learner.baseline.load_state_dict(state["baseline"])
        self.sampler.load_state_dict(state["sampler"])
        self.task_rng.bit_generator.state = state["task_rng"]

    def step(self) -> dict:
        """One outer step: sample tasks and trajectories, update the policy; returns the iteration's metrics."""
        start = time.perf_counter()
        steps_before = self.sampler.total_steps
        tasks = self.env.sample_tasks(self.task_rng, self.options.meta_batch)
        batch = self.learner.sample_batch(self.sampler, tasks)
        sampled = time.perf_counter()
        stats = self.learner.outer_step(batch)
        elapsed = time.perf_counter() - start
        self.wall_time += elapsed
        self.iteration += 1
        pre = batch.train[0].returns().mean().item() if batch.train else batch.valid.returns().mean().item()
        metrics = {
            "iteration": self.iteration,
            "return_before": pre,
            "return_after": batch.valid.returns().mean().item(),
            **{k: v for k, v in stats.items() if k in ("kl", "accepted", "backtracks", "surrogate_after")},
            "env_steps": self.sampler.total_steps - steps_before,
            "sample_s": sampled - start,
            "update_s": elapsed - (sampled - start),
            "wall_s": self.wall_time,
        }
        if not math.isfinite(metrics["return_after"]) or not all(
            torch.isfinite(p).all() for p in self.learner.policy.parameters()
        ):
            raise TrainingDiverged(f"maml-rl diverged at iteration {self.iteration}; lower max_kl or inner_lr")
        self.history.append(metrics)
        return metrics


def is_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a maml-rl checkpoint (for ``fastadapt eval --checkpoint`` to pick this evaluator)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception:
        return False
    return isinstance(state, dict) and state.get("format") == CHECKPOINT_FORMAT


def load_run(checkpoint: str | Path, **changes) -> Run:
    """The run saved in ``checkpoint`` (options, policy and all generator states), with ``changes`` applied to
    the options that may change on resume (``iterations``, ...)."""
    path = Path(checkpoint)
    if not path.is_file():
        raise ConfigError(f"no checkpoint at {path}; train first or pass the checkpoint's path")
    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"{path} is not a maml-rl checkpoint; pass one written by fastadapt.rl.runner.train")
    options = _options_from(state["options"])
    bad = set(changes) - RESUMABLE_CHANGES
    if bad:
        raise ConfigError(f"option(s) {sorted(bad)} cannot change when resuming; start a new run in a new folder")
    run = Run(options.replace(**changes))
    run.load_state_dict(state)
    return run


def train(
    options: MAMLRLOptions,
    out_dir: str | Path,
    *,
    resume: bool = True,
    progress: bool = True,
    log=None,
    time_budget_s: float | None = None,
) -> Run:
    """Train for ``options.iterations`` outer steps in ``out_dir``, resuming from its checkpoint if there is one
    (with the same options, except those in ``RESUMABLE_CHANGES``). ``time_budget_s``: stop (with a checkpoint)
    after the first iteration that ends past this many seconds of this call."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / CHECKPOINT_NAME
    if resume and checkpoint.is_file():
        saved = _options_from(torch.load(checkpoint, map_location="cpu", weights_only=False)["options"])
        different = {
            f.name for f in fields(options) if getattr(options, f.name) != getattr(saved, f.name)
        } - RESUMABLE_CHANGES
        if different:
            raise ConfigError(
                f"{checkpoint} was trained with other {sorted(different)}; use another --out or the same options"
            )
        run = load_run(checkpoint, **{k: getattr(options, k) for k in RESUMABLE_CHANGES})
    else:
        run = Run(options)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=options.iterations, initial=run.iteration, desc=f"maml-rl {options.env}", unit="it")
    started = time.perf_counter()
    with open(out / "metrics.jsonl", "a") as metrics_file:
        while run.iteration < options.iterations:
            metrics = run.step()
            metrics_file.write(json.dumps(metrics) + "\n")
            metrics_file.flush()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(before=f"{metrics['return_before']:.1f}", after=f"{metrics['return_after']:.1f}")
            if log is not None:
                log(metrics)
            out_of_time = time_budget_s is not None and time.perf_counter() - started > time_budget_s
            if run.iteration % options.checkpoint_every == 0 or run.iteration == options.iterations or out_of_time:
                _atomic_save(run.state_dict(), checkpoint)
            if out_of_time:
                break
    if bar is not None:
        bar.close()
    return run


# --------------------------------------------------------------------------------------------------------------
# Evaluation


def adaptation_curve(
    learner: MAMLRL, env_name: str, tasks: np.ndarray, steps: int, episodes_per_task: int, seed: int
) -> np.ndarray:
    """Mean return of each task after 0..``steps`` inner steps, shape (steps + 1, tasks)."""
    sampler = Sampler(make_batched(env_name), episodes_per_task, seed=seed)
    return learner.adaptation_returns(sampler, tasks, steps).numpy()


def summarize(returns: np.ndarray) -> dict:
    """Mean over tasks and the half-width of its 95% confidence interval (1.96 standard errors) per step."""
    n = returns.shape[-1]
    sem = returns.std(-1, ddof=1) / math.sqrt(n) if n > 1 else np.zeros(returns.shape[0])
    return {"mean": returns.mean(-1).tolist(), "ci95": (1.96 * sem).tolist(), "per_task": returns.tolist()}


def evaluate(
    policies: dict[str, MAMLRL],
    options: MAMLRLOptions,
    *,
    tasks: int | None = None,
    steps: int | None = None,
    seed: int = EVAL_SEED,
) -> dict:
    """Return table of every learner in ``policies`` (name -> learner, e.g. maml, pretrained, random) on the same
    ``tasks`` new tasks, adapted with ``options``' inner step; for 2D navigation also the oracle."""
    tasks = tasks or options.eval_tasks
    steps = options.eval_steps if steps is None else steps
    env = make_batched(options.env)
    task_array = env.sample_tasks(np.random.default_rng(seed), tasks)
    results: dict = {"env": options.env, "tasks": tasks, "steps": steps, "episodes_per_task": options.episodes_per_task}
    for name, learner in policies.items():
        returns = adaptation_curve(learner, options.env, task_array, steps, options.episodes_per_task, seed + 1)
        results[name] = summarize(returns)
    if isinstance(env, NavigationBatch):
        sampler = Sampler(env, options.episodes_per_task, seed=seed + 1)
        oracle = sampler.sample_with(env.oracle_actions, task_array).returns().mean(1).numpy()
        results["oracle"] = summarize(np.tile(oracle, (steps + 1, 1)))
    return results


def random_learner(options: MAMLRLOptions, seed: int = 0) -> MAMLRL:
    """A randomly initialised policy with ``options``' inner step (the paper's "random" baseline)."""
    env = make_batched(options.env)
    torch.manual_seed(seed)
    policy = GaussianMLPPolicy(env.observation_dim, env.action_dim, options.hidden, options.init_std)
    return build(options, policy=policy, env=env)


def evaluate_checkpoint(checkpoint: str | Path, *, tasks: int | None = None, steps: int | None = None) -> dict:
    """``fastadapt eval --checkpoint``: the checkpoint's policy adapted on new tasks (and the oracle for 2D
    navigation)."""
    run = load_run(checkpoint)
    return evaluate({"checkpoint": run.learner}, run.options, tasks=tasks, steps=steps)


def format_table(results: dict) -> str:
    """The return table: one row per policy, one column per number of adaptation steps (mean +- 95% CI)."""
    steps = results["steps"]
    names = [k for k, v in results.items() if isinstance(v, dict) and "mean" in v]
    header = f"{'policy':<12}" + "".join(f"{f'{s} step' + ('s' if s != 1 else ''):>18}" for s in range(steps + 1))
    lines = [
        f"{results['env']}: mean return on {results['tasks']} new tasks "
        f"({results['episodes_per_task']} episodes per step), +- 95% CI",
        header,
    ]
    for name in names:
        row = results[name]
        cells = "".join(f"{f'{m:.2f} +- {c:.2f}':>18}" for m, c in zip(row["mean"], row["ci95"]))
        lines.append(f"{name:<12}{cells}")
    return "\n".join(lines)
