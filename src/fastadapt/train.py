"""Meta-training: an outer optimiser (Adam by default)
over meta-batches of episodes, periodic meta-validation keeping the best
checkpoint, atomic checkpoints, exact resume, NaN guard, metrics file and learning-curve plot.

The loop only sees :meth:`~fastadapt.algorithms.MetaLearner.meta_backward` (the meta-loss and its
gradient), so every method trains the same way. Under ``torchrun`` the meta-batch is split across the
processes (see :mod:`fastadapt.distributed`): each samples ``meta_batch_size / world_size`` tasks and the
gradients are averaged before ``optimizer.step()``.
"""

from __future__ import annotations

import json
import math
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from fastadapt import atomic, distributed
from fastadapt.algorithms import MetaLearner, build_algorithm, per_task_score
from fastadapt.checkpoint import (
    check_structure,
    load_checkpoint,
    load_weights,
    measured_choices,
    non_finite,
    restore_measured_choices,
    save_checkpoint,
)
from fastadapt.config import Config
from fastadapt.datasets import DATASETS, image_format, load_splits, task_source
from fastadapt.device import autocast, move_batch, require_bf16_exact_enough, resolve_device, rng_devices
from fastadapt.engine.guard import require_agreement
from fastadapt.engine.strategy import choose_strategy, describe_choice, needs_measuring
from fastadapt.errors import ConfigError, DataError, OutputError, TrainingDiverged
from fastadapt.evaluate import evaluate, mean_ci95
from fastadapt.metrics_log import TensorBoardMirror, require_tensorboard
from fastadapt.tasks.augment import AugmentedTasks, AugmentOptions

#: Seed offset of the fixed validation episodes (the same episodes at every validation).
VAL_SEED_OFFSET = 500_009
#: Seed offset of the training episodes' augmentations (--augment), from the training seed of each process.
AUGMENT_SEED_OFFSET = 700_001
LOG_EVERY = 50


@dataclass
class TrainResult:
    learner: MetaLearner
    config: Config
    step: int
    best_val: float | None
    out: Path
    #: this process's rank under torchrun (0 otherwise); only rank 0 writes outputs
    rank: int = 0


def _higher_is_better(config: Config) -> bool:
    return DATASETS[config.dataset].kind == "classification"


def _append_metrics(path: Path, record: dict[str, Any]) -> None:
    atomic.append_record(path, record)


def _records(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(line, record) for each whole record of a metrics file: a line a killed run left half-written, or any line that
    is not a record of numbers with an integer step (the file was edited or damaged), is dropped."""
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):  # not JSON, or nested too deep for the parser
            continue
        if _is_record(record):
            records.append((line, record))
    return records


def _is_record(record: Any) -> bool:
    """What train writes into metrics.jsonl: named numbers, one of them an integer step."""
    if not isinstance(record, dict) or type(record.get("step")) is not int:
        return False
    return all(isinstance(v, float) or (type(v) is int and abs(v) < 2**63) for v in record.values())


def _truncate_metrics(path: Path, step: int) -> float:
    """On resume, drop records written after the checkpoint so the file matches an uninterrupted run.
    Returns the last training time recorded up to ``step`` (for checkpoints that do not store it)."""
    if not path.is_file():
        return 0.0
    kept = [(line, record) for line, record in _records(path) if record["step"] <= step]
    atomic.write_text(path, "".join(line + "\n" for line, _ in kept))
    return max((record.get("elapsed_s", 0.0) for _, record in kept), default=0.0)


def _load_initial_weights(learner: torch.nn.Module, config: Config) -> None:
    """Copy the model weights of ``config.init_from`` into ``learner``; refuse another method or shape."""
    state = load_checkpoint(Path(config.init_from))
    source = Config.from_dict(state["config"])
    if source.algorithm != config.algorithm:
        raise ConfigError(
            f"--init-from {config.init_from} holds a {source.algorithm} model, not {config.algorithm}; "
            f"pass a checkpoint of the same method."
        )
    load_weights(
        learner,
        state["model"],
        lambda mismatch: ConfigError(
            f"--init-from {config.init_from}: its model does not fit this configuration ({mismatch}); "
            f"use the network, ways and method settings it was trained with."
        ),
    )


def _validate(
    learner: MetaLearner, config: Config, splits: Any, seed: int, device: torch.device
) -> tuple[float, float]:
    """Mean and 95% CI of the score on the fixed validation episodes. It must not consume the training
    random state (exact resume)."""
    with torch.random.fork_rng(devices=rng_devices(device)):
        source = task_source(config, splits, "val", seed)
        return mean_ci95(evaluate(learner, source, config.val_episodes, device))


def outer_optimizer(
    learner: MetaLearner, config: Config
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The outer-loop optimiser (Adam, or SGD for Reptile's epsilon) and its learning-rate schedule."""
    # A baseline with nothing to meta-learn (--algorithm logistic) gets an optimiser of no parameters: its steps
    # change nothing, and validation, checkpoints and meta-testing run as for every method.
    parameters = list(learner.parameters()) or [{"params": []}]
    if config.outer_optimizer == "sgd":
        optimizer = torch.optim.SGD(parameters, lr=config.lr)
    else:
        optimizer = torch.optim.Adam(parameters, lr=config.lr)
    if config.lr_schedule == "linear":
        total = config.steps
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1 - step / total))
    if config.lr_schedule == "cosine":  # MAML++: lr_min + (lr - lr_min) * (1 + cos(pi * step / steps)) / 2
        return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=config.steps, eta_min=config.lr_min
        )
    decay_every = config.lr_decay_every or 10**12
    return optimizer, torch.optim.lr_scheduler.StepLR(optimizer, step_size=decay_every, gamma=config.lr_decay)


