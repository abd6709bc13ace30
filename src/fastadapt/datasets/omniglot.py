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
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fastadapt import atomic
from fastadapt.datasets.paths import cache_dir
from fastadapt.errors import ConfigError, DataError, OutputError
from fastadapt.options import require_memory
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
    except Exception as exc:  # numpy and zipfile raise many types on damaged files; all mean the same here
        raise DataError(
            f"Omniglot file {path} is corrupt or truncated ({type(exc).__name__}). "
            f"Delete it and fetch it again with `fastadapt download omniglot`."
        ) from None
    problem = _layout_problem(arrays)
    if problem:
        raise DataError(
            f"Omniglot file {path} does not hold what `fastadapt download omniglot` writes ({problem}); delete it and "
            f"fetch it again."
        )
    return arrays


def _layout_problem(arrays: dict[str, np.ndarray]) -> str | None:
    """What is wrong with the arrays of one Omniglot file, or None: 105x105 images of 0 and 1 in groups of 20, and
    an alphabet and a character name for each."""
    images = arrays["images"]
    if images.ndim != 3 or images.shape[1:] != (105, 105) or len(images) == 0 or len(images) % 20:
        return f"images of shape {images.shape}, not 105x105 images in groups of 20"
    if images.dtype.kind not in "biu" or images.min() < 0 or images.max() > 1:
        return "images that are not 0 (paper) and 1 (ink)"
    for key in ("alphabet", "character"):
        if arrays[key].ndim != 1 or arrays[key].dtype.kind != "U" or len(arrays[key]) != len(images):
            return f"{key} names that are not one string per image"
    return None


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    """Ink-is-1 binary images -> uint8 size x size with antialiasing (0 = background, 255 = ink)."""
    out = np.empty((len(images), size, size), dtype=np.uint8)
    for i, img in enumerate(images):
        out[i] = np.asarray(Image.fromarray(img.astype(np.uint8) * 255).resize((size, size), Image.LANCZOS))
    return out


#: What the cache holds, in this version: a cache written another way is rebuilt.
CACHE_FORMAT = "fastadapt omniglot cache 1: uint8 ink 255, Lanczos resize"


def _digest(images: np.ndarray, names: np.ndarray, sets: np.ndarray) -> str:
    h = hashlib.sha256(np.ascontiguousarray(images).tobytes())
    h.update("\n".join(map(str, names)).encode() + b"\0" + "\n".join(map(str, sets)).encode())
    return h.hexdigest()


def _read_cache(path: Path, image_size: int) -> tuple[np.ndarray, list[str], list[str]] | None:
    """The cached resized arrays, or None when the cache is missing, damaged, or written another way."""
    try:
        with np.load(path, allow_pickle=False) as d:
            images, names, sets, form, digest = (d[k] for k in ("images", "names", "sets", "format", "digest"))
    except Exception:  # any damage means: rebuild
        return None
    n = len(images) if images.ndim else -1
    if (
        str(form) != CACHE_FORMAT
        or images.dtype != np.uint8
        or images.shape[1:] != (20, image_size, image_size)
        or any(a.ndim != 1 or a.dtype.kind != "U" or len(a) != n for a in (names, sets))
        or str(digest) != _digest(images, names, sets)
    ):
        return None
    return images, [str(n) for n in names], [str(s) for s in sets]


def cache_path(data_dir: Path, image_size: int) -> Path:
    """Where the images of the Omniglot files in ``data_dir`` resized to ``image_size`` are cached (the name changes
    with the files' paths, sizes and times)."""
    paths = [Path(data_dir) / "omniglot" / f for f in FILES]
    key = hashlib.sha256(
        "|".join(f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in paths).encode()
    ).hexdigest()[:16]
    return cache_dir() / f"omniglot_{image_size}_{key}.npz"


