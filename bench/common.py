"""What every benchmark script shares: where the repository is, a description of the machine, and writing
records and figures atomically (a stopped benchmark never leaves a half-written file in docs/ or results/).

Benchmarks run as ``python bench/NAME.py``, so this module is importable as ``common``.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def machine() -> str:
    """CPU architecture, core count, torch version and the threads torch uses in this process."""
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )


def commit() -> str:
    """The commit a benchmark measured, with "+changes" when the tracked files under src/ differ from it."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT).stdout.strip()

    return git("rev-parse", "--short", "HEAD") + ("+changes" if git("status", "--porcelain", "-uno", "src") else "")


def _replace(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    write(tmp)
    tmp.replace(path)


def write_json(path: Path, record: Any, indent: int = 2) -> None:
    """``record`` as JSON at ``path``, written to a temporary file and renamed."""
    _replace(path, lambda tmp: tmp.write_text(json.dumps(record, indent=indent) + "\n"))


def save_figure(fig, path: Path, dpi: int = 110) -> None:
    """A matplotlib figure as PNG at ``path`` (atomically), then closed."""
    import matplotlib.pyplot as plt

    _replace(path, lambda tmp: fig.savefig(tmp, dpi=dpi))
    plt.close(fig)


def validation_curve(metrics_path: Path) -> dict[str, list[float]]:
    """A run's validation accuracy from its ``metrics.jsonl``: ``step``, ``minutes`` of training (the validation
    row's own ``elapsed_s``; rows written before validations carried one take the last training row's) and
    ``accuracy`` in %."""
    curve: dict[str, list[float]] = {"step": [], "minutes": [], "accuracy": []}
    clock = 0.0
    for line in Path(metrics_path).read_text().splitlines():
        row = json.loads(line) if line else {}
        clock = row.get("elapsed_s", clock)
        if "val_acc" in row:
            curve["step"].append(row["step"])
            curve["minutes"].append(clock / 60)
            curve["accuracy"].append(100 * row["val_acc"])
    return curve
