"""The training loop of a meta-RL learner, and its evaluation: what ``fastadapt train --algorithm maml-rl`` and
``fastadapt eval --checkpoint`` run (through the method's ``run`` and ``evaluate`` hooks).

A meta-RL method has a loop of its own: it samples trajectories, not episodes of a data set, so it does not go
through ``fastadapt.train``. This module is that loop, for any learner with the meta-RL interface
(:class:`MetaRLLearner`; MAML-RL's is :class:`fastadapt.algorithms.optimization.maml_rl.MAMLRL`), which the method
passes in as its ``build`` function: the layer below the algorithms does not import them.

- :func:`train` runs ``options.iterations`` outer steps in an output folder it locks
  (:class:`fastadapt.atomic.FolderLock`, as the episodic trainer does). It writes ``metrics.jsonl`` (one line per
  iteration) and ``checkpoint.pt`` every ``options.checkpoint_every`` iterations and at the end, atomically. With
  ``resume`` it continues from that checkpoint exactly: the policy, the PPO optimiser's state, the baseline, the
  sampler's generator (action noise and the environments' initial states) and the task generator are restored and
  ``metrics.jsonl`` is cut back to the checkpoint, so an interrupted run ends with the same numbers and the same file
  as one that was never stopped.
- :func:`evaluate` adapts each policy on ``eval_tasks`` new tasks and reports the mean return after 0..``steps``
  inner steps (mean over tasks and a 95% confidence interval, 1.96 standard errors); :func:`format_table` prints
  it. For 2D navigation it adds the oracle (the analytic greedy policy that knows the goal).
"""

from __future__ import annotations

import io
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from fastadapt import atomic
from fastadapt.errors import ConfigError, TrainingDiverged
from fastadapt.rl.envs import BatchedEnv, NavigationBatch, make_batched
from fastadapt.rl.sampler import Sampler

CHECKPOINT_FORMAT = "fastadapt-maml-rl/1"
CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"
#: seeds of the evaluation's task and sampling generators, far from training's (seed, seed + 1, seed + 2)
EVAL_SEED = 10_000


class MetaRLLearner(Protocol):
    """What the loop needs of a meta-RL learner."""

    policy: nn.Module
    baseline: Any  # state_dict() / load_state_dict()
    optimizer: torch.optim.Optimizer | None

    def sample_batch(self, sampler: Sampler, tasks: np.ndarray) -> Any: ...

    def outer_step(self, batch: Any) -> dict: ...

    def adaptation_returns(self, sampler: Sampler, tasks: np.ndarray, steps: int) -> Tensor: ...


#: ``build(options, policy=None, env=None)``: the method's learner for its options
Build = Callable[..., MetaRLLearner]


def resumable_options(options_type: type) -> set[str]:
    """Options that may differ between a checkpoint and the run resuming it: those declared ``run_only`` (how long,
    how often to checkpoint, how to evaluate, how the inner loops run; not what is learned)."""
    return {f.name for f in fields(options_type) if f.metadata.get("run_only")}


def _options_from(options_type: type, saved: dict) -> Any:
    known = {f.name: f for f in fields(options_type)}
    values = {k: v for k, v in saved.items() if k in known}
    for name, value in values.items():
        if isinstance(value, list):  # tuples come back from JSON and configuration files as lists
            values[name] = tuple(value)
    return options_type(**values)


class Run:
    """Everything a training run carries between iterations (and saves in its checkpoint)."""

    def __init__(self, options: Any, build: Build) -> None:
        options.validate()
        self.options = options
        self.env: BatchedEnv = make_batched(options.env)
        self.learner = build(options, env=self.env)
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

    def save(self, path: Path) -> None:
        buffer = io.BytesIO()
        torch.save(self.state_dict(), buffer)
        atomic.write_bytes(path, buffer.getvalue())

    def step(self) -> dict:
        """One outer step: sample tasks and trajectories, update the policy; returns the iteration's metrics."""
        start, cpu_start = time.perf_counter(), time.process_time()
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
            "cpu_s": time.process_time() - cpu_start,  # this process's CPU time: wall time on a machine to itself
            "wall_s": self.wall_time,
        }
        if not math.isfinite(metrics["return_after"]) or not all(
            torch.isfinite(p).all() for p in self.learner.policy.parameters()
        ):
            raise TrainingDiverged(f"maml-rl diverged at iteration {self.iteration}; lower max_kl or inner_lr")
        self.history.append(metrics)
        return metrics

    def summary(self) -> dict:
        """Totals of the run so far: iterations, wall time, environment steps and their rate, the last returns."""
        steps = sum(m["env_steps"] for m in self.history)
        last = self.history[-1] if self.history else {}
        return {
            "iterations": self.iteration,
            "wall_s": self.wall_time,
            "env_steps": steps,
            "env_steps_per_s": steps / self.wall_time if self.wall_time > 0 else 0.0,
            "return_before": last.get("return_before"),
            "return_after": last.get("return_after"),
        }


def _read_checkpoint(path: Path) -> dict | None:
    """The state in ``path`` if it is a meta-RL checkpoint, else None. Loads with ``weights_only`` (the file holds
    tensors, numbers, strings and lists only), memory-mapped: telling checkpoints apart reads little."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a file torch wrote, or one holding other objects: not ours
        return None
    return state if isinstance(state, dict) and state.get("format") == CHECKPOINT_FORMAT else None


def is_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a meta-RL checkpoint (for ``fastadapt eval --checkpoint`` to pick this evaluator)."""
    return Path(path).is_file() and _read_checkpoint(Path(path)) is not None


