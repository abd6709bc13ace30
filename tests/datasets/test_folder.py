"""Tests for loading a user's folder of class sub-folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastadapt.datasets.folder import load_image_folder
from fastadapt.errors import ConfigError, DataError
from fastadapt.tasks.samplers import EpisodeSampler

CLASSES = [f"class_{i:02d}" for i in range(9)]
PER_CLASS = 6


def _write_image(path: Path, rng: np.random.Generator, rgb: bool) -> None:
    h, w = (int(v) for v in rng.integers(8, 40, size=2))
    shape = (h, w, 3) if rgb else (h, w)
    Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8)).save(path)


def make_folder(root: Path, classes: list[str] = CLASSES, per_class: int = PER_CLASS) -> Path:
    """``classes`` sub-folders of ``per_class`` random images: mixed sizes, RGB and grayscale, one .JPG,
    plus files that must be ignored (hidden, non-image, a loose file in the root)."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for c, name in enumerate(classes):
        d = root / name
        d.mkdir()
        for k in range(per_class):
            special = {(0, 0): ".JPG", (1, 0): ".gif", (2, 0): ".webp"}
            suffix = special.get((c, k), (".png", ".bmp", ".jpeg")[k % 3])
            _write_image(d / f"img{k}{suffix}", rng, rgb=bool((c + k) % 2))
        (d / "notes.txt").write_text("not an image")
        (d / ".hidden.png").write_bytes(b"junk")
    (root / ".git").mkdir()
    (root / "README.md").write_text("my data")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder(tmp_path_factory.mktemp("data") / "images")


def _write_split(d: Path, train: str, val: str, test: str) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for part, text in (("train", train), ("val", val), ("test", test)):
        (d / f"{part}.txt").write_text(text)
    return d


@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_dtypes_and_channels(folder: Path, channels: int) -> None:
    splits = load_image_folder(folder, image_size=16, channels=channels)
    assert set(splits) == {"train", "val", "test"}
    for name, split in splits.items():
        assert split.name == name
        assert split.images.dtype == torch.uint8
        assert split.images.shape == (split.num_classes * PER_CLASS, channels, 16, 16)
        assert split.class_names == sorted(split.class_names)
        assert all(len(ix) == PER_CLASS for ix in split.class_indices)
        rows = np.concatenate(split.class_indices)
        assert sorted(rows.tolist()) == list(range(len(split.images)))
    assert splits["train"].images.float().std() > 10  # real pixel data, not zeros


def test_grayscale_and_rgb_content(tmp_path: Path) -> None:
    root = tmp_path / "img"
    for name, colour in (("red", (255, 0, 0)), ("green", (0, 255, 0)), ("blue", (0, 0, 255))):
        (root / name).mkdir(parents=True)
        Image.new("RGB", (10, 30), colour).save(root / name / "a.png")
    splits = load_image_folder(root, image_size=8, channels=3)
    for split in splits.values():
        (name,) = split.class_names
        pixel = split.images[0, :, 4, 4].tolist()
        assert pixel == {"red": [255, 0, 0], "green": [0, 255, 0], "blue": [0, 0, 255]}[name]
    gray = load_image_folder(root, image_size=8, channels=1)
    assert all(s.images.shape == (1, 1, 8, 8) for s in gray.values())


def test_random_split_disjoint_and_covering(folder: Path) -> None:
    splits = load_image_folder(folder, image_size=8)
    names = [set(s.class_names) for s in splits.values()]
    assert all(names)
    assert set.union(*names) == set(CLASSES)
    assert sum(len(n) for n in names) == len(CLASSES)
    assert [len(n) for n in names] == [6, 1, 2]  # 9 classes by (0.64, 0.16, 0.20)


def test_split_reproducible_for_seed_and_varies_with_seed(folder: Path) -> None:
    a = load_image_folder(folder, image_size=8, split_seed=3)
    b = load_image_folder(folder, image_size=8, split_seed=3)
    for part in a:
        assert a[part].class_names == b[part].class_names
        assert torch.equal(a[part].images, b[part].images)
    partitions = {
        tuple(tuple(s.class_names) for s in load_image_folder(folder, image_size=8, split_seed=seed).values())
        for seed in range(4)
    }
    assert len(partitions) > 1


