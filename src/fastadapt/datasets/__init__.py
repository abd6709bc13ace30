"""Data sets as few-shot task sources: what exists, where it is, and how to sample episodes from it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastadapt.datasets import linear, miniimagenet
from fastadapt.datasets.linear import LinearTasks
from fastadapt.datasets.paths import resolve_data_dir
from fastadapt.datasets.sinusoid import SinusoidTasks
from fastadapt.datasets.text import DEFAULT_ENCODER
from fastadapt.errors import DataError
from fastadapt.tasks.samplers import ClassSplit, EpisodeSampler, TaskSource


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    kind: str  # "classification" or "regression"
    description: str
    #: the data set's own settings (its images' size and colour, its standard protocol), applied before a method's
    #: preset for it: fastadapt.config.make_config
    settings: dict[str, Any] = field(default_factory=dict)
    #: "images" (channels x image_size^2 values per example), "points" (an x and a y), or "vectors" (read from disk, or
    #: texts made vectors by a sentence encoder)
    inputs: str = "images"

    def values_per_example(self, config: Any) -> int | None:
        """How many numbers one example holds under ``config`` (None where only the files know: vectors, or images
        whose size and colour are read from the folder)."""
        if self.inputs == "images":
            if config.channels is None or config.image_size is None:
                return None
            return config.channels * config.image_size**2
        return 2 if self.inputs == "points" else None


DATASETS: dict[str, DatasetInfo] = {
    "omniglot": DatasetInfo(
        "omniglot",
        "classification",
        "1623 handwritten characters x 4 rotations, 20 drawings each, 28x28; reads <data-dir>/omniglot/",
        # Vinyals et al. 2016 and every Omniglot paper since: 28x28 grayscale.
        dict(image_size=28, channels=1),
    ),
    "mini-imagenet": DatasetInfo(
        "mini-imagenet",
        "classification",
        miniimagenet.DATASET_DESCRIPTION,
        # The protocol of Ravi & Larochelle 2017, Finn et al. 2017 and Snell et al. 2017: their class split, 84x84
        # colour images, 5-way test episodes with 15 queries per class, 600 test episodes; 300 validation episodes
        # (fastadapt's choice, as for Omniglot's presets).
        dict(split="ravi", image_size=84, channels=3, ways=5, eval_query=15, test_episodes=600, val_episodes=300),
    ),
    "folder": DatasetInfo(
        "folder",
        "classification",
        "your own images: --data-dir points at a folder with one sub-folder per class; colour and size are "
        "chosen from the images unless --channels/--image-size say",
    ),
    "embeddings": DatasetInfo(
        "embeddings",
        "classification",
        "feature vectors for LEO: `fastadapt embed` output or the LEO authors' pickles; --data-dir DIR",
        inputs="vectors",
    ),
    # Texts, made vectors by a sentence encoder (fastadapt.text): the networks over them are identity, linear, mlp-H and
    # residual-H (fastadapt.nets.heads), chosen by each method's preset.
    "clinc150": DatasetInfo(
        "clinc150",
        "classification",
        "150 intents in 10 domains, 150 utterances each (text); intents split by domain (domains-v1: 90 / 30 / 30); "
        "reads <data-dir>/clinc150/data_full.json; needs pip install fastadapt[text]",
        # The episodic protocol of docs/text.md: the versioned domain split, MiniLM embeddings, 15 queries per class
        # in test episodes, 600 test and 300 validation episodes (as mini-ImageNet's).
        dict(split="domains-v1", encoder=DEFAULT_ENCODER, eval_query=15, test_episodes=600, val_episodes=300),
        inputs="vectors",
    ),
    "text": DatasetInfo(
        "text",
        "classification",
        "your own texts: --data-dir FILE, a .csv (header naming text and label) or .jsonl of {text, label}; labels "
        "split at random (64/16/20 %) or by --split FOLDER of train/val/test.txt; needs pip install fastadapt[text]",
        dict(split="random", encoder=DEFAULT_ENCODER),
        inputs="vectors",
    ),
    # Inputs are numbers, not images: the MLP (1-40-40-1 of Finn et al.) is the network that takes them.
    "sinusoid": DatasetInfo(
        "sinusoid",
        "regression",
        "y = A sin(x - phase), A~U[0.1,5], phase~U[0,pi], x~U[-5,5] (generated)",
        dict(network="mlp"),
        inputs="points",
    ),
    "linear": DatasetInfo("linear", "regression", linear.DATASET_DESCRIPTION, dict(network="mlp"), inputs="points"),
}

#: Seed offsets of the generated regression tasks' parts: the parts differ only by seed.
_PART_SEED_OFFSETS = {"train": 0, "val": 10_007, "test": 20_011}


def image_format(config: Any) -> tuple[dict[str, int], str | None]:
    """The ``image_size`` and ``channels`` that ``config`` leaves open (None), settled, and a line for the log.

    ``--dataset folder`` chooses them from its images (:func:`fastadapt.datasets.folder.detect_format`: RGB when
    they have colour, the size from their median shorter side) and always says what it chose; other data sets have
    theirs in :data:`DATASETS` (applied by ``make_config``), so only a configuration made by hand can leave them
    open, and gets the data set's own."""
    if config.dataset == "folder":
        from fastadapt.datasets.folder import detect_format

        root = _folder_root(config)
        if not root.is_dir():  # refused here, before anything needs the size it would have chosen
            from fastadapt.datasets.folder import list_classes

            list_classes(root)
        chosen = detect_format(root, config.image_size, config.channels)
        return {"image_size": chosen.image_size, "channels": chosen.channels}, chosen.description
    own = DATASETS[config.dataset].settings
    left_open = [name for name in ("image_size", "channels") if name in own and getattr(config, name) is None]
    return {name: own[name] for name in left_open}, None


