"""Data streams for continual learning: what a learner sees, in the order it sees it.

Two kinds of stream:

- :class:`ClassStream`: the class-incremental stream of OML's meta-test (Javed & White 2019, section 4.1):
  the training images of class 1, then all of class 2, ..., one image per step (batch size 1), and a
  held-out set of other images of the same classes. :func:`class_sorted_stream` draws one from images
  grouped by class; :func:`load_omniglot_characters` gives Omniglot's characters so grouped, split as in the
  reference code (Lake's background set, 964 characters, for meta-training; the evaluation set, 659
  characters, for meta-testing; no rotations, the first 15 drawings of a character to learn from and the
  last 5 held out).
- :class:`TaskStream`: a sequence of tasks (Lopez-Paz & Ranzato 2017, section 2), each with its own
  training and test examples, seen one task after another in mini-batches. Built from scikit-learn's
  digits (:func:`permuted_digits`, :func:`rotated_digits`: the domain-incremental "permuted / rotated
  MNIST" protocols on the 8x8 digits that ship with scikit-learn, so nothing is downloaded) or from
  Omniglot alphabets (:func:`omniglot_alphabet_tasks`: each alphabet one task, its characters new
  classes).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fastadapt.errors import ConfigError, DataError

#: Drawings per Omniglot character, and the reference code's split of them (first 15 train, last 5 test).
DRAWINGS = 20
TRAIN_PER_CLASS = 15
TEST_PER_CLASS = 5


# --------------------------------------------------------------------------------------------- class streams
@dataclass
class ClassStream:
    """A class-sorted stream: ``train_x[i]`` is the i-th example the learner sees (all of the first class's
    training images, then all of the second's, ...); ``test_x`` holds held-out images of the same classes.
    Labels are ``0..num_classes-1`` in the order the classes arrive; ``class_ids`` are their rows in the
    source (e.g. the evaluation set's character index)."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    class_ids: list[int]

    @property
    def num_classes(self) -> int:
        return len(self.class_ids)

    def __len__(self) -> int:
        return len(self.train_y)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        """One (1, ...) input and (1,) label per step: batch size 1, in stream order."""
        for i in range(len(self)):
            yield self.train_x[i : i + 1], self.train_y[i : i + 1]


def class_sorted_stream(
    images: Tensor,
    num_classes: int,
    rng: np.random.Generator,
    *,
    train_per_class: int = TRAIN_PER_CLASS,
    test_per_class: int = TEST_PER_CLASS,
    source: str = "the evaluation set",
) -> ClassStream:
    """Draw ``num_classes`` distinct classes from ``images`` (classes, examples, ...) with ``rng`` and lay
    out their first ``train_per_class`` examples class by class as the stream, their last
    ``test_per_class`` as the held-out set."""
    available, per_class = images.shape[0], images.shape[1]
    if num_classes < 1:
        raise ConfigError(f"a class stream needs at least 1 class, not {num_classes}.")
    if num_classes > available:
        raise ConfigError(
            f"{num_classes} classes requested but {source} has only {available}; lower the number of classes "
            f"to at most {available}."
        )
    if train_per_class < 1 or test_per_class < 0 or train_per_class + test_per_class > per_class:
        raise ConfigError(
            f"train_per_class + test_per_class = {train_per_class} + {test_per_class} must be at most the "
            f"{per_class} examples per class of {source} (and train_per_class at least 1)."
        )
    classes = rng.choice(available, size=num_classes, replace=False)
    chosen = images[torch.as_tensor(classes, dtype=torch.long)]
    labels = torch.arange(num_classes)
    train = chosen[:, :train_per_class]
    test = chosen[:, per_class - test_per_class :]
    return ClassStream(
        train_x=train.reshape(-1, *images.shape[2:]),
        train_y=labels.repeat_interleave(train_per_class),
        test_x=test.reshape(-1, *images.shape[2:]),
        test_y=labels.repeat_interleave(test_per_class),
        class_ids=[int(c) for c in classes],
    )


@dataclass
class OmniglotCharacters:
    """Omniglot's characters as (characters, 20, 1, size, size) float images in [0, 1] (1 = ink), split as
    Lake et al. released them: ``background`` (964 characters of 30 alphabets) and ``evaluation`` (659
    characters of 20 other alphabets). ``*_alphabets`` name each character's alphabet."""

    background: Tensor
    evaluation: Tensor
    background_alphabets: list[str]
    evaluation_alphabets: list[str]


def load_omniglot_characters(data_dir: str | Path | None = None, image_size: int = 28) -> OmniglotCharacters:
    """Omniglot without rotations, one class per character (the OML/ANML reference code's classes), resized
    to ``image_size`` by :func:`fastadapt.datasets.omniglot.load_characters` (cached on disk)."""
    from fastadapt.datasets.omniglot import load_characters
    from fastadapt.datasets.paths import resolve_data_dir

    images, names, sets = load_characters(resolve_data_dir(data_dir), image_size)
    as_float = torch.from_numpy(images).unsqueeze(2).float().div_(255.0)
    parts = {}
    for part in ("background", "evaluation"):
        rows = [i for i, s in enumerate(sets) if s == part]
        if not rows:
            raise DataError(f"Omniglot's {part} set is empty; fetch the data again (`fastadapt download omniglot`).")
        parts[part] = (as_float[rows], [names[i].split("/")[0] for i in rows])
    return OmniglotCharacters(
        parts["background"][0], parts["evaluation"][0], parts["background"][1], parts["evaluation"][1]
    )


# ---------------------------------------------------------------------------------------------- task streams
@dataclass
class Task:
    """One task of a :class:`TaskStream`: its name, training examples (in the order they arrive) and test
    examples; labels index the stream's shared output layer."""

    name: str
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor


@dataclass
class TaskStream:
    """Tasks seen one after another. ``num_classes`` is the size of the shared output layer (single head)."""

    name: str
    tasks: list[Task]
    num_classes: int

    def __post_init__(self) -> None:
        if len(self.tasks) < 2:
            raise ConfigError(
                f"task stream {self.name!r} has {len(self.tasks)} task(s); continual learning needs at least 2 "
                f"(backward and forward transfer compare tasks), so ask for more tasks."
            )

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    @property
    def total_train_examples(self) -> int:
        return sum(len(t.train_y) for t in self.tasks)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.tasks[0].train_x.shape[1:])

    def batches(self, task: int, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """Task ``task``'s training examples in stream order, ``batch_size`` at a time (the last may be smaller)."""
        t = self.tasks[task]
        for start in range(0, len(t.train_y), batch_size):
            yield t.train_x[start : start + batch_size], t.train_y[start : start + batch_size]


def _digits(test_fraction: float, seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """scikit-learn's 1797 8x8 digits as (n, 64) floats in [0, 1], split per class into train and test."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # an optional dependency
        raise ConfigError(
            "the digits streams need scikit-learn; install it with `pip install 'fastadapt[continual]'`."
        ) from exc
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    rng = np.random.default_rng(seed)
    train_rows, test_rows = [], []
    for c in range(10):
        rows = rng.permutation(np.flatnonzero(data.target == c))
        cut = int(round(len(rows) * test_fraction))
        test_rows.append(rows[:cut])
        train_rows.append(rows[cut:])
    # the training examples of a task arrive in a random (not class-sorted) order: tasks, not classes, change
    train = torch.as_tensor(rng.permutation(np.concatenate(train_rows)))
    test = torch.as_tensor(np.sort(np.concatenate(test_rows)))
    return x[train], y[train], x[test], y[test]


def _check_tasks(num_tasks: int) -> None:
    if num_tasks < 2:
        raise ConfigError(f"a task stream needs at least 2 tasks, not {num_tasks}; raise the number of tasks.")


def permuted_digits(num_tasks: int = 10, *, test_fraction: float = 0.3, seed: int = 0) -> TaskStream:
    """Permuted digits: task t applies one fixed random permutation to the 64 pixels (task 1: the identity),
    the "permuted MNIST" protocol (Goodfellow et al. 2013; Lopez-Paz & Ranzato 2017) on scikit-learn's digits.
    The ten digit classes are shared by all tasks (a single 10-way head)."""
    _check_tasks(num_tasks)
    train_x, train_y, test_x, test_y = _digits(test_fraction, seed)
    rng = np.random.default_rng(seed + 1)
    tasks = []
    for t in range(num_tasks):
        perm = torch.arange(64) if t == 0 else torch.as_tensor(rng.permutation(64))
        order = torch.as_tensor(rng.permutation(len(train_y)))
        tasks.append(Task(f"permutation {t}", train_x[order][:, perm], train_y[order], test_x[:, perm], test_y))
    return TaskStream("permuted-digits", tasks, 10)


def rotate_images(images: Tensor, degrees: float) -> Tensor:
    """(n, h, w) images rotated by ``degrees`` counter-clockwise about their centre (bilinear, zeros outside)."""
    theta = math.radians(degrees)
    cos, sin = math.cos(theta), math.sin(theta)
    # affine_grid maps output coordinates to input ones: the inverse rotation
    matrix = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=images.dtype).expand(len(images), 2, 3)
    grid = torch.nn.functional.affine_grid(matrix, [len(images), 1, *images.shape[1:]], align_corners=False)
    out = torch.nn.functional.grid_sample(images.unsqueeze(1), grid, align_corners=False, padding_mode="zeros")
    return out.squeeze(1)


def rotated_digits(
    num_tasks: int = 10, *, max_angle: float = 180.0, test_fraction: float = 0.3, seed: int = 0
) -> TaskStream:
    """Rotated digits: task t shows every digit rotated by t * max_angle / (num_tasks - 1) degrees (task 1
    upright), the "rotated MNIST" protocol (Lopez-Paz & Ranzato 2017) on scikit-learn's 8x8 digits, as
    (n, 64) vectors. Evenly spaced angles make neighbouring tasks similar, so forward transfer is visible."""
    _check_tasks(num_tasks)
    train_x, train_y, test_x, test_y = _digits(test_fraction, seed)
    rng = np.random.default_rng(seed + 1)
    tasks = []
    for t in range(num_tasks):
        angle = t * max_angle / (num_tasks - 1)
        order = torch.as_tensor(rng.permutation(len(train_y)))
        rotated_train = rotate_images(train_x[order].view(-1, 8, 8), angle).reshape(-1, 64)
        rotated_test = rotate_images(test_x.view(-1, 8, 8), angle).reshape(-1, 64)
        tasks.append(Task(f"{angle:.0f} degrees", rotated_train, train_y[order], rotated_test, test_y))
    return TaskStream("rotated-digits", tasks, 10)


def omniglot_alphabet_tasks(
    images: Tensor,
    alphabets: Sequence[str],
    *,
    num_tasks: int | None = None,
    train_per_class: int = TRAIN_PER_CLASS,
    test_per_class: int = TEST_PER_CLASS,
    seed: int = 0,
) -> TaskStream:
    """Each alphabet one task (class-incremental): its characters are new classes of one shared head, the
    first ``train_per_class`` drawings of each arrive shuffled within the task, the last ``test_per_class``
    are its test set. ``images`` (characters, 20, ...) and ``alphabets`` as in :class:`OmniglotCharacters`;
    alphabets in sorted order, the first ``num_tasks`` of them (all by default)."""
    names = sorted(set(alphabets))
    if num_tasks is not None:
        _check_tasks(num_tasks)
        if num_tasks > len(names):
            raise ConfigError(f"{num_tasks} alphabet tasks requested but there are only {len(names)} alphabets.")
        names = names[:num_tasks]
    per_class = images.shape[1]
    if train_per_class + test_per_class > per_class:
        raise ConfigError(f"train_per_class + test_per_class must be at most {per_class}.")
    rng = np.random.default_rng(seed)
    tasks, next_label = [], 0
    for name in names:
        rows = [i for i, a in enumerate(alphabets) if a == name]
        chosen = images[torch.as_tensor(rows)]
        labels = torch.arange(next_label, next_label + len(rows))
        next_label += len(rows)
        train_x = chosen[:, :train_per_class].reshape(-1, *images.shape[2:])
        train_y = labels.repeat_interleave(train_per_class)
        order = torch.as_tensor(rng.permutation(len(train_y)))
        test_x = chosen[:, per_class - test_per_class :].reshape(-1, *images.shape[2:])
        tasks.append(Task(name, train_x[order], train_y[order], test_x, labels.repeat_interleave(test_per_class)))
    return TaskStream("omniglot-alphabets", tasks, next_label)


STREAMS = ("rotated-digits", "permuted-digits")


def digits_stream(name: str, num_tasks: int, seed: int = 0) -> TaskStream:
    """One of :data:`STREAMS` by name."""
    if name == "rotated-digits":
        return rotated_digits(num_tasks, seed=seed)
    if name == "permuted-digits":
        return permuted_digits(num_tasks, seed=seed)
    raise ConfigError(f"unknown task stream {name!r}; choose one of {', '.join(STREAMS)}.")
