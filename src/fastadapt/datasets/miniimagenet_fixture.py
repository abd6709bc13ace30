"""Synthetic stand-ins for mini-ImageNet in each layout :mod:`fastadapt.datasets.miniimagenet` reads, for tests,
benchmarks and trying the pipeline without the real data (which is never needed or written here).

Every class gets its own colour and stripe orientation, and each image adds noise and a random offset, so a
few-shot learner has something learnable. Images are RGB uint8 of ``image_size`` squared (84 as in
mini-ImageNet); the image files are JPEGs, the pickles and HDF5 files hold the same arrays.
"""

from __future__ import annotations

import csv
import json
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

from fastadapt.datasets.miniimagenet import PARTS, standard_split

#: How each layout names its validation part.
_VAL_NAME = {"ravi": "val", "learn2learn": "validation", "torchmeta": "val", "folders": "val"}


def small_split(classes_per_part: int = 5) -> dict[str, list[str]]:
    """The first ``classes_per_part`` synsets of each part of the standard split (a subset: load it with
    ``split="as-found"``)."""
    return {part: names[:classes_per_part] for part, names in standard_split().items()}


def class_images(synset: str, count: int, image_size: int = 84, seed: int = 0) -> np.ndarray:
    """``count`` images of one synthetic class: uint8 (count, size, size, 3)."""
    digest = sum(ord(ch) * 31**i for i, ch in enumerate(synset)) % (2**32)
    rng = np.random.default_rng([seed, digest])
    colour = rng.uniform(40, 215, size=3).astype(np.float32)
    angle = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:image_size, 0:image_size].astype(np.float32) / image_size
    phase = rng.uniform(0, 2 * np.pi, size=(count, 1, 1)).astype(np.float32)
    stripes = np.sin(12 * (np.cos(angle) * xx + np.sin(angle) * yy) + phase)[..., None]  # (count, H, W, 1)
    noise = rng.standard_normal((count, image_size, image_size, 3), dtype=np.float32) * 12
    return np.clip(colour + 40 * stripes + noise, 0, 255).astype(np.uint8)


def _save_jpeg(path: Path, image: np.ndarray, quality: int) -> None:
    Image.fromarray(image).save(path, format="JPEG", quality=quality)


def write_fixture(
    root: str | Path,
    layout: str,
    classes: dict[str, list[str]] | None = None,
    per_class: int | dict[str, int] = 20,
    image_size: int = 84,
    seed: int = 0,
    quality: int = 90,
) -> Path:
    """Write a synthetic copy in ``layout`` ("ravi", "learn2learn", "torchmeta" or "folders") into ``root`` and
    return the folder holding it (``root`` itself; for torchmeta ``root/miniimagenet``, as torchmeta writes it).

    ``classes``: part -> synsets (default :func:`small_split`); ``per_class``: images per class, or a dict
    synset -> images for uneven classes (others get 20).
    """
    root = Path(root)
    classes = classes if classes is not None else small_split()
    counts = {
        name: (per_class.get(name, 20) if isinstance(per_class, dict) else per_class)
        for names in classes.values()
        for name in names
    }
    folder = root / "miniimagenet" if layout == "torchmeta" else root
    folder.mkdir(parents=True, exist_ok=True)
    if layout == "ravi":
        (folder / "images").mkdir(exist_ok=True)
    for part in PARTS:
        names = classes[part]
        arrays = {name: class_images(name, counts[name], image_size, seed) for name in names}
        if layout == "ravi":
            with open(folder / f"{part}.csv", "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["filename", "label"])
                for name in names:
                    for i, image in enumerate(arrays[name]):
                        filename = f"{name}{i + 1:08d}.jpg"
                        _save_jpeg(folder / "images" / filename, image, quality)
                        writer.writerow([filename, name])
        elif layout == "folders":
            for name in names:
                (folder / part / name).mkdir(parents=True, exist_ok=True)
                for i, image in enumerate(arrays[name]):
                    _save_jpeg(folder / part / name / f"{name}_{i:05d}.JPEG", image, quality)
        elif layout == "learn2learn":
            images = np.concatenate([arrays[n] for n in names]) if names else np.zeros((0, image_size, image_size, 3))
            starts = np.cumsum([0] + [counts[n] for n in names])
            class_dict = {n: list(range(starts[i], starts[i + 1])) for i, n in enumerate(names)}
            with open(folder / f"mini-imagenet-cache-{_VAL_NAME[layout] if part == 'val' else part}.pkl", "wb") as f:
                pickle.dump({"image_data": images.astype(np.uint8), "class_dict": class_dict}, f, protocol=4)
        elif layout == "torchmeta":
            import h5py

            with h5py.File(folder / f"{part}_data.hdf5", "w") as f:
                group = f.create_group("datasets")
                for name in names:
                    group.create_dataset(name, data=arrays[name])
            (folder / f"{part}_labels.json").write_text(json.dumps(sorted(names)))
        else:
            raise ValueError(f"unknown layout {layout!r}")
    return folder
