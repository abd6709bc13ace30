"""TensorBoard event files beside ``metrics.jsonl``, with the same names.

Every record the trainer appends to ``metrics.jsonl`` (``{"step": 500, "loss": ..., "train_acc": ..., "lr": ...,
"elapsed_s": ...}`` and ``{"step": 500, "val_acc": ..., "val_acc_ci95": ...}``) becomes one scalar per number,
tagged with its key and placed at its step, in ``<run>/tensorboard/``. ``tensorboard --logdir runs/`` then shows
the same curves the JSON holds. A resumed run purges the events written after its checkpoint's step, as
``metrics.jsonl`` is truncated to it. An existing run's ``metrics.jsonl`` can be converted afterwards with
:func:`mirror_metrics_file`.

Needs the ``tensorboard`` package (``pip install 'fastadapt[tensorboard]'``); without it,
:class:`TensorBoardMirror` raises one line saying so.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from fastadapt.errors import ConfigError

MISSING = "--tensorboard needs the tensorboard package: pip install 'fastadapt[tensorboard]' (or tensorboard)."


def _summary_writer_class():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch.utils.tensorboard imports the tensorboard package
        raise ConfigError(MISSING) from None
    return SummaryWriter


def require_tensorboard() -> None:
    """Refuse ``--tensorboard`` with one line when the tensorboard package is missing (before a run starts)."""
    _summary_writer_class()


class TensorBoardMirror:
    """Writes metrics records as TensorBoard scalars (tag = the record's key, step = its ``step``).

    ``resume_step``: when resuming from a checkpoint at that step, events of later steps are purged so the
    curves match an uninterrupted run.
    """

    def __init__(self, log_dir: str | Path, resume_step: int | None = None) -> None:
        writer_class = _summary_writer_class()
        self.log_dir = Path(log_dir)
        purge = None if resume_step is None else resume_step + 1
        self.writer = writer_class(log_dir=str(self.log_dir), purge_step=purge)

    def write(self, record: dict[str, Any]) -> int:
        """Add one ``metrics.jsonl`` record; returns how many scalars it held. Non-numbers are skipped."""
        if "step" not in record:
            raise ValueError(f"a metrics record needs a 'step': {record}")
        step, written = int(record["step"]), 0
        for key, value in record.items():
            if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value):
                self.writer.add_scalar(key, value, step)
                written += 1
        return written

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()

    def __enter__(self) -> TensorBoardMirror:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def mirror_metrics_file(metrics_path: str | Path, log_dir: str | Path | None = None) -> Path:
    """Convert an existing run's ``metrics.jsonl`` into event files (default: ``tensorboard/`` beside it)."""
    metrics_path = Path(metrics_path)
    log_dir = Path(log_dir) if log_dir is not None else metrics_path.parent / "tensorboard"
    with TensorBoardMirror(log_dir) as mirror:
        for line in metrics_path.read_text().splitlines():
            if line.strip():
                mirror.write(json.loads(line))
    return log_dir


def read_scalars(log_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """The scalars of the event files in ``log_dir``: tag -> [(step, value)] (what TensorBoard will plot)."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        raise ConfigError(MISSING) from None
    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}
