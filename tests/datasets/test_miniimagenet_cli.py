"""``fastadapt train --dataset mini-imagenet`` on each layout's fixture, from the CLI, trains a few steps and
evaluates; the mini-ImageNet presets (in each method's file) are valid configurations; `fastadapt datasets` and
`fastadapt download mini-imagenet` say what they found."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from fastadapt.algorithms.registry import algorithms
from fastadapt.cli import build_parser, main, train_settings
from fastadapt.config import make_config, presets
from fastadapt.datasets.miniimagenet_fixture import small_split, write_fixture

DOCS = Path(__file__).resolve().parents[2] / "docs" / "data.md"


@pytest.fixture(autouse=True)
def cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The decoded-image cache in the test's own folder."""
    monkeypatch.setenv("FASTADAPT_CACHE", str(tmp_path / "cache"))


def _train_args(data_dir: Path, out: Path, algorithm: str = "protonet", *extra: str) -> list[str]:
    return [
        "train", "--algorithm", algorithm, "--dataset", "mini-imagenet", "--data-dir", str(data_dir),
        "--split", "as-found", "--image-size", "32", "--ways", "3", "--train-ways", "3", "--shots", "1",
        "--query", "2", "--eval-query", "2", "--steps", "2", "--val-every", "2", "--val-episodes", "2",
        "--test-episodes", "3", "--meta-batch-size", "1", "--network", "conv4-8", "--quiet", "--out", str(out),
        *extra,
    ]  # fmt: skip


@pytest.mark.parametrize("layout", ["ravi", "learn2learn", "torchmeta", "folders"])
def test_train_and_evaluate_each_layout(tmp_path: Path, layout: str, capsys) -> None:
    if layout == "torchmeta":
        pytest.importorskip("h5py")
    write_fixture(tmp_path / "data" / "mini-imagenet", layout, classes=small_split(3), per_class=5)
    out = tmp_path / "run"
    assert main(_train_args(tmp_path / "data", out)) == 0, capsys.readouterr().err
    result = json.loads((out / "eval.json").read_text())
    assert result["dataset"] == "mini-imagenet" and result["episodes"] == 3
    assert 0.0 <= result["accuracy_mean"] <= 1.0
    saved = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert saved["step"] == 2


def test_maml_preset_trains(tmp_path: Path, capsys) -> None:
    """MAML with its mini-ImageNet preset (5 inner steps of 0.01, 10 at test), shrunk to a few tiny steps."""
    write_fixture(tmp_path / "data" / "mini-imagenet", "learn2learn", classes=small_split(3), per_class=5)
    out = tmp_path / "maml"
    code = main(_train_args(tmp_path / "data", out, "maml", "--eval-inner-steps", "2", "--strategy", "loop"))
    assert code == 0, capsys.readouterr().err
    config = json.loads((out / "eval.json").read_text())
    assert config["algorithm"] == "maml"


def test_class_too_small_is_one_line_naming_the_file(tmp_path: Path, capsys) -> None:
    small = small_split(3)["train"][0]
    write_fixture(tmp_path / "data" / "mini-imagenet", "ravi", classes=small_split(3), per_class={small: 2})
    assert main(_train_args(tmp_path / "data", tmp_path / "run", "protonet", "--shots", "2")) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("fastadapt: error: class ")
    assert f"class {small} of the train split has 2 images" in err and "train.csv" in err


@pytest.mark.parametrize("broken", ["truncated pickle", "missing split file", "corrupt jpeg", "wrong split"])
def test_broken_copies_are_one_line(tmp_path: Path, broken: str, capsys) -> None:
    layout = {"truncated pickle": "learn2learn", "missing split file": "ravi"}.get(broken, "folders")
    folder = write_fixture(tmp_path / "data" / "mini-imagenet", layout, classes=small_split(3), per_class=5)
    args = _train_args(tmp_path / "data", tmp_path / "run")
    if broken == "truncated pickle":
        path = folder / "mini-imagenet-cache-test.pkl"
        path.write_bytes(path.read_bytes()[:1000])
    elif broken == "missing split file":
        (folder / "val.csv").unlink()
    elif broken == "corrupt jpeg":
        next((folder / "train").glob("*/*.JPEG")).write_bytes(b"garbage")
    else:
        args[args.index("as-found")] = "ravi"
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("fastadapt: error: ")
    expected = {
        "truncated pickle": "mini-imagenet-cache-test.pkl is corrupt",
        "missing split file": "val.csv is missing",
        "corrupt jpeg": "cannot decode",
        "wrong split": "does not have Ravi & Larochelle's 64/16/20 class split",
    }[broken]
    assert expected in err


