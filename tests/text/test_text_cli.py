"""Text through the command line: `fastadapt train --dataset text|clinc150`, exact resume, eval.json, `fastadapt
fewshot-text`, and the one-line errors users see (exit code 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from text_fixtures import fake_encoder_folder, use_fake_encoder, write_clinc_fixture, write_csv

import fastadapt.train as train_module
from fastadapt.cli import main


@pytest.fixture
def text_run(tmp_path, monkeypatch):
    """A CSV of 8 labels x 8 texts embedded by a fake 16-dimensional encoder, and the flags of a tiny run on it."""
    use_fake_encoder(monkeypatch)
    monkeypatch.setenv("FASTADAPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(train_module, "LOG_EVERY", 2)
    monkeypatch.setattr(train_module, "plot_learning_curve", lambda metrics, png: None)
    rows = [(f"text {k} on topic{c} with word{c}{k % 2}", f"label{c}") for c in range(10) for k in range(8)]
    data = write_csv(tmp_path / "intents.csv", rows)
    encoder = fake_encoder_folder(tmp_path)
    return [
        "--dataset", "text", "--data-dir", str(data), "--encoder", str(encoder), "--ways", "2", "--shots", "2",
        "--query", "2", "--eval-query", "2", "--val-every", "4", "--val-episodes", "4", "--test-episodes", "6",
        "--seed", "3", "--quiet",
    ]  # fmt: skip


def train_ok(capsys, argv: list[str]) -> str:
    code = main(["train", *argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def error_line(capsys, argv: list[str]) -> str:
    """The command exits 2 with one 'fastadapt: error:' line and no traceback; returns that line."""
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert len(err.splitlines()) == 1 and err.startswith("fastadapt: error: ") and "Traceback" not in out + err
    return err


@pytest.mark.parametrize(("algorithm", "extra"), [("protonet", []), ("maml", ["--inner-steps", "1"])])
def test_train_on_text_resumes_exactly_and_writes_eval_json(capsys, tmp_path, text_run, algorithm, extra):
    flags = ["--algorithm", algorithm, *text_run, *extra]
    train_ok(capsys, [*flags, "--steps", "8", "--out", str(tmp_path / "whole")])
    train_ok(capsys, [*flags, "--steps", "4", "--out", str(tmp_path / "parts")])
    train_ok(capsys, [*flags, "--steps", "8", "--out", str(tmp_path / "parts"), "--resume"])
    whole, parts = (torch.load(tmp_path / d / "last.pt", weights_only=True) for d in ("whole", "parts"))
    assert whole["step"] == parts["step"] == 8 and whole["best_val"] == parts["best_val"]
    assert whole["model"].keys() == parts["model"].keys() and whole["model"]
    for name, value in whole["model"].items():
        assert torch.equal(value, parts["model"][name]), name
    evaluations = [json.loads((tmp_path / d / "eval.json").read_text()) for d in ("whole", "parts")]
    assert evaluations[0]["episodes"] == 6 and evaluations[0]["accuracy_mean"] == evaluations[1]["accuracy_mean"]
    assert 0.0 <= evaluations[0]["accuracy_mean"] <= 1.0


def test_logistic_baseline_is_scored_by_the_same_command(capsys, tmp_path, text_run):
    out = train_ok(capsys, ["--algorithm", "logistic", *text_run, "--out", str(tmp_path / "lr")])
    evaluation = json.loads((tmp_path / "lr" / "eval.json").read_text())
    assert evaluation["episodes"] == 6 and "logistic" in out
    # the words a label's texts share make its fake embeddings separable
    assert evaluation["accuracy_mean"] > 0.6


def test_one_line_errors(capsys, tmp_path, text_run):
    base = ["train", "--algorithm", "protonet", *text_run, "--out", str(tmp_path / "o")]
    missing = str(tmp_path / "models" / "none")
    assert "encoder path not found" in error_line(capsys, [*base, "--encoder", missing])
    assert "shots + query" in error_line(capsys, [*base, "--shots", "5", "--query", "4"])
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes("text,label\ncaf\xe9 au lait,drink\n".encode("latin-1"))
    assert "UTF-8" in error_line(capsys, [*base, "--data-dir", str(latin1)])
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"text": "hello", "label": "a"}\n{"text": "  ", "label": "a"}\n', encoding="utf-8")
    assert "empty text" in error_line(capsys, [*base, "--data-dir", str(empty)])
    assert "--encoder applies to the text data sets" in error_line(
        capsys, ["train", "--algorithm", "protonet", "--dataset", "omniglot", "--encoder", "x"]
    )


def test_fewshot_text_command(capsys, tmp_path, monkeypatch):
    use_fake_encoder(monkeypatch)
    monkeypatch.setenv("FASTADAPT_CACHE", str(tmp_path / "cache"))
    write_clinc_fixture(tmp_path, ["alarm_set", "weather_today", "book_flight", "play_music"], train=5, val=2, test=3)
    out = tmp_path / "run"
    argv = ["fewshot-text", "--data-dir", str(tmp_path), "--encoder", str(fake_encoder_folder(tmp_path)),
            "--shots", "2", "--draws", "2", "--out", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    saved = json.loads((out / "eval.json").read_text())
    assert len(saved["draws"]) == 2 and "2 draw(s)" in printed
    assert sorted(p.name for p in out.glob("draw-*")) == ["draw-0", "draw-1"]
    assert "has only 5 example(s)" in error_line(capsys, [*argv[:5], "--shots", "6", "--out", str(tmp_path / "b")])
    assert "was run with --shots 2, not 3" in error_line(capsys, [*argv[:5], "--shots", "3", "--out", str(out),
                                                                 "--resume", "--quiet"])  # fmt: skip


def test_clinc150_is_listed_with_its_file(capsys, tmp_path):
    assert main(["datasets", "--data-dir", str(tmp_path)]) == 0
    assert "missing: put data_full.json in" in capsys.readouterr().out
    write_clinc_fixture(tmp_path, ["alarm_set"])
    assert main(["datasets", "--data-dir", str(tmp_path)]) == 0
    assert f"found in {Path(tmp_path) / 'clinc150'}" in capsys.readouterr().out
