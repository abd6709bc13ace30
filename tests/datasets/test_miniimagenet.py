"""mini-ImageNet from each layout users have, on small synthetic 84x84 fixtures (never the real data)."""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastadapt.datasets import miniimagenet as mi
from fastadapt.datasets.embeddings import UnsafePickleError
from fastadapt.datasets.miniimagenet_fixture import class_images, small_split, write_fixture
from fastadapt.errors import ConfigError, DataError
from fastadapt.tasks.samplers import EpisodeSampler

LAYOUTS = ("ravi", "learn2learn", "torchmeta", "folders")
PER_CLASS = 8


@pytest.fixture(autouse=True)
def cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh decoded-image cache for every test."""
    folder = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("FASTADAPT_CACHE", str(folder))
    monkeypatch.delenv("FASTADAPT_DATA", raising=False)
    return folder


def _fixture(tmp_path: Path, layout: str, **kwargs) -> Path:
    if layout == "torchmeta":
        pytest.importorskip("h5py")
    kwargs.setdefault("classes", small_split(3))
    kwargs.setdefault("per_class", PER_CLASS)
    return write_fixture(tmp_path / "mini-imagenet", layout, **kwargs)


def _expected_pixels(folder: Path, layout: str, synset: str, count: int) -> np.ndarray:
    """What the loader must produce for a class: the arrays for pickles/HDF5, the decoded JPEGs otherwise."""
    if layout in ("learn2learn", "torchmeta"):
        return class_images(synset, count).transpose(0, 3, 1, 2)
    if layout == "ravi":
        files = [folder / "images" / f"{synset}{i + 1:08d}.jpg" for i in range(count)]
    else:
        part = next(p for p in ("train", "val", "test") if (folder / p / synset).is_dir())
        files = [folder / part / synset / f"{synset}_{i:05d}.JPEG" for i in range(count)]
    return np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files]).transpose(0, 3, 1, 2)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_layout_loads_exact_pixels(tmp_path: Path, layout: str) -> None:
    folder = _fixture(tmp_path, layout)
    assert mi.locate(folder) == (layout, folder)
    splits = mi.load_miniimagenet(folder, split="as-found")
    expected_names = small_split(3)
    for part, split in splits.items():
        assert split.name == part
        assert split.class_names == sorted(expected_names[part])
        assert split.images.dtype == torch.uint8 and split.images.shape == (3 * PER_CLASS, 3, 84, 84)
        assert [len(ix) for ix in split.class_indices] == [PER_CLASS] * 3
        for c, synset in enumerate(split.class_names):
            got = split.images[torch.from_numpy(split.class_indices[c])].numpy()
            np.testing.assert_array_equal(got, _expected_pixels(folder, layout, synset, PER_CLASS))
        assert len(split.class_sources) == 3
    batch = EpisodeSampler(splits["train"], ways=3, shots=2, query=3, seed=0).sample(2)
    assert batch.support_x.shape == (2, 6, 3, 84, 84) and batch.query_x.shape == (2, 9, 3, 84, 84)
    assert 0.0 <= batch.support_x.min() and batch.support_x.max() <= 1.0


@pytest.mark.parametrize("layout", LAYOUTS)
def test_data_dir_may_hold_the_copy(tmp_path: Path, layout: str) -> None:
    """--data-dir may name the data directory that holds mini-imagenet/ (torchmeta: mini-imagenet/miniimagenet/)."""
    folder = _fixture(tmp_path, layout)
    assert mi.locate(tmp_path) == (layout, folder)
    splits = mi.load_miniimagenet(tmp_path, split="as-found")
    assert splits["val"].class_names == sorted(small_split(3)["val"])


def test_data_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _fixture(tmp_path, "learn2learn")
    monkeypatch.setenv("FASTADAPT_DATA", str(tmp_path))
    assert mi.locate(None) == ("learn2learn", folder)


def test_nothing_found_names_the_layouts(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no mini-ImageNet found in .*images/ with train\.csv.*class folders"):
        mi.load_miniimagenet(tmp_path)


def test_resized_when_asked(tmp_path: Path) -> None:
    folder = _fixture(tmp_path, "learn2learn")
    splits = mi.load_miniimagenet(folder, split="as-found", image_size=32)
    assert splits["test"].images.shape == (3 * PER_CLASS, 3, 32, 32)
    first = class_images(splits["test"].class_names[0], PER_CLASS)[0]
    resized = np.asarray(Image.fromarray(first).resize((32, 32), Image.BILINEAR)).transpose(2, 0, 1)
    np.testing.assert_array_equal(splits["test"].images[0].numpy(), resized)


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="split"):
        mi.load_miniimagenet(tmp_path, split="vinyals")
    with pytest.raises(ConfigError, match="--channels 3"):
        mi.load_miniimagenet(tmp_path, channels=1)


# --- the standard split ---------------------------------------------------------------------------------------


def test_standard_split_shipped() -> None:
    split = mi.standard_split()
    assert [len(split[p]) for p in ("train", "val", "test")] == [64, 16, 20]
    everything = [n for names in split.values() for n in names]
    assert len(set(everything)) == 100 and all(n.startswith("n") and len(n) == 9 for n in everything)
    assert split["train"][0] == "n01532829" and split["val"][0] == "n01855672" and split["test"][0] == "n01930112"


def test_full_standard_split_accepted(tmp_path: Path) -> None:
    folder = _fixture(tmp_path, "learn2learn", classes=mi.standard_split(), per_class=2)
    splits = mi.load_miniimagenet(folder)  # split="ravi": checked
    assert [splits[p].num_classes for p in ("train", "val", "test")] == [64, 16, 20]


def test_subset_refused_with_what_differs(tmp_path: Path) -> None:
    folder = _fixture(tmp_path, "ravi")
    with pytest.raises(DataError) as info:
        mi.load_miniimagenet(folder)
    message = str(info.value)
    assert "\n" not in message
    assert "train lacks 61 of its 64 classes" in message and "val lacks 13 of its 16" in message
    assert "--split as-found" in message


def test_misplaced_and_unknown_classes_named(tmp_path: Path) -> None:
    classes = mi.standard_split()
    moved = classes["test"].pop()
    classes["train"].append(moved)
    classes["val"].append("n99999999")
    folder = _fixture(tmp_path, "learn2learn", classes=classes, per_class=1)
    with pytest.raises(
        DataError, match=rf"train holds 1 class\(es\) of another part \({moved} belongs to test\)"
    ) as info:
        mi.load_miniimagenet(folder)
    assert "val holds 1 class(es) outside the split (n99999999)" in str(info.value)
    assert "test lacks 1 of its 20 classes" in str(info.value)


# --- the cache ------------------------------------------------------------------------------------------------


def _count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    decoded: list[Path] = []
    original = mi._decode_image

    def counting(path: Path, size: int) -> np.ndarray:
        decoded.append(path)
        return original(path, size)

    monkeypatch.setattr(mi, "_decode_image", counting)
    return decoded


def test_decoded_once_then_memory_mapped(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _fixture(tmp_path, "ravi")
    decoded = _count_decodes(monkeypatch)
    first = mi.load_miniimagenet(folder, split="as-found")
    assert len(decoded) == 9 * PER_CLASS
    entries = [p for p in (cache / "mini-imagenet").iterdir()]
    assert len(entries) == 1 and not entries[0].name.startswith(".")  # no temporary folder left
    assert sorted(p.name for p in entries[0].iterdir()) == ["meta.json", "test.npy", "train.npy", "val.npy"]
    second = mi.load_miniimagenet(folder, split="as-found")
    assert len(decoded) == 9 * PER_CLASS  # nothing decoded again
    for part in first:
        assert torch.equal(first[part].images, second[part].images)
    # the arrays are the cache file itself, mapped: its bytes are what the tensor holds
    on_disk = np.load(entries[0] / "train.npy", mmap_mode="r")
    assert isinstance(on_disk, np.memmap)
    np.testing.assert_array_equal(on_disk, second["train"].images.numpy())
    second["train"].images[0].zero_()  # copy-on-write: the cache file is not changed
    assert np.load(entries[0] / "train.npy", mmap_mode="r")[0].any()


def test_changed_source_decoded_again(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _fixture(tmp_path, "ravi")
    mi.load_miniimagenet(folder, split="as-found")
    (old_entry,) = list((cache / "mini-imagenet").iterdir())
    image = folder / "images" / f"{small_split(3)['train'][0]}00000001.jpg"
    Image.new("RGB", (84, 84), (255, 0, 0)).save(image, format="JPEG", quality=95)
    os.utime(image, ns=(1, 1))  # a different mtime even on a coarse-grained file system
    decoded = _count_decodes(monkeypatch)
    splits = mi.load_miniimagenet(folder, split="as-found")
    assert len(decoded) == 9 * PER_CLASS
    assert splits["train"].images[0, 0].float().mean() > 240  # the new red image
    (entry,) = list((cache / "mini-imagenet").iterdir())
    assert entry != old_entry  # the stale entry was removed


def test_unreadable_cache_folder_decodes_in_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _fixture(tmp_path, "learn2learn")
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("FASTADAPT_CACHE", str(blocker))
    splits = mi.load_miniimagenet(folder, split="as-found")
    assert splits["train"].images.shape[0] == 3 * PER_CLASS


def test_interrupted_decode_leaves_no_cache(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _fixture(tmp_path, "ravi")
    bad = folder / "images" / f"{small_split(3)['test'][1]}00000003.jpg"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated JPEG, met after train and val were decoded
    with pytest.raises(DataError):
        mi.load_miniimagenet(folder, split="as-found")
    assert list((cache / "mini-imagenet").iterdir()) == []


# --- errors: one line naming the file and the fix ---------------------------------------------------------------


def _one_line(info: pytest.ExceptionInfo) -> str:
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("layout", "remove", "named"),
    [
        ("ravi", "val.csv", r"val\.csv is missing.*twitter-research/meta-learning-lstm"),
        ("learn2learn", "mini-imagenet-cache-validation.pkl", r"mini-imagenet-cache-validation\.pkl is missing"),
        ("torchmeta", "test_labels.json", r"test_labels\.json is missing"),
        ("torchmeta", "val_data.hdf5", r"val_data\.hdf5 is missing"),
        ("folders", "test", r"test/ is missing.*sub-folder of images per class"),
    ],
)
def test_missing_split_file(tmp_path: Path, layout: str, remove: str, named: str) -> None:
    folder = _fixture(tmp_path, layout)
    target = folder / remove
    if target.is_dir():
        import shutil

        shutil.rmtree(target)
    else:
        target.unlink()
    with pytest.raises(DataError, match=named) as info:
        mi.load_miniimagenet(tmp_path, split="as-found")
    _one_line(info)


def test_truncated_pickle(tmp_path: Path) -> None:
    folder = _fixture(tmp_path, "learn2learn")
    path = folder / "mini-imagenet-cache-train.pkl"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(
        DataError, match=r"mini-imagenet-cache-train\.pkl is corrupt or not a pickle.*get it again"
    ) as info:
        mi.load_miniimagenet(folder, split="as-found")
    _one_line(info)


def test_pickle_that_would_run_code_is_refused(tmp_path: Path) -> None:
    folder = _fixture(tmp_path, "learn2learn")

    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo owned",))

    (folder / "mini-imagenet-cache-test.pkl").write_bytes(pickle.dumps({"image_data": Exploit(), "class_dict": {}}))
    with pytest.raises(UnsafePickleError, match=r"refusing to load (posix|nt)\.system"):
        mi.load_miniimagenet(folder, split="as-found")


def test_pickle_with_wrong_contents(tmp_path: Path) -> None:
    folder = _fixture(tmp_path, "learn2learn")
    path = folder / "mini-imagenet-cache-val.pkl"
    (folder / "mini-imagenet-cache-validation.pkl").unlink()
    path.write_bytes(pickle.dumps({"images": np.zeros(3)}))
    with pytest.raises(DataError, match=r"mini-imagenet-cache-val\.pkl: expected a dict with 'image_data'"):
        mi.load_miniimagenet(folder, split="as-found")


def test_truncated_hdf5(tmp_path: Path) -> None:
    folder = _fixture(tmp_path, "torchmeta")
    path = folder / "val_data.hdf5"
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(DataError, match=r"val_data\.hdf5 is not a readable HDF5 file.*copy it again") as info:
        mi.load_miniimagenet(folder, split="as-found")
    _one_line(info)


def test_hdf5_without_h5py(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _fixture(tmp_path, "torchmeta")
    monkeypatch.setitem(__import__("sys").modules, "h5py", None)
    with pytest.raises(DataError, match=r"needs h5py: pip install 'fastadapt\[hdf5\]'"):
        mi.load_miniimagenet(folder, split="as-found")


@pytest.mark.parametrize("layout", ["ravi", "folders"])
def test_corrupt_jpeg(tmp_path: Path, layout: str) -> None:
    folder = _fixture(tmp_path, layout)
    synset = small_split(3)["val"][2]
    bad = (
        folder / "images" / f"{synset}00000004.jpg"
        if layout == "ravi"
        else folder / "val" / synset / f"{synset}_00003.JPEG"
    )
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(DataError, match=rf"cannot decode {bad}.*replace it with an intact copy") as info:
        mi.load_miniimagenet(folder, split="as-found")
    _one_line(info)


def test_listed_image_missing(tmp_path: Path) -> None:
    folder = _fixture(tmp_path, "ravi")
    missing = folder / "images" / f"{small_split(3)['train'][0]}00000002.jpg"
    missing.unlink()
    with pytest.raises(DataError, match=rf"{missing} \(listed in .*train\.csv\) is missing"):
        mi.load_miniimagenet(folder, split="as-found")


def test_csv_without_header(tmp_path: Path) -> None:
    folder = _fixture(tmp_path, "ravi")
    (folder / "test.csv").write_text("a.jpg,n01930112\n")
    with pytest.raises(DataError, match=r"test\.csv does not start with the header filename,label"):
        mi.load_miniimagenet(folder, split="as-found")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_class_too_small_names_its_source(tmp_path: Path, layout: str) -> None:
    small = small_split(3)["train"][1]
    folder = _fixture(
        tmp_path, layout, per_class={**{n: PER_CLASS for p in small_split(3).values() for n in p}, small: 4}
    )
    splits = mi.load_miniimagenet(folder, split="as-found")
    mi.check_class_sizes(splits["train"], shots=1, query=3)  # 4 images suffice
    with pytest.raises(DataError) as info:
        mi.check_class_sizes(splits["train"], shots=5, query=15)
    message = _one_line(info)
    assert f"class {small} of the train split has 4 images" in message
    assert "5 shots + 15 queries need 20" in message and "at most 4" in message
    where = {"ravi": "train.csv", "learn2learn": "mini-imagenet-cache-train.pkl", "torchmeta": "train_data.hdf5"}
    assert where.get(layout, f"train/{small}") in message


# --- the report for `fastadapt datasets` -----------------------------------------------------------------------


def test_report_counts_and_cache(tmp_path: Path) -> None:
    folder = _fixture(tmp_path, "folders")
    report = mi.inspect_miniimagenet(tmp_path)
    assert report.layout == "folders" and report.folder == folder and not report.cached
    assert {p: (r.classes, r.images, r.fewest) for p, r in report.parts.items()} == {
        p: (3, 3 * PER_CLASS, PER_CLASS) for p in ("train", "val", "test")
    }
    lines = report.lines()
    assert lines[0] == f"mini-imagenet: class folders train/<class>/, val/<class>/, test/<class>/ in {folder}"
    assert lines[1] == f"  train 3 classes, {3 * PER_CLASS} images (at least {PER_CLASS} per class)"
    assert "differs from Ravi & Larochelle's 64/16/20: train lacks 61 of its 64 classes" in lines[4]
    assert lines[5].endswith("not decoded yet (decoded once, on first use)")
    mi.load_miniimagenet(tmp_path, split="as-found")
    assert mi.inspect_miniimagenet(tmp_path).cached


def test_report_full_split_and_pickles(tmp_path: Path) -> None:
    _fixture(tmp_path, "learn2learn", classes=mi.standard_split(), per_class=1)
    lines = mi.inspect_miniimagenet(tmp_path).lines()
    assert lines[1:4] == [
        "  train 64 classes, 64 images (at least 1 per class)",
        "  val   16 classes, 16 images (at least 1 per class)",
        "  test  20 classes, 20 images (at least 1 per class)",
    ]
    assert lines[4] == "  split: Ravi & Larochelle's 64/16/20 classes"


def test_report_missing_part_and_nothing(tmp_path: Path) -> None:
    folder = _fixture(tmp_path, "ravi")
    (folder / "test.csv").unlink()
    report = mi.inspect_miniimagenet(folder)
    assert report.parts["test"].problem and "test.csv is missing" in report.parts["test"].problem
    assert any(line.startswith("  test  missing or unreadable:") for line in report.lines())
    empty = tmp_path / "empty"
    empty.mkdir()
    assert mi.inspect_miniimagenet(empty).lines()[0].startswith("mini-imagenet: not found (no mini-ImageNet found in")


def test_download_says_why_not(tmp_path: Path) -> None:
    from fastadapt.datasets.download import download_miniimagenet

    with pytest.raises(DataError, match="no stable public download.*learn2learn's mini-imagenet-cache") as info:
        download_miniimagenet(tmp_path)
    _one_line(info)


def test_fixture_jpegs_are_real_jpegs(tmp_path: Path) -> None:
    folder = _fixture(tmp_path, "ravi")
    data = next((folder / "images").iterdir()).read_bytes()
    assert Image.open(io.BytesIO(data)).format == "JPEG"
