"""Checkpoints that are never half-written and that refuse to load into another configuration."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from fastadapt.algorithms.base import MetaLearner
from fastadapt.config import Config, config_differences
from fastadapt.errors import ConfigError, DataError

FORMAT_VERSION = 1


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write to a temporary file beside ``path``, flush to disk, then rename over ``path``: an
    interrupted save leaves the previous checkpoint intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save({"format_version": FORMAT_VERSION, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: Path, expected: Config | None = None) -> dict[str, Any]:
    """Load a checkpoint; with ``expected``, refuse one whose configuration differs."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint not found: {path}; train first (fastadapt train --out DIR) or fix the path.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, pickle.UnpicklingError) as exc:
        raise DataError(
            f"checkpoint {path} is corrupt or truncated ({type(exc).__name__}); use best.pt or retrain."
        ) from exc
    if not isinstance(state, dict) or "config" not in state or "model" not in state:
        raise DataError(f"{path} is not a fastadapt checkpoint.")
    if expected is not None:
        diffs = config_differences(Config.from_dict(state["config"]), expected)
        if diffs:
            raise ConfigError(
                f"checkpoint {path} is from a different configuration ({'; '.join(diffs)}); "
                f"use the same settings to resume, or a new --out directory."
            )
    return state


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
