"""Data sets as few-shot task sources: what exists, where it is, and how to sample episodes from it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastadapt.datasets.paths import resolve_data_dir
from fastadapt.datasets.sinusoid import SinusoidTasks
from fastadapt.errors import DataError
from fastadapt.tasks.samplers import ClassSplit, EpisodeSampler, TaskSource


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    kind: str  # "classification" or "regression"
    description: str
    #: "images" (channels x image_size^2 values per example), "points" (an x and a y), or "vectors" (read from disk)
    inputs: str = "images"

    def values_per_example(self, config: Any) -> int | None:
        """How many numbers one example holds under ``config`` (None where only the files know: vectors)."""
        if self.inputs == "images":
            return config.channels * config.image_size**2
        return 2 if self.inputs == "points" else None


DATASETS: dict[str, DatasetInfo] = {
    "omniglot": DatasetInfo(
        "omniglot",
        "classification",
        "1623 handwritten characters x 4 rotations, 20 drawings each, 28x28; reads <data-dir>/omniglot/",
    ),
    "folder": DatasetInfo(
        "folder",
        "classification",
        "your own images: --data-dir points at a folder with one sub-folder per class",
    ),
    "embeddings": DatasetInfo(
        "embeddings",
        "classification",
        "feature vectors for LEO: `fastadapt embed` output or the LEO authors' pickles; --data-dir DIR",
        inputs="vectors",
    ),
    "sinusoid": DatasetInfo(
        "sinusoid",
        "regression",
        "y = A sin(x - phase), A~U[0.1,5], phase~U[0,pi], x~U[-5,5] (generated)",
        inputs="points",
    ),
}


def load_splits(config: Any) -> dict[str, ClassSplit] | None:
    """Train/val/test class splits for a classification data set (``None`` for generated regression)."""
    if config.dataset == "omniglot":
        from fastadapt.datasets.omniglot import load_omniglot

        return load_omniglot(resolve_data_dir(config.data_dir), config.split, config.image_size)
    if config.dataset == "folder":
        from fastadapt.datasets.folder import load_image_folder

        if not config.data_dir:
            raise DataError("--dataset folder needs --data-dir pointing at a folder with one sub-folder per class.")
        split = None if config.split == "vinyals" else config.split
        return load_image_folder(Path(config.data_dir), config.image_size, config.channels, split, config.seed)
    if config.dataset == "embeddings":
        from fastadapt.datasets.embeddings import load_embeddings

        if not config.data_dir:
            raise DataError(
                "--dataset embeddings needs --data-dir pointing at `fastadapt embed` output (train.npz, val.npz, "
                "test.npz) or at the LEO authors' embeddings (train_embeddings.pkl, ...)."
            )
        return load_embeddings(Path(config.data_dir))
    return None


def task_source(config: Any, splits: dict[str, ClassSplit] | None, part: str, seed: int) -> TaskSource:
    """A seeded episode sampler over the ``part`` ("train", "val" or "test") of the data, shaped as
    ``config`` says: training episodes use train_ways/train_shots/query, the others ways/shots/eval_query."""
    if part == "train":
        ways, shots, query = config.train_ways_or_ways, config.train_shots_or_shots, config.query
        ways_flag = "--train-ways" if config.train_ways else "--ways"
        flags = (ways_flag, "--train-shots" if config.train_shots else "--shots", "--query")
    else:
        ways, shots, query = config.ways, config.shots, config.eval_query_or_query
        flags = ("--ways", "--shots", "--eval-query" if config.eval_query else "--query")
    if config.dataset == "sinusoid":
        # Generated tasks: the parts differ only by seed.
        return SinusoidTasks(shots, query, seed=seed + {"train": 0, "val": 10_007, "test": 20_011}[part])
    assert splits is not None
    return EpisodeSampler(splits[part], ways, shots, query, seed=seed, flags=flags)


__all__ = ["DATASETS", "DatasetInfo", "load_splits", "resolve_data_dir", "task_source"]
