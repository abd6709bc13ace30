"""Omniglot (Lake et al. 2015) as few-shot classes: 28x28 images, each character rotated by
0/90/180/270 degrees into four classes (Santoro et al. 2016; Vinyals et al. 2016).

Reads ``<data_dir>/omniglot/images_background.npz`` and ``images_evaluation.npz`` (the layout of
``shared/data/omniglot``, or what :func:`fastadapt.datasets.download.download_omniglot` writes):
uint8 arrays of 105x105 images with 1 = ink, grouped 20 per character.

Splits (by character, so the four rotations of a character always stay together):

- ``vinyals`` (default): 1028 train / 172 validation / 423 test characters, the lists of Vinyals et
  al. as published with Snell et al.'s Prototypical Networks code (shipped in ``splits/``).
- ``maml``: 1100 / 100 / 423 as in Finn et al.'s reference code: the 1623 characters, sorted by
  ``alphabet/character``, shuffled by ``numpy.random.default_rng(1)``; the first 1100 train, the next
  100 validation, the remaining 423 test. (The reference code shuffled an unsorted directory listing
  with Python's ``random``, which cannot be reproduced; the sizes and the procedure match.)
- ``vinyals-trainval``: the Vinyals split with the 172 validation characters added to training (1200
  training characters, the set Vinyals et al. and Snell et al. trained their reported models on). The
  validation classes are then seen in training, so validation only tracks progress and ``best.pt`` is
  in effect the best late checkpoint; the test characters are the same 423.
- ``lake``: Lake's background set for training (less 4 alphabets held out for validation: the last
  four in sorted order) and the evaluation set for testing.
"""

from __future__ import annotations

import hashlib
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fastadapt import atomic
from fastadapt.datasets.paths import cache_dir
from fastadapt.errors import ConfigError, DataError, OutputError
from fastadapt.tasks.samplers import ClassSplit

FILES = ("images_background.npz", "images_evaluation.npz")
SPLITS = ("vinyals", "vinyals-trainval", "maml", "lake")
ROTATIONS = (0, 90, 180, 270)
_SPLIT_LIST = Path(__file__).with_name("splits") / "omniglot_vinyals.txt"

MISSING_HELP = (
    "Put images_background.npz and images_evaluation.npz in <data-dir>/omniglot/ "
    "(set --data-dir or $FASTADAPT_DATA), or fetch them with `fastadapt download omniglot`."
)


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise DataError(f"Omniglot file not found: {path}. {MISSING_HELP}")
    try:
        with np.load(path, allow_pickle=False) as d:
            arrays = {k: d[k] for k in ("images", "alphabet", "character")}
    except (zipfile.BadZipFile, zlib.error, OSError, ValueError, KeyError, EOFError) as exc:
        raise DataError(
            f"Omniglot file {path} is corrupt or truncated ({type(exc).__name__}: {exc}). "
            f"Delete it and fetch it again with `fastadapt download omniglot`."
        ) from exc
    n = len(arrays["images"])
    if n % 20 or arrays["images"].shape[1:] != (105, 105):
        raise DataError(f"Omniglot file {path} does not hold 105x105 images in groups of 20; fetch it again.")
    return arrays


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    """Ink-is-1 binary images -> uint8 size x size with antialiasing (0 = background, 255 = ink)."""
    out = np.empty((len(images), size, size), dtype=np.uint8)
    for i, img in enumerate(images):
        out[i] = np.asarray(Image.fromarray(img * 255).resize((size, size), Image.LANCZOS))
    return out


