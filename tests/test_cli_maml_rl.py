"""``fastadapt train --algorithm maml-rl`` and ``fastadapt eval`` of its checkpoint, in-process: a method with a
training loop of its own, reached through the registry's ``run``/``evaluate``/``owns_checkpoint`` hooks."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import run_error, run_ok

from fastadapt.cli import main
from fastadapt.rl import envs

TINY = ["--hidden", "16", "--meta-batch", "3", "--episodes-per-task", "4", "--eval-tasks", "3", "--quiet"]


def train_args(out: Path, *extra: str) -> list[str]:
    return ["train", "--algorithm", "maml-rl", "--env", "navigation-2d", *TINY, "--out", str(out), *extra]


def test_a_tiny_navigation_run_trains_evaluates_and_its_checkpoint_evaluates_again(tmp_path: Path, capsys) -> None:
    out = tmp_path / "nav"
    stdout = run_ok(capsys, train_args(out, "--iterations", "2"))
    assert "trained 2 meta-iterations on navigation-2d" in stdout
    assert "oracle" in stdout and "3 steps" in stdout  # the return table after 0..3 adaptation steps
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in metrics] == [1, 2]
    saved = torch.load(out / "checkpoint.pt", weights_only=True)
    assert saved["iteration"] == 2 and saved["options"]["hidden"] == (16,) and saved["options"]["meta_batch"] == 3
    assert saved["options"]["max_kl"] == 0.01  # the rest from the navigation-2d preset
    assert not (out / ".lock").exists()  # the folder's lock is released

    table = run_ok(
        capsys, ["eval", "--checkpoint", str(out / "checkpoint.pt"), "--tasks", "4", "--eval-inner-steps", "1"]
    )
    assert "mean return on 4 new tasks" in table and "1 step" in table and "2 steps" not in table
    result = json.loads((out / "eval.json").read_text())
    assert result["tasks"] == 4 and len(result["checkpoint"]["mean"]) == 2 and result["oracle"]["mean"][0] > -5


def test_resume_from_the_cli_continues_exactly(tmp_path: Path, capsys) -> None:
    run_ok(capsys, train_args(tmp_path / "straight", "--iterations", "2", "--checkpoint-every", "1"))
    run_ok(capsys, train_args(tmp_path / "resumed", "--iterations", "1", "--checkpoint-every", "1"))
    run_ok(capsys, train_args(tmp_path / "resumed", "--iterations", "2", "--checkpoint-every", "1", "--resume"))
    straight = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)
    for name, value in straight["policy"].items():
        assert torch.equal(value, resumed["policy"][name]), name

    def lines(run: str) -> list[dict]:
        timing = {"sample_s", "update_s", "cpu_s", "wall_s"}
        records = [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in m.items() if k not in timing} for m in records]

    assert lines("resumed") == lines("straight")  # one line per iteration, none repeated by the resume
    # without --resume a folder starts afresh: its old checkpoint is replaced at once, its metrics emptied
    run_ok(capsys, train_args(tmp_path / "straight", "--iterations", "1", "--checkpoint-every", "5"))
    assert torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)["iteration"] == 1
    assert len(lines("straight")) == 1
    # without --resume the folder starts afresh; with it, other learning options are refused in one line
    line = run_error(capsys, train_args(tmp_path / "resumed", "--iterations", "3", "--inner-lr", "0.5", "--resume"))
    assert "trained with other ['inner_lr']" in line


def test_a_config_file_from_presets_runs_and_flags_override_it(tmp_path: Path, capsys) -> None:
    text = run_ok(capsys, ["presets", "maml-rl", "navigation-2d"])
    settings = yaml.safe_load(text)
    assert settings["algorithm"] == "maml-rl" and settings["hidden"] == [100, 100] and settings["meta_batch"] == 20
    settings.update(hidden=[8], meta_batch=2, episodes_per_task=3, iterations=3, eval_tasks=2, eval_steps=1)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(settings))
    out = tmp_path / "run"
    run_ok(capsys, ["train", "--config", str(path), "--iterations", "1", "--quiet", "--out", str(out)])
    saved = torch.load(out / "checkpoint.pt", weights_only=True)
    assert saved["iteration"] == 1 and saved["options"]["hidden"] == (8,) and saved["options"]["meta_batch"] == 2


def test_listing_and_help_show_the_method_with_its_envs_and_options(capsys) -> None:
    listing = run_ok(capsys, ["presets"])
    line = next(line for line in listing.splitlines() if line.startswith("maml-rl"))
    assert "--env navigation-2d, halfcheetah-vel" in line
    with pytest.raises(SystemExit) as exited:
        main(["train", "--algorithm", "maml-rl", "--help"])
    assert exited.value.code == 0
    help_text = capsys.readouterr().out
    assert "--max-kl" in help_text and "--hidden INT [INT ...]" in help_text and "--env" in help_text
    assert "--steps INT" not in help_text and "--dataset DATASET" not in help_text  # the episodic trainer's
    assert "--steps, --dataset, ...) do not apply" in help_text


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--steps", "5"], "--steps is a setting of the episodic trainer, and maml-rl trains with its own loop"),
        (["--dataset", "omniglot"], "--dataset is a setting of the episodic trainer"),
        (["--env", "pong"], "invalid choice: 'pong'"),
        (["--strategy", "fold"], "unknown --strategy 'fold'; choose one of: loop, vmap."),
        (["--hidden", "0"], "--hidden sizes must be positive"),
        (["--max-kl", "0"], "max_kl must be positive"),
    ],
)
def test_bad_flags_are_one_line(tmp_path: Path, capsys, extra: list[str], needle: str) -> None:
    assert needle in run_error(capsys, train_args(tmp_path / "run", *extra))
    assert not (tmp_path / "run").exists()  # refused before the output folder is made


def test_other_methods_refuse_its_flags_and_its_checkpoint_refuses_theirs(tmp_path: Path, capsys) -> None:
    line = run_error(capsys, ["train", "--algorithm", "protonet", "--env", "navigation-2d"])
    assert "--env applies to --algorithm maml-rl, not protonet; drop --env." in line
    run_ok(capsys, train_args(tmp_path / "nav", "--iterations", "1"))
    line = run_error(capsys, ["eval", "--checkpoint", str(tmp_path / "nav" / "checkpoint.pt"), "--ways", "5"])
    assert "--ways: not a setting of a maml-rl evaluation" in line


def test_missing_mujoco_is_one_line_naming_the_extra(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "mujoco", None)  # import mujoco now raises ImportError
    envs._halfcheetah_env_class.cache_clear()
    try:
        argv = ["train", "--algorithm", "maml-rl", "--env", "halfcheetah-vel", "--out", str(tmp_path / "run")]
        assert "pip install fastadapt[rl]" in run_error(capsys, argv)
    finally:
        envs._halfcheetah_env_class.cache_clear()
    assert not (tmp_path / "run").exists()