def test_three_classes_get_one_each(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "img", classes=["a", "b", "c"], per_class=2)
    splits = load_image_folder(root, image_size=8)
    assert sorted(n for s in splits.values() for n in s.class_names) == ["a", "b", "c"]
    assert all(s.num_classes == 1 for s in splits.values())


def test_split_files_honoured(folder: Path, tmp_path: Path) -> None:
    split_dir = _write_split(
        tmp_path / "split",
        "# training classes\nclass_03\nclass_00\n\nclass_05  # comment\nclass_07\n",
        "class_01\n",
        "class_02\nclass_08\n",
    )
    splits = load_image_folder(folder, image_size=8, split=str(split_dir), split_seed=123)
    assert splits["train"].class_names == ["class_00", "class_03", "class_05", "class_07"]
    assert splits["val"].class_names == ["class_01"]
    assert splits["test"].class_names == ["class_02", "class_08"]
    assert len(splits["train"].images) == 4 * PER_CLASS


def test_split_file_unknown_class(folder: Path, tmp_path: Path) -> None:
    split_dir = _write_split(tmp_path / "split", "class_00\nclass_99\n", "class_01\n", "class_02\n")
    with pytest.raises(DataError, match=r"'class_99'.*train\.txt"):
        load_image_folder(folder, split=split_dir)


def test_split_file_class_in_two_splits(folder: Path, tmp_path: Path) -> None:
    split_dir = _write_split(tmp_path / "split", "class_00\nclass_01\n", "class_01\n", "class_02\n")
    with pytest.raises(DataError, match=r"'class_01'.*both.*train\.txt.*val\.txt"):
        load_image_folder(folder, split=split_dir)


def test_split_file_missing(folder: Path, tmp_path: Path) -> None:
    split_dir = tmp_path / "split"
    split_dir.mkdir()
    (split_dir / "train.txt").write_text("class_00\n")
    with pytest.raises(DataError, match=r"val\.txt is missing"):
        load_image_folder(folder, split=split_dir)
    with pytest.raises(DataError, match="split folder not found"):
        load_image_folder(folder, split=tmp_path / "nope")


def test_root_missing(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"not found.*one sub-folder per class"):
        load_image_folder(tmp_path / "does_not_exist")


def test_no_class_folders(tmp_path: Path) -> None:
    (tmp_path / "loose.png").write_bytes(b"")
    (tmp_path / ".hidden").mkdir()
    with pytest.raises(DataError, match=r"no class sub-folders.*one sub-folder per class"):
        load_image_folder(tmp_path)


def test_class_folder_without_images(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "img", classes=["a", "b", "c"], per_class=2)
    (root / "empty").mkdir()
    (root / "empty" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match=r"empty holds no images.*remove the folder"):
        load_image_folder(root)


def test_undecodable_image(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "img", classes=["a", "b", "c"], per_class=2)
    (root / "b" / "broken.jpg").write_bytes(b"this is not a jpeg")
    with pytest.raises(DataError, match=r"broken\.jpg.*remove or replace"):
        load_image_folder(root)


def test_too_few_classes(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "img", classes=["a", "b"], per_class=2)
    with pytest.raises(DataError, match=r"2 classes.*at least 3"):
        load_image_folder(root)


def test_bad_arguments(folder: Path) -> None:
    with pytest.raises(ConfigError, match="channels"):
        load_image_folder(folder, channels=2)
    with pytest.raises(ConfigError, match="fractions"):
        load_image_folder(folder, fractions=(0.5, 0.5, 0.5))


def test_episode_sampler_on_result(folder: Path) -> None:
    splits = load_image_folder(folder, image_size=12, channels=3, split_seed=1)
    sampler = EpisodeSampler(splits["train"], ways=3, shots=2, query=3, seed=0)
    batch = sampler.sample(4)
    assert batch.support_x.shape == (4, 3 * 2, 3, 12, 12)
    assert batch.query_x.shape == (4, 3 * 3, 3, 12, 12)
    assert batch.support_x.dtype == torch.float32
    assert 0.0 <= batch.support_x.min() and batch.support_x.max() <= 1.0
    assert batch.support_y.shape == (4, 6)


# --- colour and size chosen from the images --------------------------------------------------------------------


