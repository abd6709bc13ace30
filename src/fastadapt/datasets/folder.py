"""Any folder of class sub-folders as few-shot classes: how users bring their own data.

Layout::

    root/
      cat/      img001.jpg img002.png ...
      dog/      ...
      zebra/    ...

Every non-hidden sub-folder of ``root`` is a class; the image files directly inside it (.png .jpg
.jpeg .bmp .gif .webp, any case; hidden files and other files ignored) are its examples. Images are
converted to grayscale (``channels=1``) or RGB (``channels=3``), resized to ``image_size`` squared with
antialiasing and stored as uint8 ``(n, C, H, W)``.

Classes are split into train/val/test either at random (seeded, by ``fractions``) or by a folder
holding ``train.txt``, ``val.txt`` and ``test.txt`` with one class name per line (blank lines and
``#`` comments ignored; classes listed in no file are left out).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from fastadapt.errors import ConfigError, DataError
from fastadapt.options import require_memory
from fastadapt.tasks.samplers import ClassSplit

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
PARTS = ("train", "val", "test")

LAYOUT_HELP = (
    "Lay it out as one sub-folder per class with the images inside, e.g. root/cat/1.jpg, "
    "root/dog/1.jpg (at least 3 classes)."
)


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def list_classes(root: Path) -> dict[str, list[Path]]:
    """Class name -> sorted image files, for every non-hidden sub-folder of ``root`` (sorted)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}. {LAYOUT_HELP}")
    class_dirs = sorted((p for p in root.iterdir() if p.is_dir() and _visible(p)), key=lambda p: p.name)
    if not class_dirs:
        raise DataError(f"image folder {root} has no class sub-folders. {LAYOUT_HELP}")
    classes = {}
    for d in class_dirs:
        files = sorted(
            (p for p in d.iterdir() if p.is_file() and _visible(p) and p.suffix.lower() in IMAGE_SUFFIXES),
            key=lambda p: p.name,
        )
        if not files:
            raise DataError(
                f"class folder {d} holds no images ({' '.join(IMAGE_SUFFIXES)}); add images to it or remove the folder."
            )
        classes[d.name] = files
    return classes


def _load_image(path: Path, image_size: int, mode: str) -> np.ndarray:
    """One image file -> uint8 (H, W) or (H, W, 3) array of ``image_size`` squared."""
    try:
        with warnings.catch_warnings():
            # Pillow warns about palette transparency and about images of 89 to 179 million pixels; both are read
            # as they are. Larger images raise DecompressionBombError, refused below.
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                im.load()
                im = ImageOps.exif_transpose(im)
                im = im.convert(mode).resize((image_size, image_size), Image.BILINEAR)
                return np.asarray(im, dtype=np.uint8)
    except Image.DecompressionBombError:
        raise DataError(
            f"image {path} has more pixels than Pillow reads safely (about 179 million); shrink or remove it."
        ) from None
    except Exception as exc:  # Pillow raises many types on damaged or unusual files; all mean the same here
        raise DataError(
            f"cannot read image {path} ({type(exc).__name__}: {str(exc)[:120]}); remove or replace the file."
        ) from None


