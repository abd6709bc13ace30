"""How continual learning is scored: the accuracy matrix and the metrics of Lopez-Paz & Ranzato (2017).

Lopez-Paz & Ranzato, "Gradient Episodic Memory for Continual Learning" (NeurIPS 2017), section 5: with
T tasks, ``R[i, j]`` is the test accuracy on task j after the model has learned from the last example of
task i (rows: time, columns: tasks), and ``b[j]`` the test accuracy on task j of the model before any
training (at its initialisation). Then::

    ACC = 1/T       sum_{j=1..T}   R[T, j]                       average accuracy at the end
    BWT = 1/(T-1)   sum_{j=1..T-1} R[T, j] - R[j, j]             backward transfer (< 0: forgetting)
    FWT = 1/(T-1)   sum_{j=2..T}   R[j-1, j] - b[j]              forward transfer (zero-shot gain)

(indices from 1 as in the paper; the code indexes from 0). Several runs are summarised by their mean and a
95% confidence interval from Student's t distribution (:func:`mean_ci`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fastadapt.errors import ConfigError

# Student's t, 0.975 quantile, for 1..30 degrees of freedom (two-sided 95% intervals).
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
    2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t_quantile_975(df: int) -> float:
    """Student's t 0.975 quantile: a table to 30 degrees of freedom, Cornish-Fisher's expansion beyond."""
    if df < 1:
        raise ValueError("degrees of freedom must be at least 1")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959963984540054
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def mean_ci(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation, the half-width of the 95% confidence interval of the mean
    (t_{0.975, n-1} * sd / sqrt(n); 0 for one value) and n."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("mean_ci of no values")
    sd = float(x.std(ddof=1)) if x.size > 1 else 0.0
    half = t_quantile_975(x.size - 1) * sd / math.sqrt(x.size) if x.size > 1 else 0.0
    return {"mean": float(x.mean()), "sd": sd, "ci95": half, "n": int(x.size)}


def check_matrix(accuracy: np.ndarray, initial: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    r = np.asarray(accuracy, dtype=np.float64)
    if r.ndim != 2 or r.shape[0] != r.shape[1]:
        raise ConfigError(f"the accuracy matrix must be square (tasks x tasks), not of shape {r.shape}.")
    if r.shape[0] < 2:
        raise ConfigError("the accuracy matrix has one task; BWT and FWT need at least 2 tasks in the stream.")
    b = None if initial is None else np.asarray(initial, dtype=np.float64)
    if b is not None and b.shape != (r.shape[0],):
        raise ConfigError(f"initial accuracies must be one per task ({r.shape[0]}), not of shape {b.shape}.")
    return r, b


def continual_metrics(accuracy: np.ndarray, initial: np.ndarray | None = None) -> dict[str, float | None]:
    """ACC, BWT and FWT of one run from its accuracy matrix ``R`` (tasks x tasks) and the accuracies at
    initialisation ``b`` (FWT is None without them)."""
    r, b = check_matrix(accuracy, initial)
    t = r.shape[0]
    acc = float(r[t - 1].mean())
    bwt = float(np.mean([r[t - 1, j] - r[j, j] for j in range(t - 1)]))
    fwt = None if b is None else float(np.mean([r[j - 1, j] - b[j] for j in range(1, t)]))
    return {"acc": acc, "bwt": bwt, "fwt": fwt}


def summarise_runs(matrices: Sequence[np.ndarray], initials: Sequence[np.ndarray] | None = None) -> dict[str, Any]:
    """Metrics of every run, their mean and 95% CI, and the mean accuracy matrix."""
    per_run = [continual_metrics(m, None if initials is None else initials[i]) for i, m in enumerate(matrices)]
    summary: dict[str, Any] = {"runs": per_run, "mean_matrix": np.mean(np.stack(matrices), 0).tolist()}
    for key in ("acc", "bwt", "fwt"):
        values = [run[key] for run in per_run if run[key] is not None]
        summary[key] = mean_ci(values) if values else None
    return summary


def write_json(path: str | Path, record: Any) -> None:
    """``record`` as JSON, written to a temporary file and renamed (never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(path)


def _save(fig, path: str | Path) -> None:
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)


def plot_accuracy_matrices(
    matrices: Mapping[str, np.ndarray], path: str | Path, task_names: Sequence[str] | None = None, title: str = ""
) -> None:
    """Heatmaps of the (mean) accuracy matrices R[i, j] of several methods side by side, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(matrices)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n + 0.8, 3.6), squeeze=False)
    image = None
    for ax, (name, matrix) in zip(axes[0], matrices.items()):
        r = np.asarray(matrix)
        image = ax.imshow(r, vmin=0.0, vmax=1.0, cmap="viridis")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("task j (tested)")
        ax.set_ylabel("after training task i")
        ticks = range(r.shape[0])
        labels = [str(k + 1) for k in ticks]
        ax.set_xticks(list(ticks), labels, fontsize=7)
        ax.set_yticks(list(ticks), labels, fontsize=7)
        if r.shape[0] <= 10:
            for i in ticks:
                for j in ticks:
                    ax.text(j, i, f"{100 * r[i, j]:.0f}", ha="center", va="center", fontsize=6, color="w")
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="test accuracy")
    if title:
        fig.suptitle(title, fontsize=11, y=1.03)
    _save(fig, path)


def plot_first_tasks(
    runs: Mapping[str, Sequence[np.ndarray]], path: str | Path, first: int = 3, title: str = ""
) -> None:
    """Accuracy on each of the first ``first`` tasks as the stream goes on (mean over runs, shaded 95% CI),
    one panel per task, one line per method; ``runs[method]`` is that method's accuracy matrices."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    some = np.asarray(next(iter(runs.values()))[0])
    first = min(first, some.shape[1])
    fig, axes = plt.subplots(1, first, figsize=(4.0 * first, 3.2), squeeze=False, sharey=True)
    for j, ax in enumerate(axes[0]):
        for name, matrices in runs.items():
            stack = np.stack([np.asarray(m) for m in matrices])  # runs x time x tasks
            seen = np.arange(j, stack.shape[1])
            curve = stack[:, j:, j]
            stats = [mean_ci(curve[:, k]) for k in range(curve.shape[1])]
            mean = np.array([s["mean"] for s in stats])
            half = np.array([s["ci95"] for s in stats])
            ax.plot(seen + 1, mean, marker="o", ms=3, label=name)
            ax.fill_between(seen + 1, mean - half, mean + half, alpha=0.2)
        ax.set_title(f"task {j + 1}", fontsize=10)
        ax.set_xlabel("tasks trained so far")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy")
    axes[0][-1].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11, y=1.03)
    _save(fig, path)
