"""Meta-training and meta-testing the hypernetwork from Python, resumable exactly, until ``fastadapt train
--algorithm hypernet`` is wired to :mod:`fastadapt.train`.

The run is described as for every other method: a :class:`fastadapt.config.Config` (episodes, optimiser,
schedule, seed, output folder) beside the method's :class:`HypernetOptions`, both from
:data:`~fastadapt.algorithms.model_based.hypernet.PRESETS`. Episodes come from the same seeded samplers as in
:func:`fastadapt.train.train` and :func:`fastadapt.evaluate.evaluate_checkpoint`, so validation and test
episodes are the very ones another method's run with the same seed and shape sees.

    from fastadapt.algorithms.model_based.hypernet_train import hypernet_config, train_hypernet, evaluate_hypernet
    config, options = hypernet_config("omniglot", split="vinyals-trainval", out="runs/hypernet")
    run = train_hypernet(config, options, resume=True)
    print(evaluate_hypernet(run.out / "best.pt", ways=20))
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from fastadapt.algorithms.base import MetaLearner, per_task_score
from fastadapt.algorithms.model_based.hypernet import PRESETS, HypernetOptions, build
from fastadapt.checkpoint import load_checkpoint, save_checkpoint
from fastadapt.config import Config, check_device
from fastadapt.datasets import DATASETS, load_splits, task_source
from fastadapt.errors import ConfigError, TrainingDiverged
from fastadapt.evaluate import TEST_SEED_OFFSET, evaluate, summarise
from fastadapt.train import (
    LOG_EVERY,
    VAL_SEED_OFFSET,
    _append_metrics,
    _truncate_metrics,
    _validate,
    outer_optimizer,
    plot_learning_curve,
)

_CONFIG_FIELDS = {f.name for f in fields(Config)}
_OPTION_FIELDS = {f.name for f in fields(HypernetOptions)}


@dataclass
class HypernetRun:
    learner: MetaLearner
    config: Config
    options: HypernetOptions
    step: int
    best_val: float | None
    out: Path
    train_wall_s: float


def hypernet_config(dataset: str, **overrides: Any) -> tuple[Config, HypernetOptions]:
    """The trainer's :class:`Config` and the :class:`HypernetOptions` for ``dataset``: its preset, then
    ``overrides`` (names of either; ``None`` keeps the preset). Names both share (``network``, ``inner_lr``, ...)
    go to both."""
    if dataset not in DATASETS:
        raise ConfigError(f"unknown dataset {dataset!r}; choose one of: {', '.join(DATASETS)}.")
    unknown = sorted(set(overrides) - _CONFIG_FIELDS - _OPTION_FIELDS)
    if unknown:
        raise ConfigError(f"unknown hypernetwork setting {unknown[0]!r}; see HypernetOptions and Config.")
    settings = {**PRESETS.get(dataset, {}), **{k: v for k, v in overrides.items() if v is not None}}
    if "network" not in settings:
        settings["network"] = "mlp" if DATASETS[dataset].kind == "regression" else "conv4"
    options = HypernetOptions(**{k: v for k, v in settings.items() if k in _OPTION_FIELDS})
    options.validate()
    config = Config(algorithm="hypernet", dataset=dataset, **{k: v for k, v in settings.items() if k in _CONFIG_FIELDS})
    return config, options


def build_for(config: Config, options: HypernetOptions) -> MetaLearner:
    regression = DATASETS[config.dataset].kind == "regression"
    return build(options, regression=regression, channels=config.channels, image_size=config.image_size)


def train_hypernet(config: Config, options: HypernetOptions, resume: bool = False) -> HypernetRun:
    """Meta-train into ``config.out`` (``last.pt`` and ``best.pt`` at every validation, ``metrics.jsonl``,
    ``learning_curve.png``). With ``resume``, continue from ``last.pt`` exactly: the same batches, the same
    weights as a run that was never stopped."""
    check_device(config.device)
    device = torch.device(config.device)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    splits = load_splits(config)
    train_tasks = task_source(config, splits, "train", config.seed)
    learner = build_for(config, options).to(device)
    optimizer, scheduler = outer_optimizer(learner, config)
    step, best_val, elapsed_before = 0, None, 0.0
    window = {"loss": 0.0, "score": 0.0, "n": 0}
    metrics_path = out / "metrics.jsonl"
    higher_is_better = DATASETS[config.dataset].kind == "classification"
    metric = "acc" if higher_is_better else "mse"

    if resume and (out / "last.pt").is_file():
        state = load_checkpoint(out / "last.pt", expected=config)
        if state.get("options") != options.to_dict():
            raise ConfigError(
                f"{out / 'last.pt'} was trained with other hypernetwork options; resume with the same ones "
                f"or use a new output folder."
            )
        learner.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        train_tasks.load_state_dict(state["sampler"])
        torch.set_rng_state(state["torch_rng"])
        step, best_val, window, elapsed_before = state["step"], state["best_val"], state["window"], state["elapsed_s"]
        _truncate_metrics(metrics_path, step)
    else:
        metrics_path.unlink(missing_ok=True)

    started = time.time() - elapsed_before
    learner.train()
    while step < config.steps:
        batch = train_tasks.sample(config.meta_batch_size).to(device)
        optimizer.zero_grad(set_to_none=True)
        output = learner.meta_backward(batch)
        loss = output.loss.item()
        if not math.isfinite(loss):
            raise TrainingDiverged(
                f"meta-loss became {loss} at step {step + 1}; the last good checkpoint is kept in {out}. "
                f"Lower --lr, then resume or start again."
            )
        optimizer.step()
        scheduler.step()
        step += 1
        window["loss"] += loss
        window["score"] += per_task_score(output.predictions, batch.query_y).mean().item()
        window["n"] += 1
        if step % LOG_EVERY == 0 or step == config.steps:
            _append_metrics(
                metrics_path,
                {
                    "step": step,
                    "loss": window["loss"] / window["n"],
                    f"train_{metric}": window["score"] / window["n"],
                    "lr": scheduler.get_last_lr()[0],
                    "elapsed_s": round(time.time() - started, 2),
                },
            )
            window = {"loss": 0.0, "score": 0.0, "n": 0}
        if step % config.val_every == 0 or step == config.steps:
            val_mean, val_ci = _validate(learner, config, splits, config.seed + VAL_SEED_OFFSET, device)
            improved = best_val is None or (val_mean > best_val if higher_is_better else val_mean < best_val)
            best_val = val_mean if improved else best_val
            _append_metrics(metrics_path, {"step": step, f"val_{metric}": val_mean, f"val_{metric}_ci95": val_ci})
            state = {
                "config": config.to_dict(),
                "options": options.to_dict(),
                "step": step,
                "best_val": best_val,
                "model": learner.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "sampler": train_tasks.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "window": dict(window),
                "elapsed_s": time.time() - started,
            }
            if improved:
                save_checkpoint(out / "best.pt", state)
            save_checkpoint(out / "last.pt", state)
    plot_learning_curve(metrics_path, out / "learning_curve.png")
    return HypernetRun(learner, config, options, step, best_val, out, time.time() - started)


def load_hypernet(checkpoint: Path, **overrides: Any) -> tuple[MetaLearner, Config, HypernetOptions]:
    """The learner saved in ``checkpoint``, with its configuration; ``overrides`` change run-time settings of
    either (``data_dir``, ``device``, ``eval_inner_steps``, ...)."""
    state = load_checkpoint(Path(checkpoint))
    if "options" not in state:
        raise ConfigError(f"{checkpoint} is not a hypernetwork checkpoint; load it with its own method.")
    settings = {k: v for k, v in overrides.items() if v is not None}
    config = Config.from_dict({**state["config"], **{k: v for k, v in settings.items() if k in _CONFIG_FIELDS}})
    options = HypernetOptions.from_dict({**state["options"], **settings})
    check_device(config.device)
    learner = build_for(config, options)
    learner.load_state_dict(state["model"])
    return learner.to(config.device), config, options


def evaluate_hypernet(
    checkpoint: Path, episodes: int | None = None, split: str = "test", **overrides: Any
) -> dict[str, Any]:
    """Meta-test a checkpoint (600 episodes by default) as :func:`fastadapt.evaluate.evaluate_checkpoint` does:
    the same test episodes for the same seed and shape. ``overrides``: ``ways``, ``shots``, ``eval_inner_steps``,
    ``data_dir``, ... Returns the eval.json record (mean and 95% CI)."""
    if split not in ("val", "test"):
        raise ConfigError(f"unknown split {split!r} to evaluate on; use 'val' or 'test'.")
    learner, config, options = load_hypernet(Path(checkpoint), **overrides)
    episodes = episodes or config.test_episodes
    source = task_source(config, load_splits(config), split, seed=config.seed + TEST_SEED_OFFSET)
    scores = evaluate(learner, source, episodes, config.device)
    eval_steps = options.inner_steps if options.eval_inner_steps is None else options.eval_inner_steps
    return summarise(config, scores, split=split, checkpoint=str(checkpoint), eval_inner_steps=eval_steps)
