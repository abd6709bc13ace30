"""Training runs behind OML's results: meta-training (:func:`meta_train`) and the pretrained-representation
baseline (:func:`pretrain`), both on Omniglot's background characters, with a progress bar, a checkpoint that
resumes exactly (a run stopped and resumed ends with bit-identical weights), JSON metrics and a plot.

Every meta-training step draws its data from ``numpy.random.default_rng([seed, step])``: the stream of steps
depends only on the seed, so a resumed run replays the steps it had not checkpointed exactly.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from fastadapt.algorithms.continual.oml import OML, OMLOptions
from fastadapt.algorithms.continual.oml import build as build_oml
from fastadapt.checkpoint import save_checkpoint
from fastadapt.continual.metrics import write_json
from fastadapt.errors import ConfigError, DataError
from fastadapt.tasks.episodes import TaskBatch

CHECKPOINT = "checkpoint.pt"
MODEL = "model.pt"


def _load(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several kinds for a damaged file
        raise DataError(f"{path} is corrupt or not a fastadapt continual checkpoint ({type(exc).__name__}).") from exc


def load_learner(path: str | Path) -> OML:
    """The OML learner saved by :func:`meta_train` or :func:`pretrain` (``<out>/model.pt``)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"model not found: {path}; train first or fix the path.")
    state = _load(path)
    if "options" not in state or "model" not in state:
        raise DataError(f"{path} is not a fastadapt OML model.")
    options = {k: v for k, v in state["options"].items() if k in OMLOptions.__dataclass_fields__}
    learner = build_oml(OMLOptions(**{**options, "strides": tuple(options["strides"])}))
    learner.load_state_dict(state["model"])
    return learner


def sample_oml_step(
    background: torch.Tensor, rng: np.random.Generator, trajectory: int, remember: int, num_outputs: int
) -> tuple[TaskBatch, int]:
    """One meta-training step's data: ``trajectory`` images of one random class (labels = its index) and
    ``remember`` images of random classes (any class, the sampled one included, as S_rand in the paper)."""
    classes, per_class = background.shape[:2]
    c = int(rng.integers(classes))
    rows = torch.as_tensor(rng.choice(per_class, size=trajectory, replace=False))
    support_x = background[c, rows]
    support_y = torch.full((trajectory,), c, dtype=torch.long)
    rc = torch.as_tensor(rng.integers(classes, size=remember))
    ri = torch.as_tensor(rng.integers(per_class, size=remember))
    query_x, query_y = background[rc, ri], rc.long()
    batch = TaskBatch(support_x[None], support_y[None], query_x[None], query_y[None], num_outputs)
    return batch, c


#: Settings a resumed run may change: its number of steps (a run carried on further, as `fastadapt train --resume
#: --steps N` does).
RESUMABLE_CHANGES = ("steps",)


def _fixed(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in settings.items() if k not in RESUMABLE_CHANGES}


