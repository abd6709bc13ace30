"""Fixed feature embeddings as few-shot classes (what LEO trains on).

Two layouts are read from ``--data-dir DIR``:

- ours, written by ``fastadapt embed``: ``DIR/{train,val,test}.npz``, each with ``embeddings``
  (n, D) float32, ``labels`` (n,) int64 indices into ``class_names`` (c,) str; loaded with
  ``allow_pickle=False``.
- the LEO authors' released mini-ImageNet / tiered-ImageNet embeddings (github.com/deepmind/leo,
  ``embeddings/<dataset>/<crop>/``): ``DIR/{train,val,test}_embeddings.pkl``, Python pickles of a dict
  with ``embeddings`` (n, 640) float array and ``keys`` (n,) image keys of the form
  ``<id>-<class>-<class>_<image>.JPEG`` (the class is the second ``-`` field); an optional ``labels``
  array is used when present. These pickles are read with :class:`SafeUnpickler`, which only admits
  numpy arrays, numpy dtypes/scalars and plain containers, so a file that would run code is refused.
"""

from __future__ import annotations

import io
import pickle
import zipfile
import zlib
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastadapt import atomic
from fastadapt.errors import DataError
from fastadapt.tasks.samplers import ClassSplit

PARTS = ("train", "val", "test")
LAYOUT_HELP = (
    "point --data-dir at the output of `fastadapt embed` (train.npz, val.npz, test.npz) or at a folder "
    "of the LEO authors' embeddings (train_embeddings.pkl, val_embeddings.pkl, test_embeddings.pkl, e.g. "
    "embeddings/miniImageNet/center)."
)

#: The only globals a pickle may reference: how numpy arrays, dtypes and scalars are rebuilt (numpy 1
#: and 2 module names, protocols 2 to 5), bytes under protocol 2, and ordered dicts. None of them can
#: run other code.
SAFE_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),  # protocol 5 (numpy >= 1.16 writing with pickle 5)
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
        ("collections", "OrderedDict"),
    }
)


class UnsafePickleError(DataError):
    """A pickle referenced something other than numpy arrays and plain containers."""


