"""Meta-test protocol: adapt on each of >= 600 unseen episodes, report mean and 95% confidence
interval (1.96 * std / sqrt(n)) of the per-episode query accuracy (regression: MSE)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from fastadapt import atomic
from fastadapt.algorithms import MetaLearner, build_algorithm, per_task_score
from fastadapt.checkpoint import load_checkpoint, restore_measured_choices
from fastadapt.config import Config
from fastadapt.datasets import DATASETS, load_splits, task_source
from fastadapt.device import resolve_device
from fastadapt.errors import ConfigError
from fastadapt.tasks.samplers import ClassSplit, TaskSource
from fastadapt.tasks.sequences import SequenceSampler, accuracy_by_instance

#: Offset between the training seed and the seed of the meta-test episodes.
TEST_SEED_OFFSET = 1_000_003


def mean_ci95(scores: np.ndarray | list[float]) -> tuple[float, float]:
    """Mean and half-width of the normal 95% confidence interval, 1.96 * std / sqrt(n)."""
    scores = np.asarray(scores, dtype=np.float64)
    if len(scores) == 0:
        raise ValueError("no scores to summarise")
    return float(scores.mean()), float(1.96 * scores.std() / math.sqrt(len(scores)))


def evaluate(
    learner: MetaLearner,
    source: TaskSource,
    episodes: int = 600,
    device: str | torch.device = "cpu",
    tasks_per_batch: int = 10,
    progress: bool = False,
    **predict_kwargs: Any,
) -> np.ndarray:
    """Per-episode scores (accuracy, or MSE for regression) of ``learner`` on ``episodes`` episodes."""
    was_training = learner.training
    learner.eval()
    scores = []
    bar = tqdm(total=episodes, desc="meta-test", unit="ep", disable=not progress, leave=False)
    try:
        with torch.no_grad():
            remaining = episodes
            while remaining > 0:
                batch = source.sample(min(tasks_per_batch, remaining)).to(device)
                predictions = learner.predict(batch, **predict_kwargs)
                scores.append(per_task_score(predictions, batch.query_y).cpu())
                remaining -= batch.num_tasks
                bar.update(batch.num_tasks)
    finally:
        bar.close()
        learner.train(was_training)
    return torch.cat(scores).numpy()


def summarise(config: Config, scores: np.ndarray, **extra: Any) -> dict[str, Any]:
    """The eval.json record: what was evaluated and mean / CI of the metric."""
    mean, ci95 = mean_ci95(scores)
    regression = DATASETS[config.dataset].kind == "regression"
    metric = "mse" if regression else "accuracy"
    return {
        "algorithm": config.algorithm,
        "dataset": config.dataset,
        "ways": None if regression else config.ways,
        "shots": config.shots,
        "query": config.eval_query_or_query,
        "episodes": int(len(scores)),
        f"{metric}_mean": mean,
        f"{metric}_ci95": ci95,
        **extra,
    }


def format_result(result: dict[str, Any]) -> str:
    where = ", validation" if result.get("split") == "val" else ""
    if "accuracy_mean" in result:
        return (
            f"{result['algorithm']} {result['dataset']} {result['ways']}-way {result['shots']}-shot: "
            f"accuracy {100 * result['accuracy_mean']:.2f}% ± {100 * result['accuracy_ci95']:.2f}% "
            f"(95% CI, {result['episodes']} episodes{where + ' classes' if where else ''})"
        )
    return (
        f"{result['algorithm']} {result['dataset']} {result['shots']}-shot: MSE {result['mse_mean']:.4f} "
        f"± {result['mse_ci95']:.4f} (95% CI, {result['episodes']} tasks{where})"
    )


def load_learner(checkpoint: Path, **overrides: Any) -> tuple[MetaLearner, Config]:
    """Rebuild a meta-learner from a checkpoint; ``overrides`` change run-time settings (e.g. data_dir)."""
    state = load_checkpoint(checkpoint)
    saved = Config.from_dict(state["config"])
    config = Config.from_dict({**state["config"], **{k: v for k, v in overrides.items() if v is not None}})
    config.device = str(resolve_device(config.device))  # "auto" settled; refused in one line where unusable
    learner = build_algorithm(config)
    try:
        learner.load_state_dict(state["model"])
    except RuntimeError as error:
        if config.ways != saved.ways:  # a classifier head with one output per way does not fit other ways
            raise ConfigError(
                f"{checkpoint} is a {config.algorithm} model with a {saved.ways}-way classifier head; "
                f"evaluate it with --ways {saved.ways}."
            ) from error
        raise
    # What training measured as faster; workers are left to evaluation's own default (one).
    restore_measured_choices(learner, state, workers=False)
    return learner.to(config.device), config


def evaluate_checkpoint(
    checkpoint: Path,
    episodes: int | None = None,
    out: Path | None = None,
    progress: bool = True,
    split: str = "test",
    **overrides: Any,
) -> dict[str, Any]:
    """Meta-test a checkpoint on the test split; writes ``eval.json`` into ``out`` (default: its folder).

    ``split="val"`` scores the validation classes instead (``eval_val.json``): the place to choose test-time
    settings such as ``eval_inner_steps`` without looking at the test classes.
    """
    if split not in ("val", "test"):
        raise ConfigError(f"unknown split {split!r} to evaluate on; use 'val' or 'test'.")
    learner, config = load_learner(checkpoint, **overrides)
    episodes = episodes or config.test_episodes
    splits = load_splits(config, progress=progress)
    source = task_source(config, splits, split, seed=config.seed + TEST_SEED_OFFSET)
    scores = evaluate(learner, source, episodes, config.device, progress=progress)
    result = summarise(config, scores, split=split, checkpoint=str(checkpoint))
    out = Path(out) if out else Path(checkpoint).parent
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_json(out / ("eval.json" if split == "test" else "eval_val.json"), result)
    return result


#: The instances Santoro et al. 2016 report (Table 1): accuracy on the 1st, 2nd, ... 10th sight of a class.
REPORTED_INSTANCES = (1, 2, 3, 4, 5, 10)


def evaluate_by_instance(
    learner: Any,
    split: ClassSplit,
    episodes: int = 1000,
    instances: int = 10,
    seed: int = TEST_SEED_OFFSET,
    batch_size: int = 100,
    reported: tuple[int, ...] = REPORTED_INSTANCES,
) -> dict[str, Any]:
    """The sequence protocol of Santoro et al. 2016 for a sequence learner (MANN, or its LSTM baseline): on
    ``episodes`` sequences of ``split`` (``learner.ways`` classes x ``instances`` examples, shuffled, each step shown
    the previous step's label; the same sequences for the same ``seed``), the accuracy at each instance of
    ``reported`` as mean and 95% CI over the sequences. Leaves the global random state alone."""
    sampler = SequenceSampler(split, learner.ways, instances, seed)
    reported = tuple(k for k in reported if k <= instances)
    per_instance: dict[int, list[np.ndarray]] = {k: [] for k in reported}
    was_training = learner.training
    learner.eval()
    try:
        with torch.no_grad():
            for start in range(0, episodes, batch_size):
                batch = sampler.sample(min(batch_size, episodes - start))
                logits = learner.sequence_logits(batch.images, batch.labels)
                for k, accuracy in accuracy_by_instance(logits, batch.labels, batch.ways, reported).items():
                    per_instance[k].append(accuracy.numpy())
    finally:
        learner.train(was_training)
    result: dict[str, Any] = {"episodes": episodes, "instances": instances}
    for k, parts in per_instance.items():
        mean, ci = mean_ci95(np.concatenate(parts))
        result[str(k)] = {"accuracy_mean": mean, "accuracy_ci95": ci}
    return result