# --- presets ------------------------------------------------------------------------------------------------------


def test_every_method_on_images_has_a_valid_preset() -> None:
    """Each image method's paper configuration, 5-way 1-shot, with the data set's protocol (84x84 colour, Ravi &
    Larochelle's split, 15 test queries, 600 test episodes)."""
    with_preset = {name for name, spec in algorithms().items() if "mini-imagenet" in spec.presets}
    assert with_preset == {"maml", "maml++", "anil", "metasgd", "reptile", "meta-lstm", "protonet", "matching",
                           "relation"}  # fmt: skip
    for name in with_preset:
        config = make_config(name, "mini-imagenet")
        assert (config.shots, config.ways, config.image_size, config.channels) == (1, 5, 84, 3), name
        assert (config.split, config.eval_query, config.test_episodes) == ("ravi", 15, 600), name


def test_maml_preset_is_finn_et_al() -> None:
    maml = make_config("maml", "mini-imagenet")
    assert (maml.network, maml.inner_lr, maml.inner_steps, maml.eval_inner_steps, maml.query) == (
        "conv4-32",
        0.01,
        5,
        10,
        15,
    )
    assert maml.meta_batch_size == 4 and presets("anil", "mini-imagenet") == presets("maml", "mini-imagenet")
    metasgd = make_config("metasgd", "mini-imagenet")
    assert metasgd.inner_steps == metasgd.eval_inner_steps == 1
    assert make_config("protonet", "mini-imagenet").train_ways == 30
    assert make_config("relation", "mini-imagenet").query == 15
    plus = make_config("maml++", "mini-imagenet")
    assert (plus.network, plus.meta_batch_size, plus.first_order_steps) == ("conv4-48", 2, 0)


def _documented_commands() -> list[str]:
    """The `fastadapt train ... --dataset mini-imagenet ...` commands in docs/data.md (the 5-shot lines)."""
    return re.findall(r"`(fastadapt train [^`]*--dataset mini-imagenet[^`]*)`", DOCS.read_text())


def test_the_documented_five_shot_lines_are_ready() -> None:
    """Each 5-shot line of the docs' table parses and makes a valid 5-shot configuration."""
    commands = _documented_commands()
    five_shot = [c for c in commands if "--shots 5" in c]
    assert len(five_shot) >= 10, commands
    for command in commands:
        args = build_parser().parse_args(shlex.split(command)[1:])
        algorithm, dataset, settings = train_settings(args)
        config = make_config(algorithm, dataset, **settings)
        if "--shots 5" in command:
            assert config.shots == 5, command
    maml5 = next(c for c in five_shot if "--algorithm maml " in c)
    assert "--meta-batch-size 2" in maml5  # Finn et al.: meta-batch 2 for 5-shot


# --- what the commands say -------------------------------------------------------------------------------------------


def test_datasets_reports_the_copy(tmp_path: Path, capsys) -> None:
    write_fixture(tmp_path / "data" / "mini-imagenet", "learn2learn", classes=small_split(3), per_class=5)
    assert main(["datasets", "--data-dir", str(tmp_path / "data")]) == 0
    out = capsys.readouterr().out
    assert f"mini-imagenet: learn2learn's mini-imagenet-cache-{{train,validation,test}}.pkl in {tmp_path}" in out
    assert "train 3 classes, 15 images (at least 5 per class)" in out
    assert "split: differs from Ravi & Larochelle's" in out


def test_download_says_there_is_none(capsys) -> None:
    assert main(["download", "mini-imagenet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("fastadapt: error: mini-ImageNet has no stable public download")
