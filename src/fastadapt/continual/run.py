"""``fastadapt continual --algorithm oml|la-maml``: one continual-learning run from the command line or Python.

- ``oml``: meta-training on Omniglot's background characters (progress bar, checkpoint every
  ``checkpoint_every`` steps, exact resume with ``resume=True``), then OML's meta-test on the evaluation
  characters (fastadapt.continual.protocol.meta_test) for each number of ``classes``.
- ``la-maml``: ``runs`` runs (seeds 0..runs-1, a new network and a new train/test split each) over a task stream
  named by the preset (rotated or permuted digits); the accuracy matrix of every run, ACC/BWT/FWT with 95% CIs.
  Each finished run is kept under ``<out>/runs/``, so a stopped command resumes where it stopped.

Both write ``<out>/results.json`` and plots (PNG) beside it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from fastadapt.algorithms.continual.la_maml import LaMAMLOptions
from fastadapt.algorithms.continual.la_maml import build as build_la_maml
from fastadapt.algorithms.continual.oml import OMLOptions
from fastadapt.algorithms.continual.oml import build as build_oml
from fastadapt.algorithms.registry import algorithm as registered_algorithm
from fastadapt.continual.metrics import mean_ci, plot_accuracy_matrices, plot_first_tasks, summarise_runs, write_json
from fastadapt.continual.protocol import MetaTestOptions, meta_test, run_task_stream
from fastadapt.continual.runner import CHECKPOINT, meta_train, plot_meta_test
from fastadapt.errors import ConfigError
from fastadapt.options import MethodOptions, option, require_positive
from fastadapt.tasks.streams import digits_stream, load_omniglot_characters


@dataclass
class ContinualOptions(MethodOptions):
    """Settings of a ``fastadapt continual`` run that are not the method's own."""

    out: str | None = option(None, "output folder (default: runs/continual-<algorithm>-<preset>)", run_only=True)
    data_dir: str | None = option(None, "folder holding the data sets (default: $FASTADAPT_DATA)", run_only=True)
    classes: str = option("10,50,100", "oml: numbers of new classes in the meta-test streams, comma-separated")
    runs: int = option(10, "oml: reported meta-test runs per number of classes; la-maml: runs (seeds 0..runs-1)")
    search_runs: int = option(3, "oml: separate meta-test runs that choose the online learning rate")
    tasks: int = option(10, "la-maml: tasks in the stream")
    checkpoint_every: int = option(100, "oml: meta-training steps between checkpoints", run_only=True)

    def class_counts(self) -> tuple[int, ...]:
        try:
            counts = tuple(int(c) for c in self.classes.split(","))
        except ValueError:
            example = "e.g. 10,50,100"
            raise ConfigError(
                f"--classes must be numbers separated by commas, {example} (got {self.classes!r})."
            ) from None
        return counts

    def validate(self) -> None:
        require_positive(self, "runs", "search_runs", "checkpoint_every")
        if min(self.class_counts()) < 1:
            raise ConfigError(f"--classes must all be at least 1 (got {self.classes}).")


def method_options(name: str, preset: str | None, settings: dict[str, Any]) -> tuple[str, Any]:
    """The preset's name and the method's options: its dataclass defaults, the preset, then ``settings``."""
    spec = registered_algorithm(name, "continual")
    preset = preset or next(iter(spec.presets))
    if preset not in spec.presets:
        raise ConfigError(f"{name} has no preset {preset!r}; choose one of: {', '.join(spec.presets)}.")
    known = {f.name for f in fields(spec.options)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ConfigError(f"{name} has no option(s) {', '.join(unknown)}; `fastadapt continual --help` lists them.")
    values = {**spec.presets[preset], **settings}
    options = spec.options(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})  # argparse: lists
    options.validate()
    return preset, options


def run_continual(
    name: str,
    preset: str | None = None,
    settings: dict[str, Any] | None = None,
    run: ContinualOptions | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """One ``fastadapt continual`` run of the method ``name`` (oml or la-maml); returns what it writes to
    ``<out>/results.json``."""
    preset, options = method_options(name, preset, settings or {})
    run = run or ContinualOptions()
    run.validate()
    out = Path(run.out or f"runs/continual-{name}-{preset}")
    if name == "oml":
        return _run_oml(options, preset, run, out, resume, progress)
    return _run_la_maml(options, preset, run, out, progress)


def _run_oml(options: OMLOptions, preset: str, run: ContinualOptions, out: Path, resume: bool, progress: bool) -> dict:
    data = load_omniglot_characters(run.data_dir, options.image_size)
    test_options = MetaTestOptions(classes=run.class_counts(), runs=run.runs, search_runs=run.search_runs)
    test_options.validate(data.evaluation.shape[0], options.num_outputs)  # before hours of meta-training
    if (out / "meta_training" / CHECKPOINT).is_file() and not resume:
        raise ConfigError(f"{out} already holds a run; pass --resume to continue it, or choose another --out.")
    learner = build_oml(options)
    training = meta_train(learner, options, data.background, out / "meta_training",
                          checkpoint_every=run.checkpoint_every, progress=progress)  # fmt: skip
    started = time.perf_counter()
    record = meta_test(learner, data.evaluation, test_options, progress=progress)
    result = {
        "algorithm": "oml",
        "preset": preset,
        "options": options.to_dict(),
        "meta_training": {k: training[k] for k in ("step", "elapsed_s")},
        "meta_test": record,
        "meta_test_s": round(time.perf_counter() - started, 1),
    }
    write_json(out / "results.json", result)
    plot_meta_test({"OML": record}, out / "meta_test.png", "OML, class-sorted stream, batch size 1 (mean, 95% CI)")
    return result


def _one_stream_run(options: LaMAMLOptions, preset: str, tasks: int, seed: int, path: Path) -> dict:
    if path.is_file():
        return json.loads(path.read_text())
    stream = digits_stream(preset, tasks, seed=seed)
    started = time.perf_counter()
    matrix, initial = run_task_stream(build_la_maml(replace(options, seed=seed)), stream, options.batch_size)
    record = {"seed": seed, "matrix": matrix.tolist(), "initial": initial.tolist(),
              "seconds": time.perf_counter() - started}  # fmt: skip
    write_json(path, record)
    return record


def _run_la_maml(options: LaMAMLOptions, preset: str, run: ContinualOptions, out: Path, progress: bool) -> dict:
    from tqdm.auto import tqdm

    build_la_maml(options).check_stream(digits_stream(preset, run.tasks, seed=0))  # bad settings: refused first
    records = []
    for seed in tqdm(range(run.runs), desc=f"la-maml on {preset}", disable=not progress):
        records.append(_one_stream_run(options, preset, run.tasks, seed, out / "runs" / f"seed{seed}.json"))
    matrices = [np.array(r["matrix"]) for r in records]
    summary = summarise_runs(matrices, [np.array(r["initial"]) for r in records])
    result = {
        "algorithm": "la-maml",
        "preset": preset,
        "options": options.to_dict(),
        "tasks": run.tasks,
        **{k: summary[k] for k in ("acc", "bwt", "fwt", "mean_matrix", "runs")},
        "matrices": [m.tolist() for m in matrices],
        "seconds_per_run": mean_ci([r["seconds"] for r in records]),
    }
    write_json(out / "results.json", result)
    plot_accuracy_matrices({"La-MAML": np.array(summary["mean_matrix"])}, out / "accuracy_matrix.png",
                           title=f"{preset}: accuracy on task j after training through task i")  # fmt: skip
    plot_first_tasks({"La-MAML": matrices}, out / "first_tasks.png", title=f"{preset}: the first tasks over time")
    return result
