"""Continual (lifelong) learning: class-sorted and task streams, the accuracy matrix with ACC/BWT/FWT,
OML's meta-test protocol and the meta-training runner. Learners live in fastadapt.algorithms.optimization
(``oml``, ``la_maml``)."""

from fastadapt.continual.metrics import continual_metrics, mean_ci, summarise_runs
from fastadapt.continual.protocol import MetaTestOptions, meta_test, repeat_task_stream, run_task_stream
from fastadapt.continual.streams import (
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
