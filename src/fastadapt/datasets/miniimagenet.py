"""mini-ImageNet (Vinyals et al. 2016) with the class split of Ravi & Larochelle (2017): 100 ImageNet classes,
600 colour images of 84x84 each, 64 classes for meta-training, 16 for validation, 20 for testing.

There is no stable public download (the copies live on Google Drive, behind quota limits), so users arrive
with one of the copies the meta-learning libraries made. All four are read, from ``--data-dir`` pointing at
the folder that holds one of them, or at a data directory holding ``mini-imagenet/``:

- ``ravi``: Ravi & Larochelle's ``images/*.jpg`` plus ``train.csv``, ``val.csv``, ``test.csv`` (header
  ``filename,label``; the label is the class's synset id);
- ``learn2learn``: ``mini-imagenet-cache-{train,validation,test}.pkl`` (``val`` is accepted for
  ``validation``), each a pickled dict with ``image_data`` (N, 84, 84, 3) uint8 and ``class_dict`` (synset id ->
  row indices). They are read with the restricted unpickler of :mod:`fastadapt.datasets.embeddings`, which
  admits numpy arrays and plain containers only, so a pickle that would run code is refused;
- ``torchmeta``: ``{train,val,test}_data.hdf5`` (a group ``datasets`` with one (n, 84, 84, 3) uint8 data set per
  class) plus ``{train,val,test}_labels.json`` (the class names), in the folder or in its ``miniimagenet/``
  sub-folder; needs ``h5py`` (``pip install 'fastadapt[hdf5]'``);
- ``folders``: ``train/<synset>/*.jpg``, ``val/<synset>/*.jpg`` (or ``validation/``), ``test/<synset>/*.jpg``.

The classes found are checked against the standard split, shipped in ``splits/miniimagenet_ravi.txt`` (from
the ``label`` column of Ravi & Larochelle's CSV files, github.com/twitter-research/meta-learning-lstm,
``data/miniImagenet``): with ``split="ravi"`` (the default) a copy whose classes differ is refused with one
line saying what differs; ``split="as-found"`` uses the copy's own parts as they are.

Images are decoded once into a cache of uint8 (N, 3, size, size) arrays, one ``.npy`` per part, that is then
memory-mapped, so sampling episodes copies rows and decodes nothing. The cache lives under
``$FASTADAPT_CACHE/mini-imagenet/`` (default ``~/.cache/fastadapt``), is keyed by the layout, the image size
and the path, size and modification time of every source file (a changed source is decoded again, and the
cache it replaces is removed), and is written to a temporary folder renamed into place when complete.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from fastadapt.datasets.paths import cache_dir, resolve_data_dir
from fastadapt.errors import ConfigError, DataError
from fastadapt.tasks.samplers import ClassSplit

PARTS = ("train", "val", "test")
IMAGE_SIZE = 84
SPLITS = ("ravi", "as-found")
#: Folder names under a data directory where a copy is looked for (the first is the documented one).
FOLDER_NAMES = ("mini-imagenet", "miniimagenet", "mini_imagenet", "miniImagenet", "miniImageNet")
LAYOUTS = {
    "ravi": "Ravi & Larochelle's images/ with train.csv, val.csv, test.csv",
    "learn2learn": "learn2learn's mini-imagenet-cache-{train,validation,test}.pkl",
    "torchmeta": "torchmeta's {train,val,test}_data.hdf5 with {train,val,test}_labels.json",
    "folders": "class folders train/<class>/, val/<class>/, test/<class>/",
}
LAYOUT_HELP = (
    "put a copy in <data-dir>/mini-imagenet/ (or point --data-dir at it) in one of these layouts: "
    + "; ".join(LAYOUTS.values())
    + " (docs/data.md)"
)
NO_DOWNLOAD = (
    "mini-ImageNet has no stable public download (its copies are on Google Drive, behind quota limits), so "
    "fastadapt cannot fetch it; " + LAYOUT_HELP + "."
)
_SPLIT_LIST = Path(__file__).with_name("splits") / "miniimagenet_ravi.txt"
_CACHE_FORMAT = 1
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
#: learn2learn's pickles name the validation part "validation"; Ren et al.'s (read by torchmeta) "val".
_PICKLE_PART_NAMES = {"train": ("train",), "val": ("validation", "val"), "test": ("test",)}
_FOLDER_PART_NAMES = {"train": ("train",), "val": ("val", "validation"), "test": ("test",)}


@dataclass
class SourcedClassSplit(ClassSplit):
    """A :class:`ClassSplit` that knows where each class's images came from (for messages that name files)."""

    class_sources: list[str] = field(default_factory=list)


