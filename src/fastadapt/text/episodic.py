"""Episodic few-shot text classification: the splits of sentence embeddings that fastadapt's trainer samples.

The texts of a data set are embedded once by a frozen sentence encoder (:mod:`fastadapt.text.encoder`, cached on
disk), so each part is a :class:`~fastadapt.tasks.samplers.ClassSplit` of (n, D) vectors and the ordinary
:class:`~fastadapt.tasks.samplers.EpisodeSampler` draws N-way K-shot episodes from it. ``fastadapt train --dataset
clinc150`` (intents split by domain) and ``--dataset text --data-dir FILE`` (your labels) load them through
:func:`text_load_splits`. The learners over them are the registered methods (``protonet``, ``maml``, ``leo``,
``logistic``), each built by its own file on a network over the embeddings (fastadapt.nets.heads).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fastadapt.datasets.folder import random_class_split, read_split_files
from fastadapt.datasets.paths import resolve_data_dir
from fastadapt.datasets.text import (
    CLINC150_SPLIT,
    DEFAULT_ENCODER,
    PARTS,
    class_split,
    clinc150_file,
    clinc150_intent_split,
    load_clinc150,
    read_labelled_texts,
)
from fastadapt.errors import ConfigError, DataError
from fastadapt.tasks.samplers import ClassSplit
from fastadapt.text.encoder import cached_embeddings

TEXT_DATASETS = ("clinc150", "text")
#: --split values of --dataset text that mean "labels split at random with --seed" (vinyals: the trainer's default)
RANDOM_SPLITS = ("random", "vinyals", "")

#: Splits loaded in this process, by what they depend on: the trainer, the method's build (the embeddings' size) and
#: the evaluation read them once.
_loaded: dict[tuple, dict[str, ClassSplit]] = {}


def _stamp(path: Path) -> tuple:
    stat = path.stat() if path.is_file() else None
    return (str(path), stat.st_size, stat.st_mtime_ns) if stat else (str(path),)


def clinc150_episode_splits(
    data_dir: Path, encoder: str = DEFAULT_ENCODER, progress: bool = True, device: str = "cpu"
) -> dict[str, ClassSplit]:
    """Meta-train / meta-validation / meta-test :class:`ClassSplit` of CLINC150 embeddings (intents by
    domain, every in-scope utterance of an intent). What ``--dataset clinc150`` loads."""
    data = load_clinc150(data_dir)
    embeddings = cached_embeddings(data.all_texts(), encoder, progress=progress, device=device)
    offsets = data.offsets()
    in_scope = np.concatenate([np.arange(offsets[p], offsets[p] + len(data[p])) for p in ("train", "val", "test")])
    labels = data["train"].labels + data["val"].labels + data["test"].labels
    split = clinc150_intent_split(data)
    return {part: class_split(part, embeddings[in_scope], labels, split[part]) for part in PARTS}


def text_file_episode_splits(
    path: Path,
    encoder: str = DEFAULT_ENCODER,
    split: str | Path | None = None,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.64, 0.16, 0.20),
    progress: bool = True,
    device: str = "cpu",
) -> dict[str, ClassSplit]:
    """Meta-train / meta-validation / meta-test :class:`ClassSplit` of a (text, label) file's embeddings:
    labels split at random by ``fractions`` with ``seed``, or by a folder of label lists (``split``).
    What ``--dataset text --data-dir FILE`` loads."""
    data = read_labelled_texts(path)
    names = data.label_names()
    parts = random_class_split(names, seed, fractions) if split is None else read_split_files(Path(split), names)
    embeddings = cached_embeddings(data.texts, encoder, progress=progress, device=device)
    return {part: class_split(part, embeddings, data.labels, parts[part]) for part in PARTS}


def text_load_splits(config: Any, progress: bool = True) -> dict[str, ClassSplit]:
    """Meta-train / meta-validation / meta-test splits of embeddings: ``--dataset clinc150`` by the shipped domain
    split (``--split domains-v1``), ``--dataset text --data-dir FILE`` with labels split at random with ``--seed``
    (``--split random``) or by a folder of train.txt/val.txt/test.txt label lists (``--split FOLDER``). The encoder is
    ``config.encoder`` (default all-MiniLM-L6-v2)."""
    encoder = config.encoder or DEFAULT_ENCODER
    if config.dataset == "clinc150":
        if config.split != CLINC150_SPLIT:
            raise ConfigError(
                f"--split {config.split} is not a CLINC150 split; use --split {CLINC150_SPLIT} (intents by domain)."
            )
        root = resolve_data_dir(config.data_dir)
        key = ("clinc150", _stamp(clinc150_file(root)), encoder, config.device)
        if key not in _loaded:
            _remember(key, clinc150_episode_splits(root, encoder, progress, config.device))
        return _loaded[key]
    if config.dataset == "text":
        if not config.data_dir:
            raise DataError("--dataset text needs --data-dir pointing at a .csv or .jsonl file of (text, label) rows.")
        split = None if config.split in RANDOM_SPLITS else config.split
        path = Path(config.data_dir).expanduser()
        key = ("text", _stamp(path), split, config.seed, encoder, config.device)
        if key not in _loaded:
            splits = text_file_episode_splits(
                path, encoder, split, config.seed, progress=progress, device=config.device
            )
            _remember(key, splits)
        return _loaded[key]
    raise ConfigError(f"{config.dataset!r} is not a text data set; choose one of {', '.join(TEXT_DATASETS)}.")


def _remember(key: tuple, splits: dict[str, ClassSplit]) -> None:
    if len(_loaded) >= 2:  # the embeddings of a data set or two, not of every one a process ever loaded
        _loaded.pop(next(iter(_loaded)))
    _loaded[key] = splits