def _photos(
    root: Path, size: tuple[int, int], mode: str, classes: int = 3, per_class: int = 3, fmt: str = "JPEG"
) -> Path:
    """Smooth images (JPEG-friendly): colour gradients for "RGB", one grey level per pixel for "L", and grey
    images stored as RGB for "RGB-gray"."""
    rng = np.random.default_rng(1)
    w, h = size
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        for k in range(per_class):
            ramp = np.linspace(0, 255, w, dtype=np.float32)[None, :].repeat(h, 0)
            if mode == "RGB":
                pixels = np.stack([ramp, ramp[::-1, ::-1], np.full_like(ramp, rng.uniform(0, 255))], -1)
                img = Image.fromarray(pixels.astype(np.uint8), "RGB")
            else:
                img = Image.fromarray(ramp.astype(np.uint8), "L")
                if mode == "RGB-gray":
                    img = img.convert("RGB")
            img.save(root / f"c{c}" / f"{k}.{'jpg' if fmt == 'JPEG' else 'png'}", format=fmt)
    return root


@pytest.mark.parametrize(
    ("mode", "size", "fmt", "channels", "image_size"),
    [
        ("RGB", (400, 300), "JPEG", 3, 84),  # photos: colour, capped at 84
        ("RGB-gray", (400, 300), "JPEG", 1, 84),  # grey photos saved as RGB JPEGs: no colour
        ("L", (28, 28), "PNG", 1, 28),  # small grayscale images keep their size
        ("RGB", (40, 60), "PNG", 3, 40),  # the shorter side
        ("L", (10, 12), "PNG", 1, 16),  # raised to 16 for Conv-4's four halvings
    ],
)
def test_format_chosen_from_images(tmp_path: Path, mode: str, size, fmt: str, channels: int, image_size: int) -> None:
    from fastadapt.datasets.folder import detect_format

    root = _photos(tmp_path / "img", size, mode, fmt=fmt)
    chosen = detect_format(root)
    assert (chosen.channels, chosen.image_size) == (channels, image_size)
    assert "\n" not in chosen.description and "--channels and --image-size override" in chosen.description
    assert ("RGB" if channels == 3 else "grayscale") in chosen.description
    splits = load_image_folder(root)  # None: chosen the same way
    assert splits["train"].images.shape[1:] == (channels, image_size, image_size)


def test_format_description_says_why(tmp_path: Path) -> None:
    from fastadapt.datasets.folder import detect_format

    root = _photos(tmp_path / "img", (400, 300), "RGB", classes=4, per_class=5)
    chosen = detect_format(root)
    assert chosen.description == (
        f"{root}: 4 classes, loaded as RGB 84x84 (colour in 16 of 16 sampled images; median shorter side 300 px, "
        f"capped at 84); --channels and --image-size override"
    )


def test_flags_override_detection(tmp_path: Path) -> None:
    from fastadapt.datasets.folder import detect_format

    root = _photos(tmp_path / "img", (400, 300), "RGB")
    chosen = detect_format(root, image_size=32, channels=1)
    assert (chosen.channels, chosen.image_size) == (1, 32)
    assert "(--channels 1; --image-size 32)" in chosen.description
    assert detect_format(root, channels=1).image_size == 84
    assert detect_format(root, image_size=20).channels == 3
    assert load_image_folder(root, image_size=12, channels=1)["train"].images.shape[1:] == (1, 12, 12)


def test_one_colour_image_makes_rgb(tmp_path: Path) -> None:
    """Grey images lose nothing as RGB; colour ones lose their colour as grayscale, so one is enough."""
    from fastadapt.datasets.folder import detect_format

    root = _photos(tmp_path / "img", (30, 30), "L", fmt="PNG")
    Image.new("RGB", (30, 30), (200, 30, 30)).save(root / "c1" / "0.png")
    chosen = detect_format(root)
    assert chosen.channels == 3 and "colour in 1 of 9 sampled images" in chosen.description


def test_detection_names_an_unreadable_file(tmp_path: Path) -> None:
    from fastadapt.datasets.folder import detect_format

    root = _photos(tmp_path / "img", (30, 30), "L", fmt="PNG")
    (root / "c0" / "0.png").write_bytes(b"junk")
    with pytest.raises(DataError, match=r"0\.png.*remove or replace"):
        detect_format(root)