def _resume(out: Path, options: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    path = out / CHECKPOINT
    if not path.is_file():
        return {"step": 0, "log": [], "elapsed_s": 0.0}
    state = _load(path)
    saved, wanted = _fixed(state.get("options") or {}), _fixed(options)
    if saved != wanted:
        changed = sorted(k for k in wanted.keys() | saved.keys() if saved.get(k) != wanted.get(k))
        raise ConfigError(
            f"{path} is from a run with other settings ({', '.join(changed) or 'unknown'} differ); resume with the "
            f"same settings or use a new output folder."
        )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return state


def _checkpoint(out: Path, options: dict, model, optimizer, step: int, log: list, elapsed: float, kind: str) -> None:
    state = {"options": options, "model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
             "log": log, "elapsed_s": elapsed, "kind": kind}  # fmt: skip
    save_checkpoint(out / CHECKPOINT, state)
    write_json(out / "metrics.json", {"kind": kind, "options": options, "step": step, "elapsed_s": elapsed, "log": log})


def meta_train(
    learner: OML,
    options: OMLOptions,
    background: torch.Tensor,
    out_dir: str | Path,
    *,
    log_every: int = 100,
    checkpoint_every: int = 500,
    progress: bool = True,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """OML meta-training for ``options.steps`` steps on ``background`` (classes, examples, 1, h, w), resuming
    from ``<out_dir>/checkpoint.pt`` when there is one. Writes ``metrics.json`` (the log), ``model.pt`` (options
    and weights) at the end and ``meta_training.png``. ``stop_after`` steps: stop early (checkpointed), to be
    resumed later. Returns the metrics record."""
    options.validate()
    classes, per_class = background.shape[:2]
    if options.trajectory > per_class:
        raise ConfigError(f"trajectory {options.trajectory} is longer than the {per_class} images per class.")
    if classes > options.num_outputs:
        raise ConfigError(f"{classes} background classes need num_outputs >= {classes}, not {options.num_outputs}.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = {**options.to_dict(), "background_classes": classes, "image_shape": list(background.shape[2:])}
    optimizer = torch.optim.Adam(learner.parameters(), lr=options.meta_lr)
    state = _resume(out, settings, learner, optimizer)
    step, log, elapsed = state["step"], state["log"], state["elapsed_s"]
    end = options.steps if stop_after is None else min(options.steps, step + stop_after)
    window: dict[str, list[float]] = {"meta_loss": [], "trajectory_acc": [], "remember_acc": []}
    bar = tqdm(total=options.steps, initial=step, desc="OML meta-training", disable=not progress)
    clock = time.perf_counter()
    while step < end:
        rng = np.random.default_rng([options.seed, step])
        batch, c = sample_oml_step(background, rng, options.trajectory, options.remember, options.num_outputs)
        if options.reset_class_rows:
            learner.reset_output_rows([c], torch.Generator().manual_seed(int(rng.integers(2**62))))
        optimizer.zero_grad(set_to_none=True)
        output = learner.meta_loss(batch)
        output.loss.backward()
        if options.clip > 0:
            for p in learner.parameters():
                if p.grad is not None:
                    p.grad.clamp_(-options.clip, options.clip)
        optimizer.step()
        step += 1
        with torch.no_grad():
            correct = output.predictions[0].argmax(-1) == torch.cat([batch.support_y[0], batch.query_y[0]])
            k = options.trajectory
            window["meta_loss"].append(output.loss.item())
            window["trajectory_acc"].append(correct[:k].float().mean().item())
            window["remember_acc"].append(correct[k:].float().mean().item() if len(correct) > k else math.nan)
        bar.update()
        if step % log_every == 0 or step == end:
            now = time.perf_counter()
            elapsed, clock = elapsed + now - clock, now
            row = {"step": step, "elapsed_s": round(elapsed, 2), **{k: float(np.nanmean(v)) for k, v in window.items()}}
            log.append(row)
            window = {k: [] for k in window}
            bar.set_postfix(loss=f"{row['meta_loss']:.3f}", traj=f"{row['trajectory_acc']:.2f}",
                            remember=f"{row['remember_acc']:.2f}")  # fmt: skip
        if step % checkpoint_every == 0 or step == end:
            now = time.perf_counter()
            elapsed, clock = elapsed + now - clock, now
            _checkpoint(out, settings, learner, optimizer, step, log, elapsed, "oml")
    bar.close()
    if step >= options.steps:
        save_checkpoint(out / MODEL, {"options": options.to_dict(), "model": learner.state_dict(), "config": None})
        plot_training_log(log, out / "meta_training.png", "OML meta-training")
    return {"kind": "oml", "options": settings, "step": step, "elapsed_s": elapsed, "log": log}


def pretrain(
    learner: OML,
    options: OMLOptions,
    background: torch.Tensor,
    out_dir: str | Path,
    *,
    epochs: int = 20,
    lr: float = 1e-3,
    batch_size: int = 64,
    val_per_class: int = 2,
    progress: bool = True,
) -> dict[str, Any]:
    """The pretrained-representation baseline: the same RLN + PLN trained by ordinary classification (cross-
    entropy over all background classes, i.i.d. mini-batches, Adam) on the first ``20 - val_per_class`` images of
    every background class; the last ``val_per_class`` of each score the epochs, and the best epoch's weights
    are kept (``model.pt``). Checkpointed after every epoch (resume replays the current epoch exactly)."""
    classes, per_class = background.shape[:2]
    if not 0 <= val_per_class < per_class:
        raise ConfigError(f"val_per_class must be between 0 and {per_class - 1}, not {val_per_class}.")
    if classes > options.num_outputs:
        raise ConfigError(f"{classes} background classes need num_outputs >= {classes}, not {options.num_outputs}.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = {**options.to_dict(), "epochs": epochs, "lr": lr, "batch_size": batch_size,
                "val_per_class": val_per_class, "background_classes": classes}  # fmt: skip
    train_n = per_class - val_per_class
    train_x = background[:, :train_n].flatten(0, 1)
    train_y = torch.arange(classes).repeat_interleave(train_n)
    val_x = background[:, train_n:].flatten(0, 1)
    val_y = torch.arange(classes).repeat_interleave(val_per_class)
    model = torch.nn.Sequential(learner.rln, learner.pln)
    optimizer = torch.optim.Adam(learner.parameters(), lr=lr)
    state = _resume(out, settings, learner, optimizer)
    epoch, log, elapsed = state["step"], state["log"], state["elapsed_s"]
    best = state.get("best", {"val_acc": -1.0, "model": None})
    bar = tqdm(total=epochs, initial=epoch, desc="pretraining", disable=not progress)
    while epoch < epochs:
        clock = time.perf_counter()
        order = torch.as_tensor(np.random.default_rng([options.seed, epoch]).permutation(len(train_y)))
        losses, hits = [], 0
        model.train()
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            logits = model(train_x[rows])
            loss = F.cross_entropy(logits, train_y[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            hits += (logits.argmax(-1) == train_y[rows]).sum().item()
        val_acc = math.nan
        if val_per_class:
            with torch.no_grad():
                hits_val = sum((model(val_x[i : i + 512]).argmax(-1) == val_y[i : i + 512]).sum().item()
                               for i in range(0, len(val_y), 512))  # fmt: skip
            val_acc = hits_val / len(val_y)
        epoch += 1
        elapsed += time.perf_counter() - clock
        row = {"epoch": epoch, "elapsed_s": round(elapsed, 2), "loss": float(np.mean(losses)),
               "train_acc": hits / len(train_y), "val_acc": val_acc}  # fmt: skip
        log.append(row)
        if not val_per_class or val_acc > best["val_acc"]:
            best = {
                "val_acc": val_acc,
                "epoch": epoch,
                "model": {k: v.clone() for k, v in learner.state_dict().items()},
            }
        bar.update()
        bar.set_postfix(loss=f"{row['loss']:.3f}", val=f"{val_acc:.3f}")
        state_extra = {"best": best}
        save_checkpoint(out / CHECKPOINT, {"options": settings, "model": learner.state_dict(),
                                           "optimizer": optimizer.state_dict(), "step": epoch, "log": log,
                                           "elapsed_s": elapsed, "kind": "pretrain", **state_extra})  # fmt: skip
        write_json(out / "metrics.json", {"kind": "pretrain", "options": settings, "epoch": epoch, "elapsed_s": elapsed,
                                          "best_epoch": best.get("epoch"), "log": log})  # fmt: skip
    bar.close()
    if best["model"] is not None:
        learner.load_state_dict(best["model"])
    save_checkpoint(out / MODEL, {"options": options.to_dict(), "model": learner.state_dict(), "config": None})
    return {"kind": "pretrain", "options": settings, "elapsed_s": elapsed, "best_epoch": best.get("epoch"), "log": log}


# ------------------------------------------------------------------------------------------------------ plots
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    tmp.replace(path)


def plot_training_log(log: Sequence[Mapping[str, float]], path: str | Path, title: str) -> None:
    """Meta-loss and the post-update accuracy on the trajectory and on the remember set against the step."""
    plt = _pyplot()
    steps = [row["step"] for row in log]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4))
    left.plot(steps, [row["meta_loss"] for row in log])
    left.set_xlabel("meta-training step")
    left.set_ylabel("meta-loss")
    for key, label in (("trajectory_acc", "trajectory (class just learned)"), ("remember_acc", "remember set")):
        right.plot(steps, [row[key] for row in log], label=label)
    right.set_xlabel("meta-training step")
    right.set_ylabel("accuracy after the online updates")
    right.legend(fontsize=8)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=11)
    _save(fig, Path(path))


def plot_meta_test(results: Mapping[str, Mapping[str, Any]], path: str | Path, title: str = "") -> None:
    """Held-out and stream-training accuracy against the number of classes, one line per method, with 95% CI
    bars; ``results[method]`` is a :func:`fastadapt.continual.protocol.meta_test` record."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for name, record in results.items():
        rows = record["results"]
        n = [row["classes"] for row in rows]
        for ax, key in zip(axes, ("test_acc", "train_acc")):
            ax.errorbar(n, [row[key]["mean"] for row in rows], yerr=[row[key]["ci95"] for row in rows],
                        marker="o", ms=3, capsize=3, label=name)  # fmt: skip
    for ax, label in zip(axes, ("held-out images (meta-test test)", "the stream's own images (meta-test train)")):
        ax.set_xscale("log")
        ax.set_xlabel("classes learned online")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy")
    axes[1].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    _save(fig, Path(path))
