"""Evaluation protocols: OML's meta-test on class-sorted streams, and the task-stream protocol behind the
accuracy matrix.

OML's meta-test (Javed & White 2019, section 4.1, as their code and numenta's replication run it): draw
``n`` new classes from the evaluation set; the learner sees the first 15 images of each class, class after
class (:class:`~fastadapt.tasks.streams.ClassStream`), one image per step, and takes one step per image
on the PLN only, the RLN frozen; then it is scored on the stream's own training images (what it still
remembers) and on the 5 held-out images per class (how it generalises). The step size is chosen on separate
search runs (other random classes): each search run picks the rate with the best held-out accuracy, and the
rate picked most often is used for the reported runs (the reference code's ``stats.mode``; ties go to the
best mean). ``mode="iid"`` is the offline upper bound: the same PLN, the same images, learned with shuffled
mini-batches over several epochs.

The task-stream protocol (Lopez-Paz & Ranzato 2017): tasks arrive one after another in mini-batches; after
the last batch of every task, the learner is tested on every task's test set, which fills row i of the
accuracy matrix R; row ``b`` is the test accuracy before any training.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from fastadapt.continual.metrics import mean_ci, summarise_runs
from fastadapt.engine.functional import Params, call, inner_sgd, parameters_of
from fastadapt.errors import ConfigError
from fastadapt.tasks.streams import TEST_PER_CLASS, TRAIN_PER_CLASS, ClassStream, TaskStream, class_sorted_stream

# ------------------------------------------------------------------------------------------ OML's meta-test


@dataclass
class MetaTestOptions:
    """OML's meta-test protocol."""

    classes: tuple[int, ...] = field(
        default=(10, 50, 100, 200), metadata={"help": "numbers of new classes in a stream, one evaluation each"}
    )
    runs: int = field(default=10, metadata={"help": "reported runs per number of classes (fresh random classes)"})
    search_runs: int = field(default=5, metadata={"help": "separate runs that choose the learning rate"})
    learning_rates: tuple[float, ...] = field(
        default=(0.3, 0.1, 0.03, 0.01, 0.003, 0.001, 0.0003, 0.0001),
        metadata={"help": "candidate step sizes of the online updates"},
    )
    optimizer: Literal["sgd", "adam"] = field(
        default="sgd", metadata={"help": "sgd: plain SGD steps (OML's inner loop); adam: the reference code's eval"}
    )
    mode: Literal["online", "iid"] = field(
        default="online", metadata={"help": "online: sorted stream, batch 1; iid: shuffled batches, several epochs"}
    )
    iid_epochs: int = field(default=20, metadata={"help": "epochs of the i.i.d. upper bound"})
    iid_batch_size: int = field(default=32, metadata={"help": "mini-batch size of the i.i.d. upper bound"})
    reset: Literal["output", "pln", "none"] = field(
        default="output", metadata={"help": "PLN weights re-initialised before each run: output layer, all, none"}
    )
    train_per_class: int = field(default=TRAIN_PER_CLASS, metadata={"help": "images per class in the stream"})
    test_per_class: int = field(default=TEST_PER_CLASS, metadata={"help": "held-out images per class"})
    seed: int = field(default=0, metadata={"help": "seed of the class draws and re-initialisations"})

    def validate(self, available_classes: int | None = None, num_outputs: int | None = None) -> None:
        if not self.classes or min(self.classes) < 1:
            raise ConfigError(f"meta-test classes must be numbers of classes >= 1, not {self.classes}.")
        if available_classes is not None and max(self.classes) > available_classes:
            raise ConfigError(
                f"meta-test asks for {max(self.classes)} classes but the evaluation set has only "
                f"{available_classes}; lower --classes to at most {available_classes}."
            )
        if num_outputs is not None and max(self.classes) > num_outputs:
            raise ConfigError(
                f"meta-test asks for {max(self.classes)} classes but the PLN has {num_outputs} outputs; "
                f"build the learner with num_outputs >= {max(self.classes)}."
            )
        if self.runs < 1 or self.search_runs < 1:
            raise ConfigError("meta-test runs and search_runs must be at least 1.")
        if not self.learning_rates or min(self.learning_rates) <= 0:
            raise ConfigError("meta-test learning_rates must be a non-empty list of positive step sizes.")
        if self.optimizer not in ("sgd", "adam"):
            raise ConfigError(f"unknown meta-test optimizer {self.optimizer!r}; choose sgd or adam.")
        if self.mode not in ("online", "iid"):
            raise ConfigError(f"unknown meta-test mode {self.mode!r}; choose online or iid.")
        if self.reset not in ("output", "pln", "none"):
            raise ConfigError(f"unknown meta-test reset {self.reset!r}; choose output, pln or none.")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "classes": list(self.classes), "learning_rates": list(self.learning_rates)}


