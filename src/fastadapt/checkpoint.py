"""Checkpoints that are never half-written and that refuse to load into another configuration."""

from __future__ import annotations

import warnings
import zipfile
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from fastadapt import atomic
from fastadapt.algorithms.base import MetaLearner
from fastadapt.config import Config, PretrainConfig, config_differences
from fastadapt.errors import ConfigError, DataError, TrainingDiverged
from fastadapt.options import mistyped

FORMAT_VERSION = 1


def non_finite(tensors: dict[str, Any]) -> list[str]:
    """The names of the floating-point tensors among ``tensors`` that hold a NaN or an infinity."""
    return [
        name
        for name, t in tensors.items()
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(t.isfinite().all())
    ]


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write atomically (fastadapt.atomic): an interrupted or failed save leaves the previous checkpoint intact and
    loadable. Weights that are not finite are never written."""
    bad = non_finite(state.get("model", {}))
    if bad:
        raise TrainingDiverged(
            f"refusing to write {path}: weights {', '.join(bad[:3])} are not finite; the last good checkpoint is kept."
        )
    atomic.write_with(Path(path), lambda f: torch.save({"format_version": FORMAT_VERSION, **state}, f))


#: What every fastadapt checkpoint holds, and the type of each.
REQUIRED = {"config": dict, "model": dict}
#: What a training checkpoint (last.pt, best.pt) holds besides, for --resume.
RESUMABLE = {"step": int, "optimizer": dict, "scheduler": dict, "torch_rng": torch.Tensor}


def _unreadable(path: Path, reason: str) -> DataError:
    return DataError(f"checkpoint {path} is corrupt or truncated ({reason}); use best.pt or retrain.")


def load_checkpoint(path: Path, expected: Config | None = None, kind: str = "train") -> dict[str, Any]:
    """Load a checkpoint; with ``expected``, refuse one whose configuration differs. Whatever the file holds, the
    result is the checkpoint or one :class:`DataError` line: torch's loader is given only zip archives (the format
    ``torch.save`` writes), runs with its weights-only unpickler, and its warnings are kept from the user. ``kind``:
    "train" (what `fastadapt train` writes) or "pretrain" (`fastadapt pretrain`'s backbone)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint not found: {path}; train first (fastadapt train --out DIR) or fix the path.")
    try:
        is_zip = zipfile.is_zipfile(path)
    except Exception as error:  # zipfile raises its own errors on some damaged headers, despite its name
        raise _unreadable(path, type(error).__name__) from None
    if not is_zip:
        raise DataError(f"{path} is not a fastadapt checkpoint (not a zip archive, which torch.save writes).")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # the weights-only unpickler raises many types on damaged bytes; all mean the same
        raise _unreadable(path, type(error).__name__) from None
    if isinstance(state, dict) and state.get("kind", "train") != kind:
        raise DataError(
            f"{path} is not a `fastadapt {kind}` checkpoint (it is a `fastadapt {state.get('kind', 'train')}` one); "
            f"pass the {'pretrain.pt that pretrain' if kind == 'pretrain' else 'last.pt or best.pt that train'} wrote."
        )
    check_structure(state, path)
    if expected is not None:
        diffs = config_differences(Config.from_dict(state["config"]), expected)
        if diffs:
            raise ConfigError(
                f"checkpoint {path} is from a different configuration ({'; '.join(diffs)}); "
                f"use the same settings to resume, or a new --out directory."
            )
    return state


def check_structure(state: Any, path: Path, resumable: bool = False) -> None:
    """A fastadapt checkpoint: a dict with a configuration naming a known method, and the model's tensors (and with
    ``resumable``, what --resume reads); one DataError line otherwise."""
    from fastadapt.algorithms.registry import algorithms

    if not isinstance(state, dict) or not all(isinstance(state.get(k), t) for k, t in REQUIRED.items()):
        raise DataError(f"{path} is not a fastadapt checkpoint (no configuration and model).")
    config, model = state["config"], state["model"]
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in model.items()):
        raise DataError(f"{path} is not a fastadapt checkpoint (its model is not a set of named tensors).")
    if state.get("kind") == "pretrain":  # `fastadapt pretrain`'s backbone: its own configuration
        known = {f.name for f in fields(PretrainConfig)}
        try:
            wrong = mistyped(PretrainConfig(**{k: v for k, v in config.items() if k in known}))
        except (TypeError, ValueError):
            wrong = ["its fields"]
        if wrong:
            raise DataError(f"{path} holds a configuration fastadapt cannot read (settings {', '.join(wrong[:3])}).")
        return
    if config.get("algorithm") not in algorithms() or not isinstance(config.get("dataset"), str):
        raise DataError(f"{path} is not a fastadapt checkpoint (its configuration names no known method).")
    if resumable:
        missing = [k for k, t in RESUMABLE.items() if not isinstance(state.get(k), t) or isinstance(state.get(k), bool)]
        if missing:
            names = ", ".join(missing)
            raise DataError(f"{path} cannot be resumed: it lacks {names}; start a new run from it with --init-from.")
    try:
        wrong = mistyped(Config.from_dict(config))
    except (TypeError, ValueError) as error:
        raise DataError(f"{path} holds a configuration fastadapt cannot read ({type(error).__name__}).") from None
    if wrong:
        raise DataError(f"{path} holds a configuration fastadapt cannot read (settings {', '.join(wrong[:3])}).")


def measured_choices(learner: MetaLearner) -> dict[str, Any]:
    """What a checkpoint records of how the learner's inner loops ran (fastadapt.engine): strategy, workers, layout."""
    execution = learner.execution
    if execution is None:
        return {"strategy": None, "workers": None, "channels_last": None}
    return {"strategy": execution.strategy, "workers": execution.workers, "channels_last": execution.channels_last}


def restore_measured_choices(learner: MetaLearner, state: dict[str, Any], *, workers: bool = True) -> None:
    """Give a learner rebuilt from a checkpoint's configuration what ``auto`` measured in the run that saved
    ``state`` (fastadapt.engine.strategy), wherever the configuration leaves it open: the strategy, the number of
    workers (unless ``workers=False``) and the image layout. A resumed run then continues exactly: the gradient
    sums' order depends on the workers, convolutions' rounding on the layout."""
    execution = learner.execution
    if execution is None:
        return
    if execution.strategy == "auto" and state.get("strategy") in ("loop", "vmap", "fold"):
        execution.strategy = state["strategy"]
    if workers and execution.workers is None and isinstance(state.get("workers"), int):
        execution.workers = state["workers"]
    if execution.channels_last is None and isinstance(state.get("channels_last"), bool):
        execution.channels_last = state["channels_last"]