def load_characters(data_dir: Path, image_size: int = 28) -> tuple[np.ndarray, list[str], list[str]]:
    """All 1623 characters: images (1623, 20, size, size) uint8, names ``alphabet/character``, and the
    Lake set ("background"/"evaluation") each came from. Resized arrays are cached on disk."""
    root = Path(data_dir) / "omniglot"
    paths = [root / f for f in FILES]
    for p in paths:
        if not p.is_file():
            raise DataError(f"Omniglot not found in {root}. {MISSING_HELP}")
    key = hashlib.sha256(
        "|".join(f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in paths).encode()
    ).hexdigest()[:16]
    cached = cache_dir() / f"omniglot_{image_size}_{key}.npz"
    if cached.is_file():
        try:
            with np.load(cached, allow_pickle=False) as d:
                return d["images"], list(d["names"]), list(d["sets"])
        except (zipfile.BadZipFile, zlib.error, OSError, ValueError, KeyError, EOFError):
            cached.unlink(missing_ok=True)
    images, names, sets = [], [], []
    for path, set_name in zip(paths, ("background", "evaluation")):
        d = _load_npz(path)
        n_chars = len(d["images"]) // 20
        images.append(_resize(d["images"], image_size).reshape(n_chars, 20, image_size, image_size))
        names += [f"{a}/{c}" for a, c in zip(d["alphabet"][::20], d["character"][::20])]
        sets += [set_name] * n_chars
    all_images = np.concatenate(images)
    try:
        arrays = dict(images=all_images, names=np.array(names), sets=np.array(sets))
        atomic.write_with(cached, lambda f: np.savez(f, **arrays))
    except OutputError:
        pass  # a read-only or full cache only costs time
    return all_images, names, sets


def character_split(names: list[str], sets: list[str], split: str) -> dict[str, list[int]]:
    """Character indices of train/val/test for one of :data:`SPLITS`."""
    index = {n: i for i, n in enumerate(names)}
    if split == "vinyals":
        out: dict[str, list[int]] = {"train": [], "val": [], "test": []}
        for line in _SPLIT_LIST.read_text().splitlines():
            if line and not line.startswith("#"):
                part, name = line.split()
                if name not in index:
                    raise DataError(f"Omniglot character {name} of the Vinyals split is missing from the data.")
                out[part].append(index[name])
        return out
    if split == "vinyals-trainval":
        parts = character_split(names, sets, "vinyals")
        return {"train": parts["train"] + parts["val"], "val": parts["val"], "test": parts["test"]}
    if split == "maml":
        by_name = sorted(range(len(names)), key=lambda i: names[i])
        order = [by_name[i] for i in np.random.default_rng(1).permutation(len(by_name))]
        return {"train": order[:1100], "val": order[1100:1200], "test": order[1200:]}
    if split == "lake":
        background_alphabets = sorted({n.split("/")[0] for n, s in zip(names, sets) if s == "background"})
        held_out = set(background_alphabets[-4:])
        out = {"train": [], "val": [], "test": []}
        for i, (name, lake_set) in enumerate(zip(names, sets)):
            part = "test" if lake_set == "evaluation" else "val" if name.split("/")[0] in held_out else "train"
            out[part].append(i)
        return out
    raise ConfigError(f"unknown Omniglot split {split!r}; choose one of {', '.join(SPLITS)}.")


def rotated_classes(images: np.ndarray, names: list[str], chars: list[int], split_name: str) -> ClassSplit:
    """Each character of ``chars`` becomes four classes, one per rotation."""
    blocks, class_names = [], []
    for c in chars:
        for deg in ROTATIONS:
            blocks.append(np.rot90(images[c], k=deg // 90, axes=(1, 2)))
            class_names.append(f"{names[c]}/rot{deg:03d}")
    per_class = images.shape[1]
    stacked = torch.from_numpy(np.ascontiguousarray(np.stack(blocks)))
    flat = stacked.reshape(-1, 1, *images.shape[2:])
    indices = [np.arange(i * per_class, (i + 1) * per_class) for i in range(len(blocks))]
    return ClassSplit(split_name, flat, indices, class_names)


def load_omniglot(data_dir: Path, split: str = "vinyals", image_size: int = 28) -> dict[str, ClassSplit]:
    """Train/val/test :class:`ClassSplit` of rotated Omniglot characters."""
    if split not in SPLITS:
        raise ConfigError(f"unknown Omniglot split {split!r}; choose one of {', '.join(SPLITS)}.")
    images, names, sets = load_characters(data_dir, image_size)
    chars = character_split(names, sets, split)
    return {part: rotated_classes(images, names, ix, part) for part, ix in chars.items()}