def _folder_root(config: Any) -> Path:
    if not config.data_dir:
        raise DataError("--dataset folder needs --data-dir pointing at a folder with one sub-folder per class.")
    return Path(config.data_dir).expanduser()


def load_splits(config: Any, progress: bool = False) -> dict[str, ClassSplit] | None:
    """Train/val/test class splits for a classification data set (``None`` for generated regression).
    ``progress``: bars for slow first-time work (downloading Omniglot, decoding mini-ImageNet)."""
    if config.dataset == "omniglot":
        from fastadapt.datasets import download
        from fastadapt.datasets.omniglot import FILES, load_omniglot

        root = resolve_data_dir(config.data_dir)
        if config.download or not all((root / "omniglot" / name).is_file() for name in FILES):
            # absent: downloaded with --download, else one line saying how; present files are read as they are,
            # so that a corrupt one is named by load_omniglot
            download.ensure_omniglot(root, config.download, download.OMNIGLOT_SOURCES, progress=progress)
        return load_omniglot(root, config.split, config.image_size)
    if config.dataset == "mini-imagenet":
        return miniimagenet.splits_for_config(config, progress=progress)
    if config.dataset == "folder":
        from fastadapt.datasets.folder import load_image_folder

        split = None if config.split == "vinyals" else config.split
        return load_image_folder(_folder_root(config), config.image_size, config.channels, split, config.seed)
    if config.dataset == "embeddings":
        from fastadapt.datasets.embeddings import load_embeddings

        if not config.data_dir:
            raise DataError(
                "--dataset embeddings needs --data-dir pointing at `fastadapt embed` output (train.npz, val.npz, "
                "test.npz) or at the LEO authors' embeddings (train_embeddings.pkl, ...)."
            )
        return load_embeddings(Path(config.data_dir))
    if config.dataset in ("clinc150", "text"):
        from fastadapt.text.episodic import text_load_splits

        return text_load_splits(config, progress=progress)
    return None


def input_features(config: Any) -> int | None:
    """How many numbers each example of a data set of vectors holds (the embeddings' size), for the networks over
    them; None for images and points, whose networks know their inputs' shape."""
    if DATASETS[config.dataset].inputs != "vectors":
        return None
    if config.dataset == "embeddings":
        from fastadapt.datasets.embeddings import embedding_dim

        if not config.data_dir:
            load_splits(config)  # one line saying what --data-dir must hold
        return embedding_dim(Path(config.data_dir))
    return int(load_splits(config)["train"].images.shape[1])


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
        return SinusoidTasks(shots, query, seed=seed + _PART_SEED_OFFSETS[part])
    if config.dataset == "linear":
        return LinearTasks(shots, query, seed=seed + _PART_SEED_OFFSETS[part])
    assert splits is not None
    return EpisodeSampler(splits[part], ways, shots, query, seed=seed, flags=flags)


__all__ = [
    "DATASETS",
    "DatasetInfo",
    "image_format",
    "input_features",
    "load_splits",
    "resolve_data_dir",
    "task_source",
]
