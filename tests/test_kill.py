"""Exact resume after SIGKILL (docs/reliability.md): a tiny run killed during a checkpoint write and during a
validation, resumed each time with --resume, ends bitwise where an uninterrupted run ends. The soak
with 20 kills of the Omniglot presets, and under torchrun, is bench/kill_soak.py."""

from __future__ import annotations

from pathlib import Path

from killing import Moment, compare_runs, soak

from fastadapt.cli import main

RUN = ["train", "--algorithm", "maml", "--dataset", "sinusoid", "--quiet", "--strategy", "loop", "--workers", "1"]
RUN += ["--no-channels-last"]
RUN += ["--steps", "12", "--val-every", "4", "--val-episodes", "4", "--test-episodes", "2", "--meta-batch-size", "2"]
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
#: a slow disk and a slow validation, so that the kills land inside them every time
SLOW = {**ONE_THREAD, "KILLING_SLOW_SAVE": "0.4", "KILLING_SLOW_VALIDATION": "0.4"}


def test_killed_runs_resume_to_the_same_bits(tmp_path: Path) -> None:
    assert main([*RUN, "--out", str(tmp_path / "reference")]) == 0  # uninterrupted, in this process
    kills = [Moment("checkpoint", nth=2), Moment("validation", nth=1, delay=0.1)]
    outcome = soak(RUN, tmp_path / "killed", [lambda resumed, m=m: m for m in kills], tmp_path, env=SLOW)
    hit = [k for k in outcome["kills"] if k["killed"]]
    assert [k["phase"] for k in hit] == ["checkpoint write", "validation"], outcome
    assert hit[0]["temporary_file_left"]  # killed halfway through writing the checkpoint
    assert outcome["final_exit_code"] == 0, (tmp_path / "log.txt").read_text()[-2000:]
    comparison = compare_runs(tmp_path / "reference", tmp_path / "killed")
    assert comparison["identical"], comparison
    assert not list((tmp_path / "killed").glob(".*"))  # no temporary file or lock left