def train(config: Config, resume: bool = False, progress: bool = True) -> TrainResult:
    """Meta-train ``config`` into ``config.out`` (``last.pt``, ``best.pt``, ``metrics.jsonl``,
    ``learning_curve.png``). With ``resume``, continue from ``last.pt`` exactly where it stopped.

    Launched by ``torchrun`` with several processes, they train one model together (data parallel)."""
    requested = resolve_device(config.device).type if config.device == "auto" else config.device
    replicas, device_name = distributed.setup(requested)
    lock = atomic.FolderLock(Path(config.out))
    try:
        if replicas.is_main:  # the process that writes: refused if another live run writes the folder
            lock.acquire()
        result = _train(config, resume, progress, replicas, torch.device(device_name))
        if replicas.enabled:  # leave together: gloo aborts a process whose peer tears down mid-exchange
            torch.distributed.barrier()
        return result
    finally:
        lock.release()
        distributed.teardown(replicas)


def _train(
    config: Config, resume: bool, progress: bool, replicas: distributed.Replicas, device: torch.device
) -> TrainResult:
    out = Path(config.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot create the output folder {out} ({error.strerror}); choose another --out.") from None
    torch.manual_seed(config.seed)
    if config.meta_batch_size % replicas.world_size:
        raise ConfigError(
            f"--meta-batch-size {config.meta_batch_size} does not split evenly over {replicas.world_size} "
            f"processes; use a multiple of {replicas.world_size}."
        )
    tasks_per_process = config.meta_batch_size // replicas.world_size
    progress = progress and replicas.is_main
    if config.tensorboard and replicas.is_main:
        require_tensorboard()  # before any work: one line when the package is missing

    # Settings left to the data (--dataset folder: colour and size from its images) are settled before anything
    # reads them, and so stored in the checkpoints.
    settled, described = image_format(config)
    config = replace(config, **settled)
    if progress and described:
        print(described)
    splits = load_splits(config, progress=progress)
    rank_seed = config.seed + replicas.rank * distributed.RANK_SEED_OFFSET
    train_tasks = task_source(config, splits, "train", rank_seed)
    augment = AugmentOptions.from_flag(config.augment)
    if augment.active:  # the training episodes only: validation and test episodes are never augmented
        train_tasks = AugmentedTasks(train_tasks, augment, seed=rank_seed + AUGMENT_SEED_OFFSET)
    for part in ("val", "test"):  # fail now, not at the first validation, if their episodes cannot be drawn
        task_source(config, splits, part, config.seed)
    learner = build_algorithm(config).to(device)
    if replicas.rank > 0:  # same initial weights (built above), own random stream
        torch.manual_seed(rank_seed)
    optimizer, scheduler = outer_optimizer(learner, config)
    step, best_val = 0, None
    elapsed_before = 0.0  # training time of the run before this process resumed it
    # Training loss/score summed since the last metrics record; checkpointed so that a resumed run
    # writes the same records as an uninterrupted one.
    window = {"loss": 0.0, "score": 0.0, "n": 0}
    metrics_path = out / "metrics.jsonl"
    #: What the gradient guard compared (fastadapt.engine.guard), kept in every checkpoint.
    gradient_checks: list[dict[str, Any]] = []
    #: --precision bf16: the check that allowed it (fastadapt.device.check_bf16), kept in every checkpoint.
    precision_check: dict[str, Any] | None = None

    resuming = resume and (out / "last.pt").is_file()
    if replicas.enabled:  # rank 0 decides, so that no process starts afresh beside resumed ones
        resuming = distributed.broadcast_object(resuming)
    if resuming:
        state = load_checkpoint(out / "last.pt", expected=config)
        check_structure(state, out / "last.pt", resumable=True)
        if non_finite(state["model"]):
            raise DataError(
                f"{out / 'last.pt'} holds weights that are not finite and cannot be resumed; start again, or from "
                f"best.pt with --init-from."
            )
        saved_world = state.get("world_size", 1)
        if saved_world != replicas.world_size:
            raise ConfigError(
                f"{out / 'last.pt'} was trained by {saved_world} process(es) and cannot resume exactly with "
                f"{replicas.world_size}; resume with the same count (torchrun --nproc-per-node {saved_world}, "
                f"or plain `fastadapt train` for 1), or start a new run from it with --init-from."
            )
        try:
            learner.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            own = state if replicas.rank == 0 else state["ranks"][replicas.rank - 1]
            train_tasks.load_state_dict(own["sampler"])
            torch.set_rng_state(own["torch_rng"])
            step, best_val = state["step"], state["best_val"]
            window = dict(state.get("window", window))
        except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as error:
            raise DataError(
                f"{out / 'last.pt'} cannot be resumed: its training state is damaged ({type(error).__name__}); "
                f"start a new run from it with --init-from, or from best.pt."
            ) from None
        restore_measured_choices(learner, state)  # keep what was measured: resume stays exact
        gradient_checks = list(state.get("gradient_checks", []))
        precision_check = state.get("precision_check")
        recorded = _truncate_metrics(metrics_path, step) if replicas.is_main else 0.0
        elapsed_before = state.get("elapsed_s", recorded)
    else:
        if replicas.is_main:
            metrics_path.unlink(missing_ok=True)
        if config.init_from:
            _load_initial_weights(learner, config)
    if replicas.enabled:
        distributed.broadcast_module(learner)
    execution = learner.execution
    explicit_check = execution is not None and execution.gradient_check and execution.strategy in ("vmap", "fold")
    explicit_check = explicit_check and not resuming
    if needs_measuring(learner) or explicit_check:
        # Measure on the first training batch, then rewind the sampler so training draws it again.
        sampler_state = train_tasks.state_dict()
        probe = train_tasks.sample(tasks_per_process).to(device)
        train_tasks.load_state_dict(sampler_state)
        if explicit_check:  # the meta-gradient of an explicit --strategy vmap|fold must be the loop's
            gradient_checks = [require_agreement(learner, probe).record()]
        measured = choose_strategy(learner, probe, gradient_check=execution.gradient_check)
        gradient_checks += measured.get("gradient_checks", [])
        if replicas.enabled:  # every process follows rank 0's measurement
            learner.strategy = distributed.broadcast_object(learner.strategy)
            if "workers" in measured:
                learner.workers = distributed.broadcast_object(learner.workers)
            if "channels_last" in measured:
                learner.channels_last = distributed.broadcast_object(learner.channels_last)
        if progress and measured:
            print(describe_choice(measured))
    if config.precision == "bf16":
        # On the first training batch of this process (a resumed run checks again, maybe on another device), as the
        # strategy's measuring: the sampler is rewound, the random streams forked (check_bf16) and the buffers
        # (batch-norm statistics) put back, so that training is unchanged by it.
        sampler_state = train_tasks.state_dict()
        probe = move_batch(train_tasks.sample(tasks_per_process), device)
        train_tasks.load_state_dict(sampler_state)
        buffers = {name: b.detach().clone() for name, b in learner.named_buffers()}
        learner.training_step = step
        check = require_bf16_exact_enough(learner, probe, device)
        with torch.no_grad():
            for name, b in learner.named_buffers():
                b.copy_(buffers[name])
        precision_check = {"precision": "bf16", "device": str(device), **asdict(check), "passed": check.passed}
        if progress:
            print(check.describe())
    mirror = None
    if config.tensorboard and replicas.is_main:
        if not resuming:  # a fresh run's events replace an earlier run's in the same folder, as metrics.jsonl
            shutil.rmtree(out / "tensorboard", ignore_errors=True)
        mirror = TensorBoardMirror(out / "tensorboard", resume_step=step if resuming else None)

    def log_metrics(record: dict[str, Any]) -> None:
        _append_metrics(metrics_path, record)
        if mirror is not None:
            mirror.write(record)

    def checkpoint_state() -> dict[str, Any]:
        """The checkpoint; under torchrun a collective call (it gathers every rank's random state)."""
        ranks = []
        if replicas.enabled:
            own = {"sampler": train_tasks.state_dict(), "torch_rng": torch.get_rng_state()}
            ranks = distributed.gather_objects(own, replicas.world_size)[1:]
        return {
            "config": config.to_dict(),
            "step": step,
            "best_val": best_val,
            "model": learner.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "sampler": train_tasks.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "window": dict(window),
            **measured_choices(learner),
            "gradient_checks": gradient_checks,
            "precision_check": precision_check,
            "elapsed_s": time.time() - started,
            "world_size": replicas.world_size,
            "ranks": ranks,
        }

    val_tasks_seed = config.seed + VAL_SEED_OFFSET
    metric_name = "acc" if _higher_is_better(config) else "mse"
    # Random states and buffers (batch-norm statistics) before the step in progress, to redo it after an
    # interrupt; parameters and optimiser state only change in optimizer.step().
    step_start = None
    started = time.time() - elapsed_before  # elapsed_s counts the whole run across resumes
    bar = tqdm(
        total=config.steps,
        initial=step,
        desc=f"{config.algorithm} {config.dataset}",
        unit="step",
        disable=not progress,
        dynamic_ncols=True,
    )
    learner.train()
    try:
        while step < config.steps:
            step_start = (
                train_tasks.state_dict(),
                torch.get_rng_state(),
                {k: b.detach().clone() for k, b in learner.named_buffers()},
            )
            batch = move_batch(train_tasks.sample(tasks_per_process), device)
            learner.training_step = step  # MAML++'s annealing schedules follow the outer step
            optimizer.zero_grad(set_to_none=True)
            with autocast(device, config.precision):  # fp32: nothing; bf16: checked above
                output = learner.meta_backward(batch)
            loss = output.loss.item()
            score = per_task_score(output.predictions.detach(), batch.query_y).mean().item()
            if replicas.enabled:
                distributed.average_gradients(list(learner.parameters()), replicas.world_size)
                loss, score = distributed.average_values([loss, score], replicas.world_size, device)
            if not math.isfinite(loss):
                raise TrainingDiverged(
                    f"meta-loss became {loss} at step {step + 1}; training stopped and the last "
                    f"good checkpoint is kept in {out}. Lower --lr or --inner-lr, then --resume or start again."
                )
            bad = non_finite({n: p.grad for n, p in learner.named_parameters() if p.grad is not None})
            if bad:
                raise TrainingDiverged(
                    f"the meta-gradient of {bad[0]} became non-finite at step {step + 1}; training stopped and the "
                    f"last good checkpoint is kept in {out}. Lower --lr or --inner-lr, then --resume or start again."
                )
            learner.clip_meta_gradient()
            optimizer.step()
            scheduler.step()
            step += 1
            step_start = None

            window["loss"] += loss
            window["score"] += score
            window["n"] += 1
            if step % LOG_EVERY == 0 or step == config.steps:
                record = {
                    "step": step,
                    "loss": window["loss"] / window["n"],
                    f"train_{metric_name}": window["score"] / window["n"],
                    "lr": scheduler.get_last_lr()[0],
                    "elapsed_s": round(time.time() - started, 2),
                }
                if replicas.is_main:
                    log_metrics(record)
                bar.set_postfix(loss=f"{record['loss']:.3f}", **{metric_name: f"{record[f'train_{metric_name}']:.3f}"})
                window = {"loss": 0.0, "score": 0.0, "n": 0}
            bar.update(1)

            if step % config.val_every == 0 or step == config.steps:
                if replicas.enabled:
                    distributed.average_buffers(learner, replicas.world_size)
                improved = False
                if replicas.is_main:  # the other processes wait in checkpoint_state's gather meanwhile
                    # training time up to this validation (earlier validations included): the time-to-accuracy clock
                    trained_s = round(time.time() - started, 2)
                    val_mean, val_ci = _validate(learner, config, splits, val_tasks_seed, device)
                    improved = best_val is None or (
                        val_mean > best_val if _higher_is_better(config) else val_mean < best_val
                    )
                    if improved:
                        best_val = val_mean
                    log_metrics(
                        {
                            "step": step,
                            f"val_{metric_name}": val_mean,
                            f"val_{metric_name}_ci95": val_ci,
                            "elapsed_s": trained_s,
                        }
                    )
                    best_mark = " (best)" if improved else ""
                    bar.write(f"step {step}: val {metric_name} {val_mean:.4f} ± {val_ci:.4f}{best_mark}")
                state = checkpoint_state()
                if replicas.is_main:
                    if improved:
                        save_checkpoint(out / "best.pt", state)
                    save_checkpoint(out / "last.pt", state)
    except KeyboardInterrupt:
        if replicas.enabled:  # the other processes may be gone: no collective gather is possible now
            if progress:
                bar.write(f"interrupted at step {step}; --resume continues from the last validation's checkpoint")
            raise
        state = checkpoint_state()
        if step_start is not None:  # interrupted before the step's update: resume redoes the same step
            state["sampler"], state["torch_rng"], buffers = step_start
            state["model"].update({k: b for k, b in buffers.items() if k in state["model"]})
        save_checkpoint(out / "last.pt", state)
        bar.write(f"interrupted at step {step}; continue with --resume (checkpoint {out / 'last.pt'})")
        raise
    finally:
        bar.close()
        if mirror is not None:
            mirror.close()
    if replicas.is_main:
        plot_learning_curve(metrics_path, out / "learning_curve.png")
    return TrainResult(learner, config, step, best_val, out, rank=replicas.rank)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return [record for _, record in _records(Path(path))]


def plot_learning_curve(metrics_path: Path, png_path: Path) -> None:
    """Training loss, and training/validation score, against meta-training step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path) if Path(metrics_path).is_file() else []
    if not records:
        return
    with warnings.catch_warnings():  # matplotlib's remarks on odd values (a diverged run's) are not for the user
        warnings.simplefilter("ignore")
        _plot(plt, records, Path(png_path))


def _plot(plt: Any, records: list[dict[str, Any]], png_path: Path) -> None:
    fig, (ax_loss, ax_score) = plt.subplots(1, 2, figsize=(10, 3.8))
    train = [r for r in records if "loss" in r]
    ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train])
    ax_loss.set(xlabel="meta-training step", ylabel="meta-loss (query)", title="training loss")
    if any(math.isfinite(r["loss"]) and r["loss"] > 0 for r in train):
        ax_loss.set_yscale("log")
    for prefix in ("train", "val"):
        for metric in ("acc", "mse"):
            key = f"{prefix}_{metric}"
            pts = [r for r in records if key in r]
            if pts:
                ax_score.plot(
                    [r["step"] for r in pts],
                    [r[key] for r in pts],
                    marker="o" if prefix == "val" else None,
                    label=f"{prefix} {'accuracy' if metric == 'acc' else 'MSE'}"
                    + (" (training episodes)" if prefix == "train" else " (test-shaped episodes)"),
                )
    ax_score.set(xlabel="meta-training step", title="query score")
    if ax_score.get_legend_handles_labels()[0]:
        ax_score.legend()
    ax_score.grid(alpha=0.3)
    fig.tight_layout()
    try:
        atomic.write_with(png_path, lambda f: fig.savefig(f, format="png", dpi=110))
    finally:
        plt.close(fig)
