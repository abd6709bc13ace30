"""Text test fixtures: small data files and a fast stand-in for a sentence-transformers model.

It has the parts of the ``SentenceTransformer`` API that fastadapt uses -- ``tokenize``, ``forward`` returning
``{"sentence_embedding": ...}``, ``encode`` and ``save`` -- over a trainable bag of hashed words, so the
cache, the episodic splits, the 150-way protocol and encoder fine-tuning run in milliseconds.
"""

from __future__ import annotations

import csv
import json
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
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


def one_line(exc: pytest.ExceptionInfo) -> str:
    """The error's message, checked to be one line without a traceback."""
    message = str(exc.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def small_rows(labels: int = 6, per_label: int = 8) -> list[tuple[str, str]]:
    """(text, label) rows: ``labels`` labels of ``per_label`` distinct utterances each."""
    return [
        (f"utterance {k} about topic{c} and thing{k % 3}", f"label{c}") for c in range(labels) for k in range(per_label)
    ]


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


def write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text", "label"])
        for i, (text, label) in enumerate(rows):
            writer.writerow([i, text, label])
    return path


def write_clinc_fixture(root: Path, intents: list[str], train=6, val=2, test=3, oos=(2, 2, 4)) -> Path:
    """A data_full.json with CLINC150's six parts over ``intents``."""
    data = {}
    for part, n in (("train", train), ("val", val), ("test", test)):
        data[part] = [[f"{part} {k} please {i.replace('_', ' ')} now", i] for i in intents for k in range(n)]
    for part, n in zip(("oos_train", "oos_val", "oos_test"), oos):
        data[part] = [[f"{part} unrelated question {k}", "oos"] for k in range(n)]
    (root / "clinc150").mkdir(parents=True, exist_ok=True)
    (root / "clinc150" / "data_full.json").write_text(json.dumps(data), encoding="utf-8")
    return root
