"""`fastadapt continual`: a whole OML run (meta-training, resume, meta-test, results) on small generated
characters, La-MAML on a two-task stream, and the one-line errors."""

import json

import pytest
import torch

import fastadapt.continual.run as continual_run
from fastadapt.cli import main
from fastadapt.tasks.streams import OmniglotCharacters

TINY_OML = ["--channels", "3", "--hidden", "6", "--num-outputs", "12", "--trajectory", "3", "--remember", "2",
            "--strides", "2", "2", "2"]  # fmt: skip


@pytest.fixture
def characters(monkeypatch):
    """6 background and 12 evaluation 'characters' of 20 random 28x28 images each, instead of Omniglot."""
    g = torch.Generator().manual_seed(0)
    data = OmniglotCharacters(torch.rand(6, 20, 1, 28, 28, generator=g), torch.rand(12, 20, 1, 28, 28, generator=g),
                              ["a"] * 6, ["b"] * 12)  # fmt: skip
    monkeypatch.setattr(continual_run, "load_omniglot_characters", lambda data_dir, size: data)
    return data


def test_oml_from_the_command_line_resumes_and_meta_tests(tmp_path, characters, capsys):
    out = tmp_path / "oml"
    common = ["continual", "--algorithm", "oml", "--out", str(out), "--quiet", *TINY_OML, "--classes", "2,4"]
    assert main([*common, "--steps", "3", "--runs", "2", "--search-runs", "1", "--checkpoint-every", "1"]) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["meta_training"]["step"] == 3
    assert result["options"]["strides"] == [2, 2, 2]
    assert [row["classes"] for row in result["meta_test"]["results"]] == [2, 4]
    assert len(result["meta_test"]["results"][0]["runs"]) == 2
    assert (out / "meta_test.png").is_file() and (out / "meta_training" / "model.pt").is_file()
    capsys.readouterr()
    # the same folder again without --resume is refused; with --resume and more steps it goes on from step 3
    assert main([*common, "--steps", "3"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main([*common, "--steps", "3", "--seed", "1", "--resume"]) == 2  # other settings: refused, one line
    assert "seed" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--algorithm", "oml", *TINY_OML, "--classes", "10,13"], "evaluation set has only 12"),
        (["--algorithm", "oml", "--alpha-init", "0.1"], "oml has no option(s) alpha_init"),
        (["--algorithm", "la-maml", "--tasks", "1"], "at least 2"),
        (["--algorithm", "la-maml", "--tasks", "2", "--memory", "100000"], "lower memory"),
        (["--algorithm", "la-maml", "--preset", "split-digits"], "no preset 'split-digits'"),
        (["--algorithm", "la-maml", "--classes", "ten"], "--classes must be numbers"),
    ],
)
def test_bad_settings_are_one_line(argv, message, tmp_path, characters, capsys):
    if "la-maml" in argv:
        pytest.importorskip("sklearn")
    assert main(["continual", "--out", str(tmp_path / "x"), "--quiet", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastadapt: error:") and err.count("\n") == 1 and message in err, err


def test_la_maml_task_stream_writes_the_matrix_and_metrics(tmp_path):
    pytest.importorskip("sklearn")
    out = tmp_path / "lamaml"
    argv = ["continual", "--algorithm", "la-maml", "--out", str(out), "--quiet", "--tasks", "2", "--runs", "2",
            "--layers", "0", "--glances", "1", "--batch-size", "50", "--memory", "20"]  # fmt: skip
    assert main(argv) == 0
    result = json.loads((out / "results.json").read_text())
    assert len(result["matrices"]) == 2 and len(result["mean_matrix"]) == 2
    r = torch.tensor(result["matrices"][0])
    assert result["runs"][0]["bwt"] == pytest.approx(float(r[1, 0] - r[0, 0]))
    assert result["runs"][0]["acc"] == pytest.approx(float(r[1].mean()))
    assert (out / "accuracy_matrix.png").is_file() and (out / "first_tasks.png").is_file()
    first = (out / "runs" / "seed0.json").read_text()
    assert main(argv) == 0  # finished runs are reused, not redone
    assert (out / "runs" / "seed0.json").read_text() == first


def test_continual_methods_are_not_episodic_ones(capsys):
    assert main(["train", "--algorithm", "oml", "--steps", "1"]) == 2
    assert "fastadapt continual --algorithm oml" in capsys.readouterr().err