def random_class_split(
    names: list[str], seed: int = 0, fractions: tuple[float, float, float] = (0.64, 0.16, 0.20)
) -> dict[str, list[str]]:
    """Seeded split of ``names`` into train/val/test by ``fractions``; every split gets a class."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not np.isclose(sum(fractions), 1.0):
        raise ConfigError(
            f"split fractions must be three non-negative numbers (train, val, test) summing to 1 "
            f"(got {tuple(fractions)})."
        )
    n = len(names)
    if n < 3:
        raise DataError(
            f"found {n} class{'es' if n != 1 else ''} ({', '.join(names)}) but a train/val/test split "
            f"needs at least 3; add more class sub-folders."
        )
    n_val = max(1, round(n * fractions[1]))
    n_test = max(1, round(n * fractions[2]))
    while n - n_val - n_test < 1:  # keep at least one training class
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    order = [sorted(names)[i] for i in np.random.default_rng(seed).permutation(n)]
    n_train = n - n_val - n_test
    return {
        "train": sorted(order[:n_train]),
        "val": sorted(order[n_train : n_train + n_val]),
        "test": sorted(order[n_train + n_val :]),
    }


def read_split_files(split_dir: Path, names: list[str]) -> dict[str, list[str]]:
    """Class names of ``train.txt``, ``val.txt`` and ``test.txt`` in ``split_dir``, checked against
    ``names``: unknown names, names listed twice and empty files are errors."""
    split_dir = Path(split_dir).expanduser()
    if not split_dir.is_dir():
        raise DataError(
            f"split folder not found: {split_dir}. It should hold train.txt, val.txt and test.txt "
            f"with one class name per line."
        )
    known = set(names)
    seen: dict[str, Path] = {}
    out: dict[str, list[str]] = {}
    for part in PARTS:
        path = split_dir / f"{part}.txt"
        if not path.is_file():
            raise DataError(
                f"split file {path} is missing (--split names its folder); write one class name per line into it."
            )
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise DataError(
                f"cannot read split file {path} ({type(error).__name__}); write it as UTF-8 text, one class name per "
                f"line."
            ) from None
        listed = []
        for line in text.splitlines():
            name = line.split("#", 1)[0].strip()
            if not name:
                continue
            if name not in known:
                raise DataError(
                    f"class {name!r} listed in {path} has no sub-folder in the image folder; "
                    f"fix the name or add the folder."
                )
            if name in seen:
                raise DataError(
                    f"class {name!r} is listed in both {seen[name]} and {path}; a class may be in only one split."
                )
            seen[name] = path
            listed.append(name)
        if not listed:
            raise DataError(f"split file {path} lists no classes; add at least one class name.")
        out[part] = sorted(listed)
    return out


def build_split(
    name: str, classes: dict[str, list[Path]], class_names: list[str], image_size: int, channels: int
) -> ClassSplit:
    """Load the images of ``class_names`` into one uint8 :class:`ClassSplit`."""
    mode = "L" if channels == 1 else "RGB"
    counts = [len(classes[c]) for c in class_names]
    require_memory(
        2 * sum(counts) * image_size**2 * channels,
        f"the {name} images at --image-size {image_size}",
        "use a smaller --image-size",
    )
    images = np.empty((sum(counts), image_size, image_size, channels), dtype=np.uint8)
    indices, row = [], 0
    for c, count in zip(class_names, counts, strict=True):
        for path in classes[c]:
            images[row] = _load_image(path, image_size, mode).reshape(image_size, image_size, channels)
            row += 1
        indices.append(np.arange(row - count, row))
    tensor = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    return ClassSplit(name, tensor, indices, list(class_names))


def load_image_folder(
    root: Path,
    image_size: int = 28,
    channels: int = 1,
    split: str | Path | None = None,
    split_seed: int = 0,
    fractions: tuple[float, float, float] = (0.64, 0.16, 0.20),
) -> dict[str, ClassSplit]:
    """Train/val/test :class:`ClassSplit` of a folder of class sub-folders (see the module docstring).

    ``split``: a folder with ``train.txt``/``val.txt``/``test.txt``; otherwise the classes are split
    at random by ``fractions`` with ``split_seed``.
    """
    if channels not in (1, 3) or isinstance(channels, bool):
        raise ConfigError(f"--channels must be 1 (grayscale) or 3 (RGB), got {channels!r}.")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ConfigError(f"--image-size must be a positive number of pixels, got {image_size!r}.")
    classes = list_classes(root)
    names = list(classes)
    if split is None and len(names) < 3:
        raise DataError(
            f"image folder {root} has {len(names)} class sub-folder{'s' if len(names) != 1 else ''} "
            f"({', '.join(names)}) but a train/val/test split needs at least 3; add more class sub-folders."
        )
    if split is not None and not str(split):
        raise ConfigError("--split '' names no folder; pass the folder holding train.txt, val.txt and test.txt.")
    if split is None:
        parts = random_class_split(names, split_seed, fractions)
    else:
        parts = read_split_files(Path(split), names)
    return {part: build_split(part, classes, parts[part], image_size, channels) for part in PARTS}