class OnlinePLN(Protocol):
    """What the meta-test needs of a learner (fastadapt.algorithms.continual.oml.OML has it)."""

    pln: nn.Module

    def representation(self, x: Tensor) -> Tensor: ...

    def online_updates(self, features: Tensor, labels: Tensor, params: Params, lr: float) -> Params: ...


def _linear_layers(pln: nn.Module) -> list[str]:
    return [name for name, m in pln.named_modules() if isinstance(m, nn.Linear)]


def reset_pln(pln: nn.Module, params: Params, which: str, generator: torch.Generator) -> Params:
    """``params`` with the output layer (``which="output"``), every linear layer (``"pln"``) or nothing
    re-initialised: Kaiming-normal weights, zero biases (the reference code's reset)."""
    layers = _linear_layers(pln)
    chosen = {"output": layers[-1:], "pln": layers, "none": []}[which]
    out = dict(params)
    for layer in chosen:
        weight = params[f"{layer}.weight"]
        std = math.sqrt(2.0 / weight.shape[1])
        out[f"{layer}.weight"] = torch.randn(weight.shape, generator=generator, dtype=weight.dtype) * std
        out[f"{layer}.bias"] = torch.zeros_like(params[f"{layer}.bias"])
    return out


def accuracy(pln: nn.Module, params: Params, features: Tensor, labels: Tensor) -> float:
    with torch.no_grad():
        return (call(pln, params, features).argmax(-1) == labels).float().mean().item()


