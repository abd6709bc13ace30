"""The embeddings data set: our `embed` layout, the LEO authors' pickle layout, and the safe unpickler."""

import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest

from fastadapt.datasets.embeddings import (
    UnsafePickleError,
    load_embeddings,
    safe_load_pickle,
    write_embedding_split,
)
from fastadapt.errors import DataError

CLASSES = {"train": ["n01532829", "n01558993", "n01704323"], "val": ["n01855672", "n02091244"], "test": ["n01930112"]}


def write_authors_layout(root: Path, dim: int = 16, per_class: int = 4, protocol: int = 2) -> Path:
    """A small copy of the released mini-ImageNet layout: <split>_embeddings.pkl, a dict of numpy arrays
    with keys '<index>-<class>-<class>_<image>.JPEG' (pickled at protocol 2, as by Python 2)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, classes in CLASSES.items():
        keys = [
            f"{i:05d}-{c}-{c}_{k:08d}.JPEG"
            for i, (c, k) in enumerate((c, k) for c in classes for k in range(per_class))
        ]
        data = {"embeddings": rng.standard_normal((len(keys), dim)).astype(np.float32), "keys": np.array(keys)}
        with open(root / f"{split}_embeddings.pkl", "wb") as f:
            pickle.dump(data, f, protocol=protocol)
    return root


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_reads_the_leo_authors_layout(tmp_path, protocol):
    root = write_authors_layout(tmp_path / f"miniImageNet{protocol}" / "center", protocol=protocol)
    splits = load_embeddings(root)
    for split, classes in CLASSES.items():
        assert splits[split].class_names == sorted(classes)
        assert splits[split].images.shape == (4 * len(classes), 16)
        assert all(len(ix) == 4 for ix in splits[split].class_indices)
    with open(root / "train_embeddings.pkl", "rb") as f:
        raw = pickle.load(f)
    # rows of a class are that class's embeddings
    first = splits["train"].images[splits["train"].class_indices[0]].numpy()
    np.testing.assert_allclose(first, raw["embeddings"][:4])


class RunsACommand:
    def __reduce__(self):
        return (os.system, ("echo pwned > pwned.txt",))


class CallsEval:
    def __reduce__(self):
        return (eval, ("1 + 1",))


@pytest.mark.parametrize("payload", [RunsACommand(), CallsEval()])
def test_safe_unpickler_refuses_a_pickle_that_would_call_a_function(tmp_path, monkeypatch, payload):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "train_embeddings.pkl"
    path.write_bytes(pickle.dumps({"embeddings": np.zeros((2, 3)), "keys": payload}, protocol=2))
    with pytest.raises(UnsafePickleError, match="refusing to load .*only hold numpy arrays"):
        safe_load_pickle(path)
    assert not (tmp_path / "pwned.txt").exists()


def test_a_malicious_split_file_is_refused_by_the_loader(tmp_path):
    root = write_authors_layout(tmp_path / "emb")
    (root / "val_embeddings.pkl").write_bytes(pickle.dumps(RunsACommand(), protocol=2))
    with pytest.raises(DataError, match="val_embeddings.pkl: refusing to load"):
        load_embeddings(root)


def test_our_layout_round_trips(tmp_path):
    rng = np.random.default_rng(1)
    for split, classes in CLASSES.items():
        labels = np.repeat(np.arange(len(classes)), 3)[::-1].copy()  # any row order
        write_embedding_split(tmp_path / f"{split}.npz", rng.standard_normal((len(labels), 8)), labels, classes)
    splits = load_embeddings(tmp_path)
    assert splits["train"].class_names == CLASSES["train"]
    assert splits["val"].images.shape == (6, 8) and splits["val"].images.dtype.is_floating_point
    assert not list(tmp_path.glob(".*tmp*"))  # written atomically, no temporary files left


def test_missing_or_bad_folders_give_one_clear_error(tmp_path):
    with pytest.raises(DataError, match="embeddings folder not found"):
        load_embeddings(tmp_path / "nope")
    with pytest.raises(DataError, match="fastadapt embed"):
        load_embeddings(tmp_path)
    root = write_authors_layout(tmp_path / "bad")
    (root / "test_embeddings.pkl").write_bytes(pickle.dumps({"embeddings": np.zeros((2, 3))}, protocol=2))
    with pytest.raises(DataError, match="'embeddings' and 'keys'"):
        load_embeddings(root)


# --- what fuzzing found (tests/fuzzing.py, bench/fuzz_loaders.py) ------------------------------------------------


class EncodesWithNoCodec:
    """A pickle calling _codecs.encode (one of the globals SafeUnpickler admits) with a codec that does not exist."""

    def __reduce__(self):
        import codecs

        return codecs.encode, ("x", "no-such-codec")


@pytest.mark.parametrize(
    "value, message",
    [
        (EncodesWithNoCodec(), "corrupt or not a pickle \\(LookupError\\)"),  # LookupError escaped before
        ({"embeddings": [[1.0, 2.0], [3.0]], "keys": ["1-a-x", "2-a-y"]}, "are not arrays \\(ValueError\\)"),
        ({"embeddings": np.zeros((2, 0)), "keys": np.array(["1-a-x", "2-a-y"])}, "expected embeddings of shape"),
    ],
)
def test_odd_pickles_are_one_line(tmp_path, value, message):
    root = write_authors_layout(tmp_path / "emb")
    (root / "train_embeddings.pkl").write_bytes(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
    with pytest.raises(DataError, match=f"train_embeddings.pkl.*{message}"):
        load_embeddings(root)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"class_names": np.array("one name")}, "class_names must be a list of names"),  # TypeError escaped before
        ({"labels": np.array([0.5, 1.5, 0.0])}, "labels must be integers"),  # were silently truncated before
        ({"labels": np.array(["0", "1", "0"])}, "labels must be integers"),
        ({"embeddings": np.full((3, 4), 1e300)}, "embeddings must be finite .* float32's range"),  # numpy's warning
    ],
)
def test_odd_arrays_in_our_layout_are_one_line(tmp_path, change, message):
    rng = np.random.default_rng(1)
    for split in ("train", "val", "test"):
        write_embedding_split(tmp_path / f"{split}.npz", rng.standard_normal((3, 4)), np.array([0, 1, 0]), ["a", "b"])
    content = {"embeddings": rng.standard_normal((3, 4)), "labels": np.array([0, 1, 0]), "class_names": ["a", "b"]}
    np.savez(tmp_path / "val.npz", **{**content, **change})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "overflow encountered in cast" reached the user before
        with pytest.raises(DataError, match=f"val.npz: {message}"):
            load_embeddings(tmp_path)
