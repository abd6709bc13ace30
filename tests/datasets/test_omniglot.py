"""Omniglot: split sizes, character-disjoint splits, rotations, image format (on the real data when it
is present) and clear errors for missing or corrupt files (always)."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from fastadapt.config import make_config
from fastadapt.datasets import load_splits, resolve_data_dir
from fastadapt.datasets.omniglot import load_omniglot
from fastadapt.errors import ConfigError, DataError
from fastadapt.tasks.samplers import ClassSplit, EpisodeSampler

DATA_ROOT = resolve_data_dir()
HAVE_OMNIGLOT = all((DATA_ROOT / "omniglot" / f).is_file() for f in ("images_background.npz", "images_evaluation.npz"))
real_data = pytest.mark.skipif(not HAVE_OMNIGLOT, reason=f"Omniglot not found in {DATA_ROOT / 'omniglot'}")

ROT = re.compile(r"/rot(000|090|180|270)$")


def character(class_name: str) -> str:
    assert ROT.search(class_name), class_name
    return ROT.sub("", class_name)


def characters(split: ClassSplit) -> set[str]:
    return {character(n) for n in split.class_names}


@pytest.fixture(scope="module")
def splits() -> dict[str, dict[str, ClassSplit]]:
    return {name: load_omniglot(DATA_ROOT, name) for name in ("vinyals", "maml", "lake")}


@real_data
@pytest.mark.parametrize(
    "name,sizes",
    [
        ("vinyals", {"train": 1028, "val": 172, "test": 423}),
        ("maml", {"train": 1100, "val": 100, "test": 423}),
    ],
)
def test_split_sizes(splits, name: str, sizes: dict[str, int]) -> None:
    parts = splits[name]
    assert set(parts) == {"train", "val", "test"}
    for part, n_chars in sizes.items():
        assert parts[part].num_classes == 4 * n_chars
        assert len(characters(parts[part])) == n_chars
        assert parts[part].images.shape == (4 * n_chars * 20, 1, 28, 28)
        assert all(len(ix) == 20 for ix in parts[part].class_indices)


@real_data
def test_lake_split_is_background_vs_evaluation(splits) -> None:
    lake = splits["lake"]
    assert lake["train"].num_classes + lake["val"].num_classes == 964 * 4
    assert lake["test"].num_classes == 659 * 4
    # Validation holds out whole alphabets of the background set.
    train_alphabets = {c.split("/")[0] for c in characters(lake["train"])}
    val_alphabets = {c.split("/")[0] for c in characters(lake["val"])}
    assert len(val_alphabets) == 4 and not train_alphabets & val_alphabets


@real_data
@pytest.mark.parametrize("name", ["vinyals", "maml", "lake"])
def test_splits_never_share_a_character(splits, name: str) -> None:
    parts = splits[name]
    chars = {part: characters(s) for part, s in parts.items()}
    assert not chars["train"] & chars["val"]
    assert not chars["train"] & chars["test"]
    assert not chars["val"] & chars["test"]
    assert len(chars["train"] | chars["val"] | chars["test"]) == 1623
    for s in parts.values():
        # Each character contributes exactly its four rotations, all to the same split.
        assert len(s.class_names) == len(set(s.class_names)) == 4 * len(characters(s))


@real_data
def test_vinyals_split_matches_published_lists(splits) -> None:
    lists = DATA_ROOT / "omniglot" / "splits" / "vinyals"
    if not lists.is_dir():
        pytest.skip("published split lists not present")
    for part in ("train", "val", "test"):
        lines = (lists / f"{part}.txt").read_text().splitlines()
        published = {line.strip() for line in lines if line.strip()}
        assert set(splits["vinyals"][part].class_names) == published


@real_data
@pytest.mark.parametrize("name", ["vinyals", "lake"])
def test_sampler_never_leaks_classes_across_splits(splits, name: str) -> None:
    parts = splits[name]
    own_chars = {part: characters(s) for part, s in parts.items()}
    for part, split in parts.items():
        row_class = np.empty(len(split.images), dtype=np.int64)
        for c, ix in enumerate(split.class_indices):
            row_class[ix] = c
        tracer = EpisodeSampler(split, 20, 1, 2, seed=5)
        sampler = EpisodeSampler(split, 20, 1, 2, seed=5)
        drawn: set[str] = set()
        for episode in range(60):
            support_rows, query_rows = tracer.sample_indices()
            batch = sampler.sample(1)
            if episode < 3:  # the sampled pixels are exactly those of the traced rows
                expected = split.images[torch.from_numpy(support_rows.reshape(-1))].float() / 255
                assert torch.equal(batch.support_x[0], expected)
            for rows in (support_rows, query_rows):
                drawn |= {split.class_names[c] for c in row_class[rows.reshape(-1)]}
        drawn_chars = {character(n) for n in drawn}
        assert len(drawn) > 500
        assert drawn_chars <= own_chars[part]
        for other, chars in own_chars.items():
            if other != part:
                assert not drawn_chars & chars, f"{part} episodes drew {other} characters"


@real_data
def test_rotated_classes_are_rotations(splits) -> None:
    split = splits["vinyals"]["val"]
    index = {n: i for i, n in enumerate(split.class_names)}
    for char in sorted(characters(split))[:5]:
        base = split.images[split.class_indices[index[f"{char}/rot000"]]].numpy()
        for k, deg in ((1, "090"), (2, "180"), (3, "270")):
            rotated = split.images[split.class_indices[index[f"{char}/rot{deg}"]]].numpy()
            assert np.array_equal(rotated, np.rot90(base, k=k, axes=(-2, -1)))
        assert not np.array_equal(base, np.rot90(base, k=1, axes=(-2, -1)))


@real_data
def test_images_are_28x28_uint8_with_dark_background(splits) -> None:
    split = splits["vinyals"]["test"]
    assert split.images.dtype == torch.uint8
    assert split.images.shape[1:] == (1, 28, 28)
    sample = split.images[:2000].float()
    assert sample.max() == 255 and sample.min() == 0
    assert sample.mean() < 64  # mostly background (0), ink is bright
    # Drawings of one character differ from each other.
    first = split.images[split.class_indices[0]]
    assert not torch.equal(first[0], first[1])


@real_data
def test_load_splits_through_config(splits) -> None:
    config = make_config("maml", "omniglot", split="vinyals")
    parts = load_splits(config)
    assert parts["val"].images.shape == (172 * 4 * 20, 1, 28, 28)
    assert parts["val"].class_names == splits["vinyals"]["val"].class_names


def test_unknown_split_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="vinyals"):
        load_omniglot(tmp_path, "nonsense")


def test_missing_data_dir_says_how_to_get_the_data(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_omniglot(tmp_path / "nowhere")
    msg = str(info.value)
    assert "fastadapt download omniglot" in msg and "--data-dir" in msg
    # Through the config, with an explicit --data-dir.
    with pytest.raises(DataError, match="fastadapt download omniglot"):
        load_splits(make_config("protonet", "omniglot", data_dir=str(tmp_path / "nowhere")))


def test_one_file_missing_is_data_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FASTADAPT_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "data" / "omniglot"
    _write_fake_npz(root / "images_background.npz", n_chars=2)
    with pytest.raises(DataError, match="fastadapt download omniglot"):
        load_omniglot(tmp_path / "data")


def _write_fake_npz(path: Path, n_chars: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = (rng.random((n_chars * 20, 105, 105)) < 0.1).astype(np.uint8)
    alphabet = np.array(["Fake"] * (n_chars * 20))
    char = np.repeat([f"character{i + 1:02d}" for i in range(n_chars)], 20)
    np.savez_compressed(path, images=images, alphabet=alphabet, character=char)
    return path


def _corrupt(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncated":
        path.write_bytes(bytes(data[: len(data) // 2]))
    elif how == "deflate":
        # Zero the start of images.npy's compressed stream: zlib then reports invalid block lengths.
        with zipfile.ZipFile(path) as zf:
            info = zf.getinfo("images.npy")
        header = data[info.header_offset : info.header_offset + 30]
        name_len, extra_len = (int.from_bytes(header[i : i + 2], "little") for i in (26, 28))
        start = info.header_offset + 30 + name_len + extra_len
        data[start : start + 16] = bytes(16)
        path.write_bytes(bytes(data))
    elif how == "crc":
        with zipfile.ZipFile(path) as zf:
            info = zf.getinfo("images.npy")
        middle = info.header_offset + 30 + len("images.npy") + info.compress_size // 2
        data[middle : middle + 64] = bytes(64)
        path.write_bytes(bytes(data))
    elif how == "not_npz":
        path.write_bytes(b"<html>404 not found</html>" * 20)
    elif how == "wrong_arrays":
        np.savez(path, pictures=np.zeros((20, 105, 105), np.uint8))
    elif how == "wrong_shape":
        np.savez(
            path, images=np.zeros((20, 28, 28), np.uint8), alphabet=np.array(["a"] * 20), character=np.array(["c"] * 20)
        )
    else:
        raise AssertionError(how)


@pytest.mark.parametrize("how", ["truncated", "deflate", "crc", "not_npz", "wrong_arrays", "wrong_shape"])
def test_corrupt_npz_is_data_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("FASTADAPT_CACHE", str(cache))
    root = tmp_path / "data" / "omniglot"
    _write_fake_npz(root / "images_background.npz", n_chars=2)
    bad = _write_fake_npz(root / "images_evaluation.npz", n_chars=2, seed=1)
    _corrupt(bad, how)
    with pytest.raises(DataError) as info:
        load_omniglot(tmp_path / "data")
    msg = str(info.value)
    assert str(bad) in msg
    if how not in ("wrong_shape",):
        assert "corrupt" in msg
    assert "fastadapt download omniglot" in msg or "fetch it again" in msg
    assert not list(cache.glob("*.npz")), "nothing may be cached from a corrupt file"


def test_fake_data_loads_and_is_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tiny fake files above are otherwise valid (so the corrupt cases fail for the right reason)."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("FASTADAPT_CACHE", str(cache))
    root = tmp_path / "data" / "omniglot"
    _write_fake_npz(root / "images_background.npz", n_chars=2)
    _write_fake_npz(root / "images_evaluation.npz", n_chars=2, seed=1)
    from fastadapt.datasets.omniglot import load_characters

    images, names, sets = load_characters(tmp_path / "data", image_size=12)
    assert images.shape == (4, 20, 12, 12) and images.dtype == np.uint8
    assert names == ["Fake/character01", "Fake/character02"] * 2
    assert sets == ["background"] * 2 + ["evaluation"] * 2
    assert len(list(cache.glob("omniglot_12_*.npz"))) == 1
    again, _, _ = load_characters(tmp_path / "data", image_size=12)
    assert np.array_equal(images, again)


def test_corrupt_cache_is_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("FASTADAPT_CACHE", str(cache))
    root = tmp_path / "data" / "omniglot"
    _write_fake_npz(root / "images_background.npz", n_chars=2)
    _write_fake_npz(root / "images_evaluation.npz", n_chars=2, seed=1)
    from fastadapt.datasets.omniglot import load_characters

    images, _, _ = load_characters(tmp_path / "data", image_size=12)
    (cached,) = cache.glob("omniglot_12_*.npz")
    _corrupt(cached, "deflate")
    again, _, _ = load_characters(tmp_path / "data", image_size=12)
    assert np.array_equal(images, again)


@real_data
def test_vinyals_trainval_trains_on_all_1200_non_test_characters(splits) -> None:
    trainval = load_omniglot(DATA_ROOT, "vinyals-trainval")
    vinyals = splits["vinyals"]
    assert characters(trainval["train"]) == characters(vinyals["train"]) | characters(vinyals["val"])
    assert len(characters(trainval["train"])) == 1200
    assert trainval["test"].class_names == vinyals["test"].class_names
    assert not characters(trainval["train"]) & characters(trainval["test"])


# --- what fuzzing found (tests/fuzzing.py, bench/fuzz_loaders.py) ------------------------------------------------


@pytest.mark.parametrize(
    "arrays, problem",
    [
        ({"alphabet": np.array("Fake"), "character": np.array(["c"] * 40)}, "alphabet names"),  # a 0-d array
        ({"images": np.full((40, 105, 105), 255, np.uint8)}, "not 0 \\(paper\\) and 1 \\(ink\\)"),
        ({"images": np.zeros((40, 105, 105), np.float32)}, "not 0 \\(paper\\) and 1 \\(ink\\)"),
        ({"character": np.arange(40)}, "character names"),
        ({"character": np.array(["c"] * 39)}, "character names"),
    ],
)
def test_npz_arrays_of_another_layout_are_one_line(tmp_path: Path, monkeypatch, arrays, problem: str) -> None:
    monkeypatch.setenv("FASTADAPT_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "data" / "omniglot"
    _write_fake_npz(root / "images_background.npz", n_chars=2)
    good = {"images": np.zeros((40, 105, 105), np.uint8), "alphabet": np.array(["A"] * 40)}
    np.savez(root / "images_evaluation.npz", **{**good, "character": np.array(["c"] * 40), **arrays})
    with pytest.raises(DataError, match=f"images_evaluation.npz does not hold .*{problem}"):
        load_omniglot(tmp_path / "data", "lake")


def test_too_few_characters_for_a_split_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The maml split takes 1100 + 100 characters before its test part: 4 characters leave parts empty."""
    monkeypatch.setenv("FASTADAPT_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "data" / "omniglot"
    _write_fake_npz(root / "images_background.npz", n_chars=2)
    _write_fake_npz(root / "images_evaluation.npz", n_chars=2, seed=1)
    message = "images_evaluation.npz in .* hold 4 Omniglot characters, which leave the val/test part of the maml split"
    with pytest.raises(DataError, match=message):
        load_omniglot(tmp_path / "data", "maml")


@pytest.mark.parametrize("change", ["format", "digest", "names", "shape"])
def test_a_cache_written_otherwise_is_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str) -> None:
    """A cache that reads as a zip but holds other arrays (another version's, or changed) is rebuilt, not used."""
    from fastadapt.datasets.omniglot import cache_path, load_characters

    monkeypatch.setenv("FASTADAPT_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "data" / "omniglot"
    _write_fake_npz(root / "images_background.npz", n_chars=2)
    _write_fake_npz(root / "images_evaluation.npz", n_chars=2, seed=1)
    images, names, sets = load_characters(tmp_path / "data", image_size=12)
    cached = cache_path(tmp_path / "data", 12)
    with np.load(cached) as d:
        content = {k: d[k] for k in d.files}
    content.update(
        {
            "format": {"format": np.array("an older cache")},
            "digest": {"digest": np.array("0" * 64)},
            "names": {"names": np.array(["Other/character01"] * 4)},
            "shape": {"images": content["images"][:, :19]},
        }[change]
    )
    np.savez(cached, **content)
    again = load_characters(tmp_path / "data", image_size=12)
    assert np.array_equal(again[0], images) and again[1:] == (names, sets)


@pytest.mark.parametrize(
    "text, message",
    [
        (b"train a/b c\n", "line 1 of the split list .* is not"),
        (b"dev Fake/character01\n", "line 1 of the split list .* is not"),
        (b"train Fake/character09\n", "character Fake/character09 of the split list .* is missing"),
        (b"train Fake/character01\nval Fake/character01\n", "listed twice"),
        (b"train Fake/character01\n", "lists no val/test characters"),
        (b"\xff\xfe", "cannot read the split list"),
    ],
)
def test_a_damaged_split_list_is_one_line(tmp_path: Path, text: bytes, message: str) -> None:
    from fastadapt.datasets.omniglot import read_split_list

    (tmp_path / "list.txt").write_bytes(text)
    with pytest.raises(DataError, match=message):
        read_split_list(tmp_path / "list.txt", ["Fake/character01", "Fake/character02"])


def test_an_image_size_whose_arrays_would_not_fit_in_memory_is_refused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FASTADAPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("fastadapt.options.available_memory", lambda: 64 * 2**20)
    root = tmp_path / "data" / "omniglot"
    _write_fake_npz(root / "images_background.npz", n_chars=2)
    _write_fake_npz(root / "images_evaluation.npz", n_chars=2, seed=1)
    with pytest.raises(ConfigError, match="Omniglot at --image-size 500 needs .* use a smaller --image-size"):
        load_omniglot(tmp_path / "data", "lake", image_size=500)
