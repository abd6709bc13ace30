"""LEO's pipeline from the command line: pretrain -> embed -> train -> eval on a tiny image folder, and the
errors a user can run into on the way."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from helpers import make_image_folder

from fastadapt.cli import main


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("data") / "images", size=16)


def test_pretrain_embed_train_eval_end_to_end(folder: Path, tmp_path: Path, capsys):
    pre, emb, run = tmp_path / "pre", tmp_path / "emb", tmp_path / "leo"
    common = ["--dataset", "folder", "--data-dir", str(folder), "--image-size", "16", "--quiet"]
    assert (
        main(["pretrain", *common, "--epochs", "2", "--batch-size", "16", "--val-episodes", "5", "--out", str(pre)])
        == 0
    )
    assert (pre / "pretrain.pt").is_file()
    assert [json.loads(line)["epoch"] for line in (pre / "pretrain_metrics.jsonl").read_text().splitlines()] == [1, 2]

    assert main(["embed", "--checkpoint", str(pre / "pretrain.pt"), "--out", str(emb), "--quiet"]) == 0
    meta = json.loads((emb / "meta.json").read_text())
    assert meta["embedding_dim"] == 64 and meta["network"] == "conv4"
    with np.load(emb / "train.npz") as d:
        assert d["embeddings"].shape == (13 * 6, 64)  # every image of the 13 training classes, once
        # rescaled to unit mean length on the training images, by the factor meta.json records
        assert np.linalg.norm(d["embeddings"], axis=1).mean() == pytest.approx(1.0, rel=1e-4)
    assert meta["feature_scale"] > 0 and meta["feature_scale"] != pytest.approx(1.0)

    train = ["train", "--algorithm", "leo", "--dataset", "embeddings", "--data-dir", str(emb), "--ways", "3"]
    train += ["--shots", "1", "--query", "2", "--eval-query", "3", "--meta-batch-size", "2", "--steps", "4"]
    train += ["--val-every", "2", "--val-episodes", "4", "--test-episodes", "6", "--out", str(run), "--quiet"]
    assert main(train) == 0
    result = json.loads((run / "eval.json").read_text())
    assert result["algorithm"] == "leo" and result["episodes"] == 6 and 0 <= result["accuracy_mean"] <= 1

    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run / "best.pt"), "--episodes", "8", "--shots", "2", "--quiet"]) == 0
    assert "leo embeddings 3-way 2-shot" in capsys.readouterr().out


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fastadapt: error: "), err
    return err[0]


def test_leo_on_images_says_to_pretrain_and_embed_first(capsys):
    assert main(["train", "--algorithm", "leo", "--dataset", "omniglot", "--quiet"]) == 2
    assert "fastadapt pretrain" in error_line(capsys)


def test_embeddings_without_data_dir_or_with_an_empty_one(tmp_path, capsys):
    assert main(["train", "--algorithm", "leo", "--dataset", "embeddings", "--quiet"]) == 2
    assert "--data-dir" in error_line(capsys)
    assert main(["train", "--algorithm", "leo", "--dataset", "embeddings", "--data-dir", str(tmp_path)]) == 2
    assert "no embeddings in" in error_line(capsys)


def test_embed_refuses_a_missing_or_meta_training_checkpoint(tmp_path, capsys):
    assert main(["embed", "--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path / "e")]) == 2
    assert "checkpoint not found" in error_line(capsys)
    from fastadapt.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "best.pt", {"config": {}, "model": {}})
    assert main(["embed", "--checkpoint", str(tmp_path / "best.pt"), "--out", str(tmp_path / "e")]) == 2
    assert "not a `fastadapt pretrain` checkpoint" in error_line(capsys)


def test_pretrain_rejects_a_regression_data_set(capsys):
    assert main(["pretrain", "--dataset", "sinusoid", "--quiet"]) == 2
    assert "image data set" in error_line(capsys)


def test_cosine_head_scores_direction_only_and_pretrains_with_augmentation(folder: Path, tmp_path: Path):
    import torch

    from fastadapt.pretrain import CosineHead

    head = CosineHead(4, 3, scale=10.0)
    features = torch.randn(5, 4)
    # scaling a feature vector leaves its logits unchanged, and no logit exceeds the scale
    torch.testing.assert_close(head(features), head(7.0 * features))
    assert head(features).abs().max() <= 10.0 + 1e-5

    pre = tmp_path / "pre"
    args = ["pretrain", "--dataset", "folder", "--data-dir", str(folder), "--image-size", "16", "--quiet"]
    args += [
        "--head",
        "cosine",
        "--augment",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--val-episodes",
        "5",
        "--out",
        str(pre),
    ]
    assert main(args) == 0
    state = torch.load(pre / "pretrain.pt", weights_only=False)
    assert state["config"]["head"] == "cosine" and state["config"]["augment"] and "log_scale" in state["head"]


def test_random_affine_moves_images_and_is_the_identity_at_zero_strength():
    import torch

    from fastadapt.tasks.augment import random_affine

    images = torch.rand(4, 1, 12, 12)
    same = random_affine(images, torch.Generator().manual_seed(0), degrees=0.0, scale=0.0, shift=0.0)
    torch.testing.assert_close(same, images)
    moved = random_affine(images, torch.Generator().manual_seed(0))
    assert moved.shape == images.shape and not torch.allclose(moved, images)
    # each image of the batch gets its own transform
    twins = random_affine(images[:1].expand(2, -1, -1, -1), torch.Generator().manual_seed(1))
    assert not torch.allclose(twins[0], twins[1])


def test_pretrain_names_an_unknown_head(capsys):
    assert main(["pretrain", "--dataset", "omniglot", "--head", "bogus", "--quiet"]) == 2
    assert "unknown --head 'bogus'; choose one of: linear, cosine" in error_line(capsys)


# --- what fuzzing found (tests/fuzzing.py, bench/fuzz_loaders.py) ------------------------------------------------


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--lr", "nan"], "--lr must be a finite number"),  # reached Adam, which raised ValueError
        (["--weight-decay=-inf"], "--weight-decay must be a finite number"),
        (["--seed=-1"], "--seed must be between 0 and 2\\*\\*62"),  # numpy's ValueError escaped
        (["--seed", str(10**30)], "--seed must be between 0 and 2\\*\\*62"),  # torch's overflow escaped
        (["--image-size", "0"], "--image-size must be at least 1"),
    ],
)
def test_pretrain_values_are_checked_before_any_work(folder: Path, tmp_path: Path, capsys, flags, needle) -> None:
    argv = ["pretrain", "--dataset", "folder", "--data-dir", str(folder), "--out", str(tmp_path / "p"), "--quiet"]
    assert main([*argv, *flags]) == 2
    assert re.search(needle, error_line(capsys))
    assert not (tmp_path / "p").exists()


def test_embed_values_and_outputs_are_checked_before_any_work(folder: Path, tmp_path: Path, capsys) -> None:
    pre = tmp_path / "pre"
    common = ["--dataset", "folder", "--data-dir", str(folder), "--image-size", "16", "--quiet"]
    assert main(["pretrain", *common, "--epochs", "1", "--val-episodes", "2", "--out", str(pre)]) == 0
    embed = ["embed", "--checkpoint", str(pre / "pretrain.pt"), "--quiet"]
    for size in ("0", "-3"):  # range() with step 0 and torch.cat of nothing escaped before
        assert main([*embed, "--out", str(tmp_path / "e"), "--batch-size", size]) == 2
        assert "--batch-size must be at least 1" in error_line(capsys)
    (tmp_path / "a-file").write_text("")
    assert main([*embed, "--out", str(tmp_path / "a-file" / "e")]) == 2  # NotADirectoryError escaped before
    assert "cannot create the output folder" in error_line(capsys)


def test_a_failed_embed_leaves_no_partial_set(folder: Path, tmp_path: Path, monkeypatch) -> None:
    import fastadapt.pretrain as pretrain_module
    from fastadapt.config import PretrainConfig
    from fastadapt.errors import OutputError

    config = PretrainConfig(dataset="folder", data_dir=str(folder), image_size=16, epochs=1, val_episodes=2)
    pre = pretrain_module.pretrain(replace(config, out=str(tmp_path / "pre")), progress=False)
    real = pretrain_module.write_embedding_split

    def full_disk_at_test(path, *args):
        if path.name == "test.npz":
            raise OutputError(f"could not write {path} (No space left on device)")
        real(path, *args)

    monkeypatch.setattr(pretrain_module, "write_embedding_split", full_disk_at_test)
    with pytest.raises(OutputError):
        pretrain_module.embed(Path(pre["checkpoint"]), tmp_path / "emb")
    assert list((tmp_path / "emb").iterdir()) == []


@pytest.mark.parametrize("edit", ["extra weight", "setting", "record", "open size"])
def test_an_edited_pretrain_checkpoint_is_one_line(folder: Path, tmp_path: Path, edit: str) -> None:
    import torch

    from fastadapt.config import PretrainConfig
    from fastadapt.errors import FastAdaptError
    from fastadapt.pretrain import load_backbone, pretrain

    config = PretrainConfig(dataset="folder", data_dir=str(folder), image_size=16, epochs=1, val_episodes=2)
    pretrain(replace(config, out=str(tmp_path / "pre")), progress=False)
    state = torch.load(tmp_path / "pre" / "pretrain.pt", weights_only=True)
    if edit == "extra weight":  # load_state_dict's RuntimeError escaped before
        state["model"]["extra"] = torch.zeros(1)
    elif edit == "setting":  # built a backbone for 0-pixel images before
        state["config"]["image_size"] = 0
    elif edit == "open size":  # a TypeError escaped (an image size left open, as a command line may leave it)
        state["config"]["image_size"] = None
    else:  # embed's KeyError escaped before
        del state["feature_dim"]
    torch.save(state, tmp_path / "edited.pt")
    expected = r"edited\.pt.*(do not fit|--image-size must be|no feature_dim|no image_size)"
    with pytest.raises(FastAdaptError, match=expected):
        load_backbone(tmp_path / "edited.pt")
