"""Continual (lifelong) learning runs: the accuracy matrix with ACC/BWT/FWT, OML's meta-test protocol, the
task-stream protocol, the meta-training runner and ``fastadapt continual`` (:mod:`fastadapt.continual.run`).
The streams are in fastadapt.tasks.streams, the learners in fastadapt.algorithms.continual (``oml``, ``la_maml``,
``baselines``)."""

from fastadapt.continual.metrics import continual_metrics, mean_ci, summarise_runs
from fastadapt.continual.protocol import MetaTestOptions, meta_test, repeat_task_stream, run_task_stream
from fastadapt.tasks.streams import (
    ClassStream,
    Task,
    TaskStream,
    class_sorted_stream,
    load_omniglot_characters,
    omniglot_alphabet_tasks,
    permuted_digits,
    rotated_digits,
)

__all__ = [
    "ClassStream",
    "MetaTestOptions",
    "Task",
    "TaskStream",
    "class_sorted_stream",
    "continual_metrics",
    "load_omniglot_characters",
    "mean_ci",
    "meta_test",
    "omniglot_alphabet_tasks",
    "permuted_digits",
    "repeat_task_stream",
    "rotated_digits",
    "run_task_stream",
    "summarise_runs",
]