def load_characters(data_dir: Path, image_size: int = 28) -> tuple[np.ndarray, list[str], list[str]]:
    """All 1623 characters: images (1623, 20, size, size) uint8, names ``alphabet/character``, and the
    Lake set ("background"/"evaluation") each came from. Resized arrays are cached on disk."""
    root = Path(data_dir) / "omniglot"
    paths = [root / f for f in FILES]
    for p in paths:
        if not p.is_file():
            raise DataError(f"Omniglot not found in {root}. {MISSING_HELP}")
    cached = cache_path(data_dir, image_size)
    if cached.is_file():
        found = _read_cache(cached, image_size)
        if found is not None:
            return found
    images, names, sets = [], [], []
    for path, set_name in zip(paths, ("background", "evaluation")):
        d = _load_npz(path)
        n_chars = len(d["images"]) // 20
        # the resized images, then each split's four rotations of them (fastadapt.datasets.omniglot.rotated_classes)
        require_memory(
            5 * 2 * len(d["images"]) * image_size**2,
            f"Omniglot at --image-size {image_size}",
            "use a smaller --image-size (28 is the usual one)",
        )
        images.append(_resize(d["images"], image_size).reshape(n_chars, 20, image_size, image_size))
        names += [f"{a}/{c}" for a, c in zip(d["alphabet"][::20], d["character"][::20])]
        sets += [set_name] * n_chars
    all_images = np.concatenate(images)
    arrays = dict(images=all_images, names=np.array(names), sets=np.array(sets))
    arrays.update(format=np.array(CACHE_FORMAT), digest=np.array(_digest(**arrays)))
    try:
        atomic.write_with(cached, lambda f: np.savez(f, **arrays))
    except OutputError:
        pass  # a read-only or full cache only costs time
    return all_images, names, sets


def read_split_list(path: Path, names: list[str]) -> dict[str, list[int]]:
    """Character indices of train/val/test from a list of ``<part> <alphabet>/<character>`` lines (blank lines and
    lines starting with ``#`` skipped), each character once, every part listed."""
    index = {n: i for i, n in enumerate(names)}
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read the split list {path} ({type(error).__name__}); reinstall fastadapt.") from None
    out: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    seen: set[str] = set()
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) != 2 or fields[0] not in out:
            raise DataError(
                f"line {number} of the split list {path} is not `train|val|test <alphabet>/<character>`; "
                f"reinstall fastadapt."
            )
        part, name = fields
        if name not in index:
            raise DataError(
                f"Omniglot character {name} of the split list {path} is missing from the Omniglot files; fetch them "
                f"again with `fastadapt download omniglot` (or point --data-dir at a full copy, or choose another "
                f"--split)."
            )
        if name in seen:
            raise DataError(f"Omniglot character {name} is listed twice in the split list {path}; reinstall fastadapt.")
        seen.add(name)
        out[part].append(index[name])
    empty = [part for part, chars in out.items() if not chars]
    if empty:
        raise DataError(f"the split list {path} lists no {'/'.join(empty)} characters; reinstall fastadapt.")
    return out


def character_split(names: list[str], sets: list[str], split: str) -> dict[str, list[int]]:
    """Character indices of train/val/test for one of :data:`SPLITS`."""
    if split == "vinyals":
        return read_split_list(_SPLIT_LIST, names)
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
    raise ConfigError(f"unknown --split {split!r} for Omniglot; choose one of {', '.join(SPLITS)}.")


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
        raise ConfigError(f"unknown --split {split!r} for Omniglot; choose one of {', '.join(SPLITS)}.")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ConfigError(f"--image-size must be a positive number of pixels (got {image_size!r}).")
    images, names, sets = load_characters(data_dir, image_size)
    chars = character_split(names, sets, split)
    empty = [part for part, ix in chars.items() if not ix]
    if empty:
        raise DataError(
            f"images_background.npz and images_evaluation.npz in {Path(data_dir) / 'omniglot'} hold {len(names)} "
            f"Omniglot characters, which leave the "
            f"{'/'.join(empty)} part of the {split} split empty; fetch Omniglot again (`fastadapt download omniglot`)."
        )
    return {part: rotated_classes(images, names, ix, part) for part, ix in chars.items()}
