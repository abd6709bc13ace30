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

When ``channels`` or ``image_size`` is not given, :func:`detect_format` chooses it from a sample of the images
(up to 4 per class, at most 256): RGB when any sampled image has colour (its channels differ by more than
2 grey levels on average: a grayscale image stored as RGB or JPEG stays below that), grayscale otherwise; the
size is the median shorter side of the sampled images, capped at 84 (mini-ImageNet's size, for which the
field's Conv-4 and ResNet-12 are built) and raised to at least 16 (Conv-4 halves the image four times).

Classes are split into train/val/test either at random (seeded, by ``fractions``) or by a folder
holding ``train.txt``, ``val.txt`` and ``test.txt`` with one class name per line (blank lines and
``#`` comments ignored; classes listed in no file are left out).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from fastadapt.errors import ConfigError, DataError
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


#: Bounds of the size chosen from the images, and how the sample is drawn (see the module docstring).
MAX_AUTO_SIZE, MIN_AUTO_SIZE = 84, 16
SAMPLES_PER_CLASS, MAX_SAMPLES = 4, 256
#: Mean absolute difference between colour channels, in grey levels, above which an image has colour.
COLOUR_LEVELS = 2.0
_GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})


@dataclass(frozen=True)
class FolderFormat:
    """The channels and square size a folder's images are loaded at, and a line saying why (for the log)."""

    channels: int
    image_size: int
    description: str


def _sample(classes: dict[str, list[Path]]) -> list[Path]:
    per_class = max(1, min(SAMPLES_PER_CLASS, MAX_SAMPLES // max(1, len(classes))))
    return [p for files in classes.values() for p in files[:per_class]][:MAX_SAMPLES]


def _has_colour(im: Image.Image) -> bool:
    if im.mode in _GRAY_MODES:
        return False
    im.draft("RGB", (64, 64))  # JPEG: decode at a reduced scale, enough to see colour
    rgb = im.convert("RGB")
    rgb.thumbnail((64, 64))
    pixels = np.asarray(rgb, dtype=np.int16)
    spread = np.abs(pixels[..., 0] - pixels[..., 1]) + np.abs(pixels[..., 1] - pixels[..., 2])
    return float(spread.mean()) / 2 > COLOUR_LEVELS


def detect_format(
    root: Path, image_size: int | None = None, channels: int | None = None, classes: dict[str, list[Path]] | None = None
) -> FolderFormat:
    """Channels and size for the images in ``root`` (given values are kept; the rule is in the module
    docstring), with a one-line description for the log."""
    classes = classes if classes is not None else list_classes(root)
    sample = _sample(classes) if image_size is None or channels is None else []
    coloured, shorter = 0, []
    for path in sample:
        try:
            with Image.open(path) as im:
                shorter.append(min(im.size))  # a 90-degree EXIF rotation keeps the shorter side
                coloured += channels is None and _has_colour(im)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise DataError(
                f"cannot read image {path} ({type(exc).__name__}: {exc}); remove or replace the file."
            ) from exc
    if channels is None:
        channels = 3 if coloured else 1
        why_channels = (
            f"colour in {coloured} of {len(sample)} sampled images"
            if coloured
            else f"no colour in {len(sample)} sampled images"
        )
    else:
        why_channels = f"--channels {channels}"
    if image_size is None:
        median = int(np.median(shorter))
        image_size = min(MAX_AUTO_SIZE, max(MIN_AUTO_SIZE, median))
        bound = (
            f", capped at {MAX_AUTO_SIZE}"
            if median > MAX_AUTO_SIZE
            else f", raised to {MIN_AUTO_SIZE}"
            if median < MIN_AUTO_SIZE
            else ""
        )
        why_size = f"median shorter side {median} px{bound}"
    else:
        why_size = f"--image-size {image_size}"
    kind = "RGB" if channels == 3 else "grayscale"
    description = (
        f"{root}: {len(classes)} classes, loaded as {kind} {image_size}x{image_size} ({why_channels}; {why_size}); "
        f"--channels and --image-size override"
    )
    return FolderFormat(channels, image_size, description)


def _load_image(path: Path, image_size: int, mode: str) -> np.ndarray:
    """One image file -> uint8 (H, W) or (H, W, 3) array of ``image_size`` squared."""
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            im = im.convert(mode).resize((image_size, image_size), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image {path} ({type(exc).__name__}: {exc}); remove or replace the file.") from exc


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
            raise DataError(f"split file {path} is missing; write one class name per line into it.")
        listed = []
        for line in path.read_text(encoding="utf-8").splitlines():
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
    image_size: int | None = None,
    channels: int | None = None,
    split: str | Path | None = None,
    split_seed: int = 0,
    fractions: tuple[float, float, float] = (0.64, 0.16, 0.20),
) -> dict[str, ClassSplit]:
    """Train/val/test :class:`ClassSplit` of a folder of class sub-folders (see the module docstring).

    ``split``: a folder with ``train.txt``/``val.txt``/``test.txt``; otherwise the classes are split
    at random by ``fractions`` with ``split_seed``. ``image_size``/``channels`` None: chosen from the images
    (:func:`detect_format`).
    """
    if channels is not None and channels not in (1, 3):
        raise ConfigError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}.")
    if image_size is not None and image_size < 1:
        raise ConfigError(f"image_size must be a positive number of pixels, got {image_size}.")
    classes = list_classes(root)
    if image_size is None or channels is None:
        chosen = detect_format(root, image_size, channels, classes)
        image_size, channels = chosen.image_size, chosen.channels
    names = list(classes)
    if split is None:
        parts = random_class_split(names, split_seed, fractions)
    else:
        parts = read_split_files(Path(split), names)
    return {part: build_split(part, classes, parts[part], image_size, channels) for part in PARTS}