def standard_split() -> dict[str, list[str]]:
    """Ravi & Larochelle's class lists: part -> synset ids (64 / 16 / 20)."""
    out: dict[str, list[str]] = {part: [] for part in PARTS}
    for line in _SPLIT_LIST.read_text().splitlines():
        if line and not line.startswith("#"):
            part, synset = line.split()
            out[part].append(synset)
    return out


# --------------------------------------------------------------------------------------------------------------
# Finding a copy


def _has_class_folders(folder: Path) -> bool:
    return folder.is_dir() and any(p.is_dir() and not p.name.startswith(".") for p in folder.iterdir())


def layout_in(folder: Path) -> str | None:
    """The layout held directly in ``folder`` (one of :data:`LAYOUTS`), or None."""
    if not folder.is_dir():
        return None
    if (folder / "images").is_dir() and any((folder / f"{p}.csv").is_file() for p in PARTS):
        return "ravi"
    if any(folder.glob("mini-imagenet-cache-*.pkl")):
        return "learn2learn"
    if any((folder / f"{p}_data.hdf5").is_file() or (folder / f"{p}_labels.json").is_file() for p in PARTS):
        return "torchmeta"
    if any(_has_class_folders(folder / name) for names in _FOLDER_PART_NAMES.values() for name in names):
        return "folders"
    return None


def locate(data_dir: str | os.PathLike | None = None) -> tuple[str, Path]:
    """(layout, folder) of the copy that ``data_dir`` points at, or that a data directory holds in one of
    :data:`FOLDER_NAMES` (``data_dir`` None: ``$FASTADAPT_DATA`` or ``shared/data``, as for Omniglot)."""
    root = resolve_data_dir(data_dir)
    candidates = [root, *(root / name for name in FOLDER_NAMES)]
    candidates += [c / "miniimagenet" for c in list(candidates)]  # torchmeta keeps its files in miniimagenet/
    for folder in candidates:
        layout = layout_in(folder)
        if layout is not None:
            return layout, folder
    raise DataError(f"no mini-ImageNet found in {root}; {LAYOUT_HELP}.")


# --------------------------------------------------------------------------------------------------------------
# One part of a copy: its classes and how to decode them


@dataclass
class _Part:
    """The files of one part (train, val or test) of a copy and, once read, its classes."""

    part: str
    origin: Path  # the file or folder the part comes from
    sources: list[Path]  # every file whose change means decoding again
    class_names: list[str] = field(default_factory=list)
    class_sources: list[str] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    #: (class index, size, thread pool or None) -> that class's images as uint8 (n, size, size, 3)
    read_class: Callable[..., np.ndarray] | None = None


def _decode_image(path: Path, size: int) -> np.ndarray:
    """One image file -> uint8 (size, size, 3) RGB."""
    try:
        with Image.open(path) as im:
            im.load()  # a truncated or corrupt file fails here rather than as grey pixels
            if im.mode != "RGB":
                im = im.convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(
            f"cannot decode {path} ({type(exc).__name__}: {exc}); replace it with an intact copy from your "
            f"mini-ImageNet source."
        ) from exc


def _resize_array(images: np.ndarray, size: int) -> np.ndarray:
    if images.shape[1:3] == (size, size):
        return images
    return np.stack([np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR)) for img in images])


def _decode_files(paths: list[Path], size: int, pool: ThreadPoolExecutor | None) -> np.ndarray:
    """Decode ``paths`` in order (in threads: PIL releases the GIL while it decodes)."""
    decoded = pool.map(_decode_image, paths, [size] * len(paths)) if pool else (_decode_image(p, size) for p in paths)
    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    for i, img in enumerate(decoded):
        out[i] = img
    return out


def _missing_part(folder: Path, layout: str, wanted: str) -> DataError:
    return DataError(f"{wanted} is missing: the {LAYOUTS[layout]} layout in {folder} needs it; {_FIX[layout]}")