def _adam_online(pln: nn.Module, features: Tensor, labels: Tensor, params: Params, lr: float, batch: int) -> Params:
    """The reference evaluation's learner: Adam on the PLN, ``batch`` examples per step, in the given order."""
    weights = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
    optimizer = torch.optim.Adam(weights.values(), lr=lr)
    for start in range(0, len(labels), batch):
        loss = F.cross_entropy(call(pln, weights, features[start : start + batch]), labels[start : start + batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return {k: v.detach() for k, v in weights.items()}


def learn_stream(
    learner: OnlinePLN,
    stream: ClassStream,
    params: Params,
    lr: float,
    options: MetaTestOptions,
    rng: np.random.Generator,
) -> Params:
    """The PLN after learning ``stream`` (whose inputs are RLN features) from ``params``."""
    if options.mode == "online":
        if options.optimizer == "sgd":
            return learner.online_updates(stream.train_x, stream.train_y, params, lr)
        return _adam_online(learner.pln, stream.train_x, stream.train_y, params, lr, 1)
    # the i.i.d. upper bound: the same examples, shuffled, in mini-batches, for several epochs
    orders = [rng.permutation(len(stream)) for _ in range(options.iid_epochs)]
    order = torch.as_tensor(np.concatenate(orders))
    x, y = stream.train_x[order], stream.train_y[order]
    if options.optimizer == "adam":
        return _adam_online(learner.pln, x, y, params, lr, options.iid_batch_size)
    weights = {k: v.detach() for k, v in params.items()}
    for start in range(0, len(y), options.iid_batch_size):
        xb, yb = x[start : start + options.iid_batch_size], y[start : start + options.iid_batch_size]
        start_weights = {k: v.detach().requires_grad_() for k, v in weights.items()}
        loss = lambda p, xb=xb, yb=yb: F.cross_entropy(call(learner.pln, p, xb), yb)
        weights = inner_sgd(loss, start_weights, 1, lr, first_order=True)
    return {k: v.detach() for k, v in weights.items()}


def one_run(
    learner: OnlinePLN,
    features: Tensor,
    num_classes: int,
    lr: float,
    options: MetaTestOptions,
    initial: Params,
    seed: Sequence[int],
) -> dict[str, float]:
    """One meta-test run: draw the classes (seeded by ``seed``), reset the PLN, learn the stream, score it."""
    rng = np.random.default_rng(list(seed))
    stream = class_sorted_stream(
        features, num_classes, rng, train_per_class=options.train_per_class, test_per_class=options.test_per_class
    )
    generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
    params = reset_pln(learner.pln, initial, options.reset, generator)
    learned = learn_stream(learner, stream, params, lr, options, rng)
    return {
        "train_acc": accuracy(learner.pln, learned, stream.train_x, stream.train_y),
        "test_acc": accuracy(learner.pln, learned, stream.test_x, stream.test_y),
    }


def choose_learning_rate(search: dict[float, list[float]]) -> float:
    """The rate that was best in the most search runs; ties go to the best mean held-out accuracy."""
    runs = len(next(iter(search.values())))
    winners = [max(search, key=lambda lr: search[lr][r]) for r in range(runs)]
    counts = Counter(winners)
    top = max(counts.values())
    tied = [lr for lr, c in counts.items() if c == top]
    return max(tied, key=lambda lr: float(np.mean(search[lr])))


def meta_test(
    learner: OnlinePLN, evaluation_images: Tensor, options: MetaTestOptions | None = None, *, progress: bool = True
) -> dict[str, Any]:
    """OML's meta-test of ``learner`` on ``evaluation_images`` (classes, examples, channels, h, w): for every
    number of classes in ``options.classes``, the learning-rate search and ``options.runs`` reported runs.
    Returns per-run accuracies, their mean and 95% CI, the chosen rate and the search's accuracies. The
    learner's own weights are not changed (the PLN learns on copies; the RLN only runs forward, once)."""
    options = options or MetaTestOptions()
    num_outputs = [m for m in learner.pln.modules() if isinstance(m, nn.Linear)][-1].out_features
    options.validate(evaluation_images.shape[0], num_outputs)
    started = time.perf_counter()
    classes, per_class = evaluation_images.shape[:2]
    features = learner.representation(evaluation_images.flatten(0, 1)).view(classes, per_class, -1)
    initial = {k: v.detach().clone() for k, v in parameters_of(learner.pln).items()}
    work = len(options.classes) * (options.search_runs * len(options.learning_rates) + options.runs)
    bar = tqdm(total=work, desc=f"meta-test ({options.mode})", disable=not progress, leave=False)
    results = []
    for n in options.classes:
        search: dict[float, list[float]] = {lr: [] for lr in options.learning_rates}
        for s in range(options.search_runs):
            for lr in options.learning_rates:
                run = one_run(learner, features, n, lr, options, initial, (options.seed, 1, n, s))
                search[lr].append(run["test_acc"])
                bar.update()
        lr = choose_learning_rate(search)
        runs = []
        for r in range(options.runs):
            runs.append(one_run(learner, features, n, lr, options, initial, (options.seed, 2, n, r)))
            bar.update()
        bar.set_postfix(classes=n, test=f"{np.mean([x['test_acc'] for x in runs]):.3f}")
        results.append(
            {
                "classes": n,
                "lr": lr,
                "test_acc": mean_ci([x["test_acc"] for x in runs]),
                "train_acc": mean_ci([x["train_acc"] for x in runs]),
                "runs": runs,
                "search": {str(k): v for k, v in search.items()},
            }
        )
    bar.close()
    return {"options": options.to_dict(), "results": results, "seconds": time.perf_counter() - started}


# ----------------------------------------------------------------------------------------- task streams


class ContinualLearner(Protocol):
    """An online continual learner: sees mini-batches once (``observe``) and classifies (``predict_logits``)."""

    def observe(self, x: Tensor, y: Tensor) -> float: ...

    def predict_logits(self, x: Tensor) -> Tensor: ...

    def check_stream(self, stream: TaskStream) -> None:
        """Refuse a stream the learner's settings do not fit (one line, ConfigError)."""


def task_accuracies(learner: ContinualLearner, stream: TaskStream) -> np.ndarray:
    """Test accuracy on every task of ``stream``."""
    with torch.no_grad():
        return np.array(
            [(learner.predict_logits(t.test_x).argmax(-1) == t.test_y).float().mean().item() for t in stream.tasks]
        )


def run_task_stream(
    learner: ContinualLearner,
    stream: TaskStream,
    batch_size: int = 10,
    *,
    progress: bool = False,
    on_task_end: Callable[[int, np.ndarray], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One pass over ``stream`` in mini-batches of ``batch_size``: the accuracy matrix ``R`` (tasks x tasks,
    row i after task i) and the accuracies at initialisation ``b``."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, not {batch_size}.")
    learner.check_stream(stream)
    initial = task_accuracies(learner, stream)
    rows = []
    bar = tqdm(total=stream.total_train_examples, desc=stream.name, disable=not progress, leave=False)
    for i in range(stream.num_tasks):
        for x, y in stream.batches(i, batch_size):
            learner.observe(x, y)
            bar.update(len(y))
        rows.append(task_accuracies(learner, stream))
        if on_task_end is not None:
            on_task_end(i, rows[-1])
    bar.close()
    return np.stack(rows), initial


def repeat_task_stream(
    make_learner: Callable[[int], ContinualLearner],
    make_stream: Callable[[int], TaskStream],
    seeds: Sequence[int],
    batch_size: int = 10,
    *,
    progress: bool = True,
    desc: str = "",
) -> dict[str, Any]:
    """:func:`run_task_stream` for every seed (a new learner and stream each), summarised by
    :func:`fastadapt.continual.metrics.summarise_runs` (ACC, BWT, FWT with 95% CIs, the mean matrix)."""
    matrices, initials, seconds = [], [], []
    for seed in tqdm(seeds, desc=desc or "runs", disable=not progress, leave=False):
        started = time.perf_counter()
        r, b = run_task_stream(make_learner(seed), make_stream(seed), batch_size)
        matrices.append(r)
        initials.append(b)
        seconds.append(time.perf_counter() - started)
    summary = summarise_runs(matrices, initials)
    summary["matrices"] = [m.tolist() for m in matrices]
    summary["initial"] = [b.tolist() for b in initials]
    summary["seconds_per_run"] = mean_ci(seconds)
    return summary