def load_run(checkpoint: str | Path, options_type: type, build: Build, **changes) -> Run:
    """The run saved in ``checkpoint`` (options, policy and all generator states), with ``changes`` applied to
    the options that may change on resume (``iterations``, ...)."""
    path = Path(checkpoint)
    if not path.is_file():
        raise ConfigError(f"no checkpoint at {path}; train first or pass the checkpoint's path")
    state = _read_checkpoint(path)
    if state is None:
        raise ConfigError(f"{path} is not a maml-rl checkpoint; pass the checkpoint.pt that maml-rl training wrote")
    options = _options_from(options_type, state["options"])
    bad = set(changes) - resumable_options(options_type)
    if bad:
        raise ConfigError(f"option(s) {sorted(bad)} cannot change when resuming; start a new run in a new folder")
    run = Run(options.replace(**changes), build)
    run.load_state_dict(state)
    return run


def _write_metrics(path: Path, history: list[dict]) -> None:
    atomic.write_text(path, "".join(json.dumps(m) + "\n" for m in history))


def train(
    options: Any,
    out_dir: str | Path,
    build: Build,
    *,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[dict], None] | None = None,
    time_budget_s: float | None = None,
) -> Run:
    """Train for ``options.iterations`` outer steps in ``out_dir``. With ``resume``, continue from its checkpoint if
    there is one (with the same options, except the run-only ones); otherwise start afresh. ``time_budget_s``: stop
    (with a checkpoint) after the first iteration that ends past this many seconds of this call."""
    options.validate()
    make_batched(options.env)  # an unknown env or a missing MuJoCo: one line, before the folder is made
    out = Path(out_dir)
    checkpoint, metrics_path = out / CHECKPOINT_NAME, out / METRICS_NAME
    with atomic.FolderLock(out):
        state = _read_checkpoint(checkpoint) if resume and checkpoint.is_file() else None
        if resume and checkpoint.is_file() and state is None:
            raise ConfigError(f"{checkpoint} is not a maml-rl checkpoint; use another --out, or train without resume")
        if state is not None:
            saved = _options_from(type(options), state["options"])
            allowed = resumable_options(type(options))
            different = sorted(f.name for f in fields(options) if getattr(options, f.name) != getattr(saved, f.name))
            if set(different) - allowed:
                raise ConfigError(
                    f"{checkpoint} was trained with other {sorted(set(different) - allowed)}; use another --out or "
                    f"the same options"
                )
            run = load_run(checkpoint, type(options), build, **{k: getattr(options, k) for k in allowed})
        else:
            run = Run(options, build)
            if checkpoint.exists():  # an earlier run's: replaced now, so that a later resume cannot pick it up
                run.save(checkpoint)
        _write_metrics(metrics_path, run.history)  # cut back to the checkpoint (or emptied for a new run)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=options.iterations, initial=run.iteration, desc=f"maml-rl {options.env}", unit="it")
        started = time.perf_counter()
        try:
            while run.iteration < options.iterations:
                metrics = run.step()
                atomic.append_record(metrics_path, metrics)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(before=f"{metrics['return_before']:.1f}", after=f"{metrics['return_after']:.1f}")
                if log is not None:
                    log(metrics)
                out_of_time = time_budget_s is not None and time.perf_counter() - started > time_budget_s
                last = run.iteration == options.iterations
                if run.iteration % options.checkpoint_every == 0 or last or out_of_time:
                    run.save(checkpoint)
                if out_of_time:
                    break
        finally:
            if bar is not None:
                bar.close()
    return run


# --------------------------------------------------------------------------------------------------------------
# Evaluation


def adaptation_curve(
    learner: MetaRLLearner, env_name: str, tasks: np.ndarray, steps: int, episodes_per_task: int, seed: int
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
    policies: dict[str, MetaRLLearner],
    options: Any,
    *,
    tasks: int | None = None,
    steps: int | None = None,
    seed: int = EVAL_SEED,
) -> dict:
    """Return table of every learner in ``policies`` (name -> learner, e.g. maml, pretrained, random) on the same
    ``tasks`` new tasks, adapted with ``options``' inner step; for 2D navigation also the oracle."""
    tasks = tasks or options.eval_tasks
    steps = options.eval_steps if steps is None else steps
    if tasks < 2 or steps < 0:
        raise ConfigError(f"evaluation needs at least 2 tasks and 0 or more steps (got {tasks} and {steps})")
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


def random_learner(options: Any, build: Build, seed: int = 0) -> MetaRLLearner:
    """A randomly initialised policy with ``options``' inner step (the paper's "random" baseline)."""
    return build(replace(options, seed=seed))  # build seeds the new policy with options.seed


def evaluate_checkpoint(
    checkpoint: str | Path, options_type: type, build: Build, *, tasks: int | None = None, steps: int | None = None
) -> dict:
    """``fastadapt eval --checkpoint``: the checkpoint's policy adapted on new tasks (and the oracle for 2D
    navigation)."""
    run = load_run(checkpoint, options_type, build)
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
