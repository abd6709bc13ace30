"""A small, fast stand-in for a sentence-transformers model (importable from the text tests).

It has the parts of the ``SentenceTransformer`` API that fastadapt uses -- ``tokenize``, ``forward`` returning
``{"sentence_embedding": ...}``, ``encode`` and ``save`` -- over a trainable bag of hashed words, so the
cache, the episodic splits, the 150-way protocol and encoder fine-tuning run in milliseconds.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fastadapt.text import encoder as encoder_module


class FakeSentenceModel(nn.Module):
    def __init__(self, dim: int = 16, buckets: int = 512, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.bag = nn.EmbeddingBag(buckets, dim, mode="mean")
        self.dropout = nn.Dropout(0.1)  # random in training, as BERT's dropout: resume must restore its state
        self.buckets = buckets
        self.encode_calls = 0

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        ids, offsets = [], []
        for text in texts:
            offsets.append(len(ids))
            ids += [zlib.crc32(word.encode()) % self.buckets for word in text.lower().split()] or [0]
        return {"input_ids": torch.tensor(ids), "offsets": torch.tensor(offsets)}

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        vectors = self.dropout(self.bag(features["input_ids"], features["offsets"]))
        return {"sentence_embedding": F.normalize(vectors, dim=-1)}

    def encode(self, texts: Sequence[str], batch_size: int = 32, **_: object) -> np.ndarray:
        self.encode_calls += 1
        with torch.no_grad():
            return self(self.tokenize(list(texts)))["sentence_embedding"].numpy()

    def save(self, folder: str) -> None:
        Path(folder).mkdir(parents=True)
        torch.save(self.state_dict(), Path(folder) / "weights.pt")


def fake_encoder_folder(root: Path, name: str = "fake-encoder", content: str = "weights v1") -> Path:
    """A folder standing for an encoder on disk (its content is what the cache key hashes)."""
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(content)
    return folder


def use_fake_encoder(monkeypatch, dim: int = 16) -> list[FakeSentenceModel]:
    """Make :func:`fastadapt.text.encoder.load_encoder` return fake models; returns the list of those loaded."""
    loaded: list[FakeSentenceModel] = []

    def load(name: str = "", device: str = "cpu") -> FakeSentenceModel:
        encoder_module.resolve_encoder(name)  # the same checks on the name as the real loader
        loaded.append(FakeSentenceModel(dim))
        return loaded[-1]

    monkeypatch.setattr(encoder_module, "load_encoder", load)
    return loaded
