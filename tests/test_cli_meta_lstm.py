"""``fastadapt train/eval --algorithm meta-lstm`` end to end on a tiny image folder."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import make_image_folder

from fastadapt.cli import main


def test_meta_lstm_train_then_eval_on_folder(tmp_path: Path, capsys) -> None:
    folder = make_image_folder(tmp_path / "images", size=16)
    out = tmp_path / "run"
    argv = ["train", "--algorithm", "meta-lstm", "--dataset", "folder", "--data-dir", str(folder)]
    argv += ["--image-size", "16", "--ways", "3", "--shots", "1", "--query", "2", "--eval-query", "2"]
    argv += ["--inner-steps", "2", "--steps", "2", "--val-every", "2", "--val-episodes", "2"]
    argv += ["--test-episodes", "3", "--out", str(out), "--quiet"]
    assert main(argv) == 0, capsys.readouterr().err
    stdout = capsys.readouterr().out
    assert "trained 2 steps" in stdout and "meta-lstm folder 3-way 1-shot" in stdout
    result = json.loads((out / "eval.json").read_text())
    assert result["algorithm"] == "meta-lstm" and result["episodes"] == 3
    assert 0.0 <= result["accuracy_mean"] <= 1.0
    checkpoint = str(out / "best.pt")
    assert main(["eval", "--checkpoint", checkpoint, "--episodes", "2", "--out", str(tmp_path / "e"), "--quiet"]) == 0
    assert json.loads((tmp_path / "e" / "eval.json").read_text())["episodes"] == 2


def test_meta_lstm_refuses_regression_with_one_error_line(capsys) -> None:
    assert main(["train", "--algorithm", "meta-lstm", "--dataset", "sinusoid", "--steps", "1"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("fastadapt: error: --algorithm meta-lstm is a classification method")