_FIX = {
    "ravi": (
        "the CSV files are public at github.com/twitter-research/meta-learning-lstm (data/miniImagenet/); "
        "put the missing one beside images/."
    ),
    "learn2learn": "copy the missing pickle from the same source as the others.",
    "torchmeta": "copy the missing file from the same source as the others (torchmeta writes both per split).",
    "folders": "add the missing split folder with one sub-folder of images per class.",
}


def _scan_ravi(folder: Path, part: str) -> _Part:
    csv_path = folder / f"{part}.csv"
    if not csv_path.is_file():
        raise _missing_part(folder, "ravi", str(csv_path))
    images_dir = folder / "images"
    by_class: dict[str, list[Path]] = {}
    try:
        with open(csv_path, newline="") as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            if header[:2] != ["filename", "label"]:
                raise DataError(
                    f"{csv_path} does not start with the header filename,label; it is not one of Ravi & "
                    f"Larochelle's split files: get it again from github.com/twitter-research/meta-learning-lstm."
                )
            for line, row in enumerate(reader, start=2):
                if not row:
                    continue
                if len(row) < 2 or not row[0].strip() or not row[1].strip():
                    raise DataError(f"{csv_path} line {line} is not 'filename,label'; fix or remove that line.")
                by_class.setdefault(row[1].strip(), []).append(images_dir / row[0].strip())
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read {csv_path} ({exc}); get it again.") from exc
    if not by_class:
        raise DataError(
            f"{csv_path} lists no images; get it again from github.com/twitter-research/meta-learning-lstm."
        )
    names = sorted(by_class)
    files = [p for name in names for p in by_class[name]]
    for p in files:
        if not p.is_file():
            raise DataError(
                f"{p} (listed in {csv_path}) is missing; restore it from your mini-ImageNet copy, or remove its line."
            )
    part_files = _Part(part, csv_path, [csv_path, *files])
    _set_file_classes(
        part_files, names, [by_class[n] for n in names], [f"{images_dir} (via {csv_path.name})"] * len(names)
    )
    return part_files