class SafeUnpickler(pickle.Unpickler):
    """An unpickler for pickles of numpy arrays and plain containers (dict, list, tuple, str, bytes,
    numbers): any other class or function the pickle names is refused before it is looked up."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in SAFE_GLOBALS:
            raise UnsafePickleError(
                f"refusing to load {module}.{name}: embedding pickles may only hold numpy arrays and plain "
                f"containers (dict, list, str, numbers). The file is not an embeddings file or was tampered "
                f"with; regenerate it (fastadapt embed) or get it again from its source."
            )
        return super().find_class(module, name)


def safe_load_pickle(path: Path) -> Any:
    """Unpickle ``path`` with :class:`SafeUnpickler` (latin-1 for Python 2 pickles, as the authors' are)."""
    try:
        with open(path, "rb") as f:
            return SafeUnpickler(f, encoding="latin1").load()
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{path}: {exc}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise DataError(f"{path} is corrupt or not a pickle ({type(exc).__name__}: {exc}); get it again.") from exc


def _class_of_key(key: Any, path: Path) -> str:
    text = key.decode("latin1") if isinstance(key, bytes) else str(key)
    fields = text.split("-")
    if len(fields) < 3:
        raise DataError(f"{path}: image key {text!r} is not of the form <id>-<class>-<image>; cannot tell its class.")
    return fields[1]


def _split_from_arrays(
    part: str, embeddings: np.ndarray, labels: np.ndarray, class_names: list[str], path: Path
) -> ClassSplit:
    if embeddings.ndim != 2 or len(embeddings) != len(labels) or len(embeddings) == 0:
        raise DataError(
            f"{path}: expected embeddings of shape (n, D) and n labels, got {embeddings.shape} and {labels.shape}."
        )
    if not np.issubdtype(embeddings.dtype, np.floating) or not np.isfinite(embeddings).all():
        raise DataError(f"{path}: embeddings must be finite floating-point numbers ({embeddings.dtype}).")
    order = np.argsort(labels, kind="stable")  # rows grouped class by class
    labels = labels[order]
    tensor = torch.from_numpy(np.ascontiguousarray(embeddings[order], dtype=np.float32))
    starts = np.searchsorted(labels, np.arange(len(class_names) + 1))
    indices = [np.arange(starts[c], starts[c + 1]) for c in range(len(class_names))]
    keep = [c for c, ix in enumerate(indices) if len(ix)]
    return ClassSplit(part, tensor, [indices[c] for c in keep], [class_names[c] for c in keep])


def _read_ours(path: Path, part: str) -> ClassSplit:
    try:
        with np.load(path, allow_pickle=False) as d:
            embeddings, labels, names = d["embeddings"], d["labels"], [str(n) for n in d["class_names"]]
    except (zipfile.BadZipFile, zlib.error, OSError, ValueError, KeyError, EOFError) as exc:
        raise DataError(
            f"{path} is corrupt or not written by `fastadapt embed` ({type(exc).__name__}: {exc}); run embed again."
        ) from exc
    if labels.ndim != 1 or len(labels) and (labels.min() < 0 or labels.max() >= len(names)):
        raise DataError(f"{path}: labels must index class_names; run `fastadapt embed` again.")
    return _split_from_arrays(part, embeddings, labels.astype(np.int64), names, path)


def _read_leo_pickle(path: Path, part: str) -> ClassSplit:
    data = safe_load_pickle(path)
    if not isinstance(data, dict) or "embeddings" not in data or "keys" not in data:
        raise DataError(
            f"{path}: expected a dict with 'embeddings' and 'keys' (the LEO authors' layout), got "
            f"{type(data).__name__}{' with keys ' + str(sorted(map(str, data))) if isinstance(data, dict) else ''}."
        )
    embeddings = np.asarray(data["embeddings"])
    if "labels" in data:
        raw = [str(x) for x in np.asarray(data["labels"]).reshape(-1)]
    else:
        raw = [_class_of_key(k, path) for k in np.asarray(data["keys"]).reshape(-1)]
    names = sorted(set(raw))
    lookup = {n: i for i, n in enumerate(names)}
    labels = np.array([lookup[r] for r in raw], dtype=np.int64)
    return _split_from_arrays(part, embeddings, labels, names, path)


def embedding_layout(root: Path) -> str:
    """ "ours" or "leo" for a folder holding one of the two layouts; a DataError otherwise."""
    root = Path(root).expanduser()
    if all((root / f"{p}.npz").is_file() for p in PARTS):
        return "ours"
    if all((root / f"{p}_embeddings.pkl").is_file() for p in PARTS):
        return "leo"
    if not root.is_dir():
        raise DataError(f"embeddings folder not found: {root}; {LAYOUT_HELP}")
    raise DataError(f"no embeddings in {root}; {LAYOUT_HELP}")


@lru_cache(maxsize=4)
def _load_cached(root: str, stamp: tuple) -> dict[str, ClassSplit]:
    layout = embedding_layout(Path(root))
    if layout == "ours":
        return {p: _read_ours(Path(root) / f"{p}.npz", p) for p in PARTS}
    return {p: _read_leo_pickle(Path(root) / f"{p}_embeddings.pkl", p) for p in PARTS}


def load_embeddings(root: Path) -> dict[str, ClassSplit]:
    """Train/val/test :class:`ClassSplit` of (n, D) float32 embeddings from either layout (cached in
    memory, so building the model and sampling episodes read the files once)."""
    root = Path(root).expanduser().resolve()
    layout = embedding_layout(root)
    files = [root / (f"{p}.npz" if layout == "ours" else f"{p}_embeddings.pkl") for p in PARTS]
    stamp = tuple((f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    splits = _load_cached(str(root), stamp)
    dims = {s.images.shape[1] for s in splits.values()}
    if len(dims) != 1:
        raise DataError(f"the splits in {root} have embeddings of different sizes {sorted(dims)}; embed again.")
    return splits


def embedding_dim(root: Path) -> int:
    """D, the size of each embedding in ``root``."""
    return int(load_embeddings(root)["train"].images.shape[1])


def write_embedding_split(path: Path, embeddings: np.ndarray, labels: np.ndarray, class_names: list[str]) -> None:
    """Write one split in our layout atomically (temporary file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez(
        buffer,
        embeddings=np.asarray(embeddings, dtype=np.float32),
        labels=np.asarray(labels, dtype=np.int64),
        class_names=np.array(class_names, dtype=str),
    )
    atomic.write_bytes(path, buffer.getvalue())


def write_json_atomically(path: Path, record: dict[str, Any]) -> None:
    atomic.write_json(Path(path), record)