def _scan_folders(folder: Path, part: str) -> _Part:
    for name in _FOLDER_PART_NAMES[part]:
        if (folder / name).is_dir():
            part_dir = folder / name
            break
    else:
        raise _missing_part(folder, "folders", str(folder / _FOLDER_PART_NAMES[part][0]) + "/")
    class_dirs = sorted(
        (p for p in part_dir.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name
    )
    if not class_dirs:
        raise DataError(f"{part_dir} has no class sub-folders; put one folder of images per class in it.")
    classes = []
    for d in class_dirs:
        files = sorted(
            (
                p
                for p in d.iterdir()
                if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in _IMAGE_SUFFIXES
            ),
            key=lambda p: p.name,
        )
        if not files:
            raise DataError(f"class folder {d} holds no images; add its images or remove the folder.")
        classes.append(files)
    part_files = _Part(part, part_dir, [p for files in classes for p in files])
    _set_file_classes(part_files, [d.name for d in class_dirs], classes, [str(d) for d in class_dirs])
    return part_files


def _set_file_classes(part: _Part, names: list[str], files: list[list[Path]], sources: list[str]) -> None:
    part.class_names, part.class_sources, part.counts = names, sources, [len(f) for f in files]
    part.read_class = lambda c, size, pool=None: _decode_files(files[c], size, pool)


def _scan_pickle(folder: Path, part: str) -> _Part:
    for name in _PICKLE_PART_NAMES[part]:
        path = folder / f"mini-imagenet-cache-{name}.pkl"
        if path.is_file():
            return _Part(part, path, [path])
    raise _missing_part(folder, "learn2learn", str(folder / f"mini-imagenet-cache-{_PICKLE_PART_NAMES[part][0]}.pkl"))


def _open_pickle(part: _Part) -> None:
    from fastadapt.datasets.embeddings import safe_load_pickle

    path = part.origin
    data = safe_load_pickle(path)
    if not isinstance(data, dict) or "image_data" not in data or "class_dict" not in data:
        raise DataError(
            f"{path}: expected a dict with 'image_data' and 'class_dict' (learn2learn's mini-ImageNet pickle); "
            f"get the file again."
        )
    images, class_dict = np.asarray(data["image_data"]), data["class_dict"]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise DataError(f"{path}: image_data is {images.dtype} {images.shape}, not uint8 (N, H, W, 3); get it again.")
    if not isinstance(class_dict, dict) or not class_dict:
        raise DataError(f"{path}: class_dict is not a non-empty dict of class -> image rows; get it again.")
    names = sorted(str(k) for k in class_dict)
    rows = {str(k): np.asarray(v, dtype=np.int64).reshape(-1) for k, v in class_dict.items()}
    for name in names:
        if len(rows[name]) and (rows[name].min() < 0 or rows[name].max() >= len(images)):
            raise DataError(f"{path}: class {name} lists rows beyond the {len(images)} images; get the file again.")
    part.class_names, part.counts = names, [len(rows[n]) for n in names]
    part.class_sources = [f"{path} (class_dict[{n!r}])" for n in names]
    part.read_class = lambda c, size, pool=None: _resize_array(images[rows[names[c]]], size)


def _h5py():
    try:
        import h5py
    except ImportError:
        raise DataError(
            "reading torchmeta's mini-ImageNet HDF5 files needs h5py: pip install 'fastadapt[hdf5]' (or h5py)."
        ) from None
    return h5py


def _scan_torchmeta(folder: Path, part: str) -> _Part:
    data, labels = folder / f"{part}_data.hdf5", folder / f"{part}_labels.json"
    for path in (data, labels):
        if not path.is_file():
            raise _missing_part(folder, "torchmeta", str(path))
    return _Part(part, data, [data, labels])


def _open_torchmeta(part: _Part) -> None:
    h5py = _h5py()
    data, labels_path = part.sources
    try:
        names = json.loads(labels_path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {labels_path} ({exc}); copy it again (a JSON list of class names).") from exc
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise DataError(f"{labels_path} is not a JSON list of class names; copy it again.")
    try:
        with h5py.File(data, "r") as f:
            group = f["datasets"]
            shapes = {}
            for name in names:
                if name not in group:
                    raise DataError(f"{data} has no images for class {name} (listed in {labels_path}); copy it again.")
                shapes[name] = group[name].shape
    except (OSError, KeyError) as exc:
        raise DataError(
            f"{data} is not a readable HDF5 file of torchmeta's layout ({type(exc).__name__}: {exc}); it is "
            f"truncated or corrupt: copy it again."
        ) from exc
    for name, shape in shapes.items():
        if len(shape) != 4 or shape[3] != 3:
            raise DataError(f"{data}: class {name} holds {shape} arrays, not (n, H, W, 3) images; copy it again.")
    names = sorted(names)

    def read_class(c: int, size: int, pool: Any = None) -> np.ndarray:
        try:
            with h5py.File(data, "r") as f:
                images = np.asarray(f["datasets"][names[c]][()], dtype=np.uint8)
        except (OSError, KeyError) as exc:
            raise DataError(
                f"cannot read class {names[c]} from {data} ({type(exc).__name__}: {exc}); the file is truncated or "
                f"corrupt: copy it again."
            ) from exc
        return _resize_array(images, size)

    part.class_names, part.counts = names, [shapes[n][0] for n in names]
    part.class_sources = [f"{data} (datasets/{n})" for n in names]
    part.read_class = read_class


_SCANNERS = {"ravi": _scan_ravi, "learn2learn": _scan_pickle, "torchmeta": _scan_torchmeta, "folders": _scan_folders}
_OPENERS = {"learn2learn": _open_pickle, "torchmeta": _open_torchmeta}


def _scan(layout: str, folder: Path) -> dict[str, _Part]:
    return {part: _SCANNERS[layout](folder, part) for part in PARTS}


def _open(layout: str, part: _Part) -> _Part:
    """Fill in the classes of a part whose layout must be read to know them (pickles, HDF5)."""
    if part.read_class is None:
        _OPENERS[layout](part)
    return part


# --------------------------------------------------------------------------------------------------------------
# The standard split


def split_differences(found: dict[str, list[str]]) -> list[str]:
    """How the classes of each part differ from Ravi & Larochelle's split; empty when they match."""
    standard = standard_split()
    home = {synset: part for part, names in standard.items() for synset in names}
    problems = []
    for part in PARTS:
        have, want = set(found[part]), set(standard[part])
        missing = sorted(want - have)
        misplaced = sorted(n for n in have - want if n in home)
        unknown = sorted(n for n in have - want if n not in home)
        if missing:
            problems.append(f"{part} lacks {len(missing)} of its {len(want)} classes ({_examples(missing)})")
        if misplaced:
            where = ", ".join(f"{n} belongs to {home[n]}" for n in misplaced[:3])
            problems.append(f"{part} holds {len(misplaced)} class(es) of another part ({where})")
        if unknown:
            problems.append(f"{part} holds {len(unknown)} class(es) outside the split ({_examples(unknown)})")
    return problems


def _examples(names: list[str], most: int = 3) -> str:
    return ", ".join(names[:most]) + (", ..." if len(names) > most else "")


def check_standard_split(found: dict[str, list[str]], where: str) -> None:
    """Refuse a copy whose classes are not Ravi & Larochelle's 64 / 16 / 20, saying what differs."""
    problems = split_differences(found)
    if problems:
        raise DataError(
            f"the mini-ImageNet copy in {where} does not have Ravi & Larochelle's 64/16/20 class split: "
            f"{'; '.join(problems)}. Complete the copy, or pass --split as-found to use its classes as they are "
            f"(results are then not comparable with published ones)."
        )


# --------------------------------------------------------------------------------------------------------------
# The decoded-image cache


def _cache_key(layout: str, folder: Path, parts: dict[str, _Part], image_size: int) -> tuple[str, str]:
    """(prefix naming the copy and size, full key that also covers every source file's size and mtime)."""
    where = hashlib.sha256(f"{layout}|{folder.resolve()}".encode()).hexdigest()[:12]
    stamp = hashlib.sha256(f"{_CACHE_FORMAT}".encode())
    for part in PARTS:
        for path in parts[part].sources:
            st = path.stat()
            stamp.update(f"{part}|{path}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    prefix = f"{layout}-{where}-{image_size}px"
    return prefix, f"{prefix}-{stamp.hexdigest()[:16]}"


def _load_cached(entry: Path) -> dict[str, SourcedClassSplit] | None:
    """The splits of a complete cache entry, memory-mapped; None when it is absent or unreadable."""
    try:
        meta = json.loads((entry / "meta.json").read_text())
        if meta.get("format") != _CACHE_FORMAT:
            return None
        out = {}
        for part in PARTS:
            info = meta["parts"][part]
            # copy-on-write: torch needs a writable array, and nothing is ever written back to the file
            images = np.load(entry / f"{part}.npy", mmap_mode="c")
            if images.dtype != np.uint8 or len(images) != sum(info["counts"]):
                return None
            out[part] = _as_split(part, images, info["class_names"], info["class_sources"], info["counts"])
        return out
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _as_split(
    part: str, images: np.ndarray, names: list[str], sources: list[str], counts: list[int]
) -> SourcedClassSplit:
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    indices = [np.arange(starts[c], starts[c + 1]) for c in range(len(names))]
    return SourcedClassSplit(part, torch.from_numpy(images), indices, list(names), class_sources=list(sources))


def _decode_part(layout: str, part: _Part, image_size: int, out: Callable[[int], np.ndarray], progress: bool) -> None:
    """Decode every class of ``part`` into the (N, 3, size, size) array ``out(total)`` returns."""
    _open(layout, part)
    images = out(sum(part.counts))
    bar = _bar(sum(part.counts), f"decoding mini-ImageNet {part.part}", progress)
    workers = min(8, os.cpu_count() or 1)
    row = 0
    with ThreadPoolExecutor(workers) if workers > 1 else _no_pool() as pool:
        for c, count in enumerate(part.counts):
            block = part.read_class(c, image_size, pool)
            images[row : row + count] = block.transpose(0, 3, 1, 2)
            row += count
            if bar is not None:
                bar.update(count)
    if bar is not None:
        bar.close()


class _no_pool:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def _bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", leave=False)


def _build_cache(
    layout: str, folder: Path, parts: dict[str, _Part], image_size: int, prefix: str, key: str, progress: bool
) -> dict[str, SourcedClassSplit]:
    """Decode every part into ``cache_dir()/mini-imagenet/<key>/`` (written in a temporary folder, then
    renamed) and return it memory-mapped; in memory when the cache folder cannot be written."""
    root = cache_dir() / "mini-imagenet"
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{key}."))
    except OSError:
        return _decode_in_memory(layout, parts, image_size, progress)
    try:
        meta: dict[str, Any] = {"format": _CACHE_FORMAT, "layout": layout, "folder": str(folder), "parts": {}}
        for name in PARTS:
            part = parts[name]
            path = tmp / f"{name}.npy"
            arrays: list[np.memmap] = []

            def out(total: int, path: Path = path, arrays: list = arrays) -> np.ndarray:
                shape = (total, 3, image_size, image_size)
                arrays.append(np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape))
                return arrays[0]

            _decode_part(layout, part, image_size, out, progress)
            arrays[0].flush()
            del arrays[:]
            meta["parts"][name] = {
                "class_names": part.class_names,
                "class_sources": part.class_sources,
                "counts": part.counts,
            }
        (tmp / "meta.json").write_text(json.dumps(meta))
        entry = root / key
        try:
            os.rename(tmp, entry)
        except OSError:  # another process finished the same entry first: use theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in root.glob(f"{prefix}-*"):  # caches of earlier versions of the same copy
        if old.name != key:
            shutil.rmtree(old, ignore_errors=True)
    splits = _load_cached(entry)
    if splits is None:
        raise DataError(f"the mini-ImageNet cache {entry} could not be read back; delete it and run again.")
    return splits


def _decode_in_memory(
    layout: str, parts: dict[str, _Part], image_size: int, progress: bool
) -> dict[str, SourcedClassSplit]:
    out = {}
    for name in PARTS:
        holder: list[np.ndarray] = []

        def alloc(total: int, holder: list = holder) -> np.ndarray:
            holder.append(np.empty((total, 3, image_size, image_size), dtype=np.uint8))
            return holder[0]

        _decode_part(layout, parts[name], image_size, alloc, progress)
        p = parts[name]
        out[name] = _as_split(name, holder[0], p.class_names, p.class_sources, p.counts)
    return out


# --------------------------------------------------------------------------------------------------------------
# Public entry points


def load_miniimagenet(
    data_dir: str | os.PathLike | None = None,
    split: str = "ravi",
    image_size: int = IMAGE_SIZE,
    channels: int = 3,
    progress: bool = False,
) -> dict[str, SourcedClassSplit]:
    """Train/val/test :class:`ClassSplit` of mini-ImageNet (uint8 (N, 3, size, size), memory-mapped from the
    decoded-image cache), from any of the four layouts (see the module docstring).

    ``split``: "ravi" checks the classes against Ravi & Larochelle's split; "as-found" takes the copy's parts
    as they are. ``image_size``: images are resized to it when decoded (84, their size, keeps them as they are).
    """
    if split not in SPLITS:
        raise ConfigError(f"unknown mini-ImageNet split {split!r}; choose one of {', '.join(SPLITS)}.")
    if channels != 3:
        raise ConfigError(f"mini-ImageNet is in colour: use --channels 3 (got {channels}).")
    if image_size < 1:
        raise ConfigError(f"--image-size must be a positive number of pixels (got {image_size}).")
    layout, folder = locate(data_dir)
    parts = _scan(layout, folder)
    prefix, key = _cache_key(layout, folder, parts, image_size)
    splits = _load_cached(cache_dir() / "mini-imagenet" / key)
    if splits is None:
        if split == "ravi":  # refuse a wrong copy before spending minutes decoding it
            check_standard_split({p: _open(layout, parts[p]).class_names for p in PARTS}, str(folder))
        splits = _build_cache(layout, folder, parts, image_size, prefix, key, progress)
    elif split == "ravi":
        check_standard_split({p: s.class_names for p, s in splits.items()}, str(folder))
    return splits


def check_class_sizes(split: ClassSplit, shots: int, query: int) -> None:
    """Refuse a split with a class of fewer than ``shots + query`` images, naming the class and where its images
    are (the episode sampler's own message names only the class)."""
    needed = shots + query
    small = [c for c, ix in enumerate(split.class_indices) if len(ix) < needed]
    if not small:
        return
    c = min(small, key=lambda i: len(split.class_indices[i]))
    sources = getattr(split, "class_sources", None)
    where = f" ({sources[c]})" if sources else ""
    fewest = len(split.class_indices[c])
    raise DataError(
        f"class {split.class_names[c]} of the {split.name} split has {fewest} images{where}, but {shots} shots + "
        f"{query} queries need {needed} ({len(small)} class(es) too small); lower --shots/--query to a total of at "
        f"most {fewest}, or restore the class's missing images."
    )


@dataclass
class PartReport:
    classes: int = 0
    images: int = 0
    fewest: int = 0  # images in the smallest class
    problem: str | None = None


@dataclass
class MiniImageNetReport:
    """What ``fastadapt datasets`` says about mini-ImageNet."""

    data_dir: Path
    layout: str | None = None
    folder: Path | None = None
    parts: dict[str, PartReport] = field(default_factory=dict)
    split_problems: list[str] = field(default_factory=list)
    cached: bool = False
    problem: str | None = None

    def lines(self) -> list[str]:
        if self.layout is None:
            return [f"mini-imagenet: not found ({self.problem})"]
        out = [f"mini-imagenet: {LAYOUTS[self.layout]} in {self.folder}"]
        for part in PARTS:
            r = self.parts[part]
            if r.problem:
                out.append(f"  {part:<5} missing or unreadable: {r.problem}")
            else:
                out.append(f"  {part:<5} {r.classes} classes, {r.images} images (at least {r.fewest} per class)")
        if all(not r.problem for r in self.parts.values()):
            if self.split_problems:
                out.append("  split: differs from Ravi & Larochelle's 64/16/20: " + "; ".join(self.split_problems))
            else:
                out.append("  split: Ravi & Larochelle's 64/16/20 classes")
        cache = "decoded (memory-mapped cache)" if self.cached else "not decoded yet (decoded once, on first use)"
        out.append(f"  images: {cache}")
        return out


def inspect_miniimagenet(data_dir: str | os.PathLike | None = None, image_size: int = IMAGE_SIZE) -> MiniImageNetReport:
    """Which layout is where, the class and image counts per part, what is missing and whether the classes are
    the standard split; never raises for a missing or broken copy (that is what it reports)."""
    report = MiniImageNetReport(resolve_data_dir(data_dir))
    try:
        report.layout, report.folder = locate(data_dir)
    except DataError as exc:
        report.problem = str(exc)
        return report
    parts: dict[str, _Part] = {}
    for name in PARTS:
        try:
            parts[name] = _SCANNERS[report.layout](report.folder, name)
        except DataError as exc:
            report.parts[name] = PartReport(problem=str(exc))
    cached = None
    if len(parts) == len(PARTS):
        cached = _load_cached(
            cache_dir() / "mini-imagenet" / _cache_key(report.layout, report.folder, parts, image_size)[1]
        )
    report.cached = cached is not None
    for name, part in parts.items():
        try:
            if cached is not None:
                counts = [len(ix) for ix in cached[name].class_indices]
                names = cached[name].class_names
            else:
                _open(report.layout, part)
                counts, names = part.counts, part.class_names
        except DataError as exc:
            report.parts[name] = PartReport(problem=str(exc))
            continue
        report.parts[name] = PartReport(len(names), sum(counts), min(counts) if counts else 0)
        part.class_names = names
    if all(not r.problem for r in report.parts.values()):
        report.split_problems = split_differences({p: parts[p].class_names for p in PARTS})
    return report


#: The entry for ``fastadapt.datasets.DATASETS`` (its DatasetInfo takes name, kind, description).
DATASET_DESCRIPTION = (
    "100 ImageNet classes x 600 colour images, 84x84, Ravi & Larochelle's 64/16/20 split; reads "
    "<data-dir>/mini-imagenet/ in any of four layouts (fastadapt datasets tells which it found)"
)


def splits_for_config(config: Any, progress: bool = True) -> dict[str, SourcedClassSplit]:
    """What ``fastadapt.datasets.load_splits`` returns for ``--dataset mini-imagenet``: the splits of
    ``config.data_dir`` (or ``$FASTADAPT_DATA``/``shared/data``), checked so that every class holds the episodes'
    shots + queries (the training shape for train, the test shape for val and test) with a message naming
    the class's files. ``config.split`` "vinyals", Omniglot's default in DataOptions, means the standard split."""
    split = "ravi" if config.split == "vinyals" else config.split
    splits = load_miniimagenet(config.data_dir, split, config.image_size, config.channels, progress)
    check_class_sizes(splits["train"], config.train_shots_or_shots, config.query)
    for part in ("val", "test"):
        check_class_sizes(splits[part], config.shots, config.eval_query_or_query)
    return splits
