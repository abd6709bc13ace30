"""Promises under faults and bad input (docs/reliability.md): damaged checkpoints give one line, an output folder has
one writer, a full disk keeps the last checkpoint, non-finite weights are never written nor resumed, half-written
metrics are survived, caches are written atomically, and no user file is unpickled."""

from __future__ import annotations

import ast
import errno
import io
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastadapt
import fastadapt.train as train_module
from fastadapt import atomic
from fastadapt.algorithms import MAML
from fastadapt.checkpoint import load_checkpoint, save_checkpoint
from fastadapt.cli import main
from fastadapt.config import make_config
from fastadapt.errors import DataError, FastAdaptError, OutputError, TrainingDiverged
from fastadapt.train import train

TINY = dict(steps=4, val_every=2, val_episodes=2, test_episodes=2, meta_batch_size=2, shots=5, query=5, strategy="loop")


@pytest.fixture(autouse=True)
def no_plot(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(train_module, "plot_learning_curve", lambda metrics, png: None)


_REAL: list[bytes] = []


def real_checkpoint_bytes() -> bytes:
    """A real (tiny) training checkpoint, made once per test session."""
    if not _REAL:
        import tempfile

        with tempfile.TemporaryDirectory() as out:
            train(make_config("maml", "sinusoid", out=out, **TINY), progress=False)
            _REAL.append((Path(out) / "last.pt").read_bytes())
    return _REAL[0]


@pytest.fixture
def real_checkpoint() -> bytes:
    return real_checkpoint_bytes()


def loads_cleanly(path: Path) -> None:
    """Loading ``path`` gives a checkpoint or one FastAdaptError line, and no warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            load_checkpoint(path)
        except FastAdaptError as error:
            assert "\n" not in str(error)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=4000))
def test_random_bytes_are_a_clean_error(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "random.pt"
    path.write_bytes(data)
    loads_cleanly(path)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.floats(0, 1, exclude_max=True), flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True),
       st.integers(1, 255)), max_size=8))  # fmt: skip
def test_damaged_real_checkpoints_are_a_clean_error(tmp_path: Path, cut: float, flips) -> None:
    data = bytearray(real_checkpoint_bytes())
    for where, mask in flips:
        data[int(where * len(data))] ^= mask
    for variant in (bytes(data), bytes(data[: int(cut * len(data))])):
        path = tmp_path / "damaged.pt"
        path.write_bytes(variant)
        loads_cleanly(path)


def test_zips_and_torch_files_that_are_not_checkpoints_are_refused(tmp_path: Path) -> None:
    cases = {
        "list": [1, 2, 3],
        "no model": {"config": {"algorithm": "maml", "dataset": "sinusoid"}},
        "unknown method": {"config": {"algorithm": "wizardry", "dataset": "x"}, "model": {}},
        "model of strings": {"config": {"algorithm": "maml", "dataset": "sinusoid"}, "model": {"w": "x"}},
        "mistyped setting": {"config": {"algorithm": "maml", "dataset": "sinusoid", "ways": "five"}, "model": {}},
    }
    for name, state in cases.items():
        path = tmp_path / f"{name}.pt"
        torch.save(state, path)
        with pytest.raises(DataError, match="not a fastadapt checkpoint|cannot read"):
            load_checkpoint(path)
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("data.pkl", b"not a pickle")
    with pytest.raises(DataError, match="corrupt or truncated"):
        load_checkpoint(path)


def test_damaged_training_state_cannot_be_resumed_but_says_why(tmp_path: Path, real_checkpoint: bytes) -> None:
    config = make_config("maml", "sinusoid", out=str(tmp_path), **TINY)
    state = torch.load(io.BytesIO(real_checkpoint), weights_only=True)
    del state["optimizer"]
    torch.save(state, tmp_path / "last.pt")
    with pytest.raises(DataError, match="cannot be resumed: it lacks optimizer"):
        train(config, resume=True, progress=False)
    state = torch.load(io.BytesIO(real_checkpoint), weights_only=True)
    state["optimizer"] = {"state": {}, "param_groups": "garbage"}
    torch.save(state, tmp_path / "last.pt")
    with pytest.raises(DataError, match="training state is damaged"):
        train(config, resume=True, progress=False)


# --- one writer per output folder --------------------------------------------------------------------


def test_a_second_run_into_a_live_runs_folder_is_refused(tmp_path: Path, capsys) -> None:
    holder = atomic.FolderLock(tmp_path / "run").acquire()
    try:
        argv = ["train", "--algorithm", "maml", "--dataset", "sinusoid", "--steps", "2", "--out", str(tmp_path / "run")]
        assert main([*argv, "--quiet"]) == 2
        line = capsys.readouterr().err.strip()
        assert line.count("\n") == 0 and "being written by a live run" in line and str(os.getpid()) in line
    finally:
        holder.release()
    assert not (tmp_path / "run" / ".lock").exists()


def test_a_killed_runs_lock_does_not_stay(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import time
        from fastadapt.atomic import FolderLock
        lock = FolderLock({str(tmp_path / "run")!r}).acquire()
        print("locked", flush=True)
        time.sleep(60)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(OutputError, match=f"pid.*{child.pid}"):
            atomic.FolderLock(tmp_path / "run").acquire()
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        atomic.FolderLock(tmp_path / "run").acquire().release()  # the system released the killed run's lock
    finally:
        child.kill()


def test_temporary_files_of_killed_writers_are_cleared_by_the_next_run(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    leftover = tmp_path / "run" / ".last.pt.tmp-999999999"
    leftover.write_bytes(b"half a checkpoint")
    train(make_config("maml", "sinusoid", out=str(tmp_path / "run"), **TINY), progress=False)
    assert not leftover.exists() and not list((tmp_path / "run").glob(".*"))


# --- full disks and read-only folders -----------------------------------------------------------------


def test_a_full_disk_stops_training_with_one_line_and_keeps_the_last_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    out = tmp_path / "run"
    argv = ["train", "--algorithm", "maml", "--dataset", "sinusoid", "--quiet", "--out", str(out), "--strategy", "loop"]
    argv += [
        "--steps",
        "4",
        "--val-every",
        "2",
        "--val-episodes",
        "2",
        "--test-episodes",
        "2",
        "--meta-batch-size",
        "2",
    ]
    real_save = torch.save
    saves = []

    def full_after_first(obj, f, *args, **kwargs):
        saves.append(1)
        if len(saves) > 2:  # best.pt and last.pt at step 2 are written; the disk is full at step 4
            f.write(b"PK\x03\x04 partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_after_first)
    assert main(argv) == 2
    line = capsys.readouterr().err.strip()
    assert line.count("\n") == 0 and "No space left on device" in line and "intact" in line
    monkeypatch.setattr(torch, "save", real_save)
    assert load_checkpoint(out / "last.pt")["step"] == 2
    assert not list(out.glob(".*"))


def test_an_output_folder_that_cannot_be_made_is_refused_before_training(tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    argv = ["train", "--algorithm", "maml", "--dataset", "sinusoid", "--quiet", "--out", str(blocker / "run")]
    assert main(argv) == 2
    line = capsys.readouterr().err.strip()
    assert line.count("\n") == 0 and "--out" in line


def test_a_read_only_output_folder_is_refused_before_training(tmp_path: Path, monkeypatch, capsys) -> None:
    real_open = open

    def read_only(path, *args, **kwargs):
        if str(path).startswith(str(tmp_path / "run")):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", read_only)
    argv = ["train", "--algorithm", "maml", "--dataset", "sinusoid", "--quiet", "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    line = capsys.readouterr().err.strip()
    assert "Permission denied" in line and "writable --out" in line
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


# --- non-finite training -----------------------------------------------------------------------------


def test_a_non_finite_meta_gradient_stops_training_before_the_update(tmp_path: Path, monkeypatch) -> None:
    config = make_config("maml", "sinusoid", out=str(tmp_path), **{**TINY, "steps": 6})
    original = MAML.meta_backward
    calls = []

    def poisoned(self, batch):
        output = original(self, batch)
        calls.append(1)
        if len(calls) == 3:
            next(self.parameters()).grad[0] = float("inf")
        return output

    monkeypatch.setattr(MAML, "meta_backward", poisoned)
    with pytest.raises(TrainingDiverged, match="meta-gradient of .* became non-finite at step 3"):
        train(config, progress=False)
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["step"] == 2 and all(t.isfinite().all() for t in state["model"].values())


def test_non_finite_weights_are_never_written_nor_resumed(tmp_path: Path, real_checkpoint: bytes) -> None:
    state = torch.load(io.BytesIO(real_checkpoint), weights_only=True)
    before = tmp_path / "last.pt"
    before.write_bytes(real_checkpoint)
    name = next(iter(state["model"]))
    state["model"][name] = state["model"][name].clone().fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="not finite"):
        save_checkpoint(before, state)
    assert before.read_bytes() == real_checkpoint
    torch.save(state, before)  # as another tool might have written it
    config = make_config("maml", "sinusoid", out=str(tmp_path), **TINY)
    with pytest.raises(DataError, match="not finite and cannot be resumed"):
        train(config, resume=True, progress=False)


def test_a_half_written_metrics_line_is_survived_on_resume(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(train_module, "LOG_EVERY", 2)  # a 2-step run logs where the 4-step run does
    config = make_config("maml", "sinusoid", out=str(tmp_path / "a"), **TINY)
    train(config, progress=False)
    reference = (tmp_path / "a" / "metrics.jsonl").read_text()
    short = make_config("maml", "sinusoid", out=str(tmp_path / "b"), **{**TINY, "steps": 2})
    train(short, progress=False)
    with open(tmp_path / "b" / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "loss": 0.1')  # killed while appending
    train(make_config("maml", "sinusoid", out=str(tmp_path / "b"), **TINY), resume=True, progress=False)

    def without_times(text: str) -> list[dict]:
        return [{k: v for k, v in json.loads(line).items() if k != "elapsed_s"} for line in text.splitlines()]

    assert without_times((tmp_path / "b" / "metrics.jsonl").read_text()) == without_times(reference)


# --- caches and safe loading --------------------------------------------------------------------------


def test_two_writers_of_one_cache_never_leave_a_file_that_reads_as_valid(tmp_path: Path) -> None:
    """Two processes write the same target at once, many times; every read in between is one writer's whole file."""
    target = tmp_path / "cache.npz"
    script = textwrap.dedent(f"""
        import sys, numpy as np
        from fastadapt import atomic
        from pathlib import Path
        value = int(sys.argv[1])
        for _ in range(40):
            atomic.write_with(Path({str(target)!r}), lambda f: np.savez(f, a=np.full(50000, value)))
    """)
    writers = [subprocess.Popen([sys.executable, "-c", script, str(v)]) for v in (1, 2)]
    import numpy as np

    seen = set()
    while any(w.poll() is None for w in writers):
        if target.exists():
            with np.load(target) as d:
                values = set(np.unique(d["a"]).tolist())
            assert len(values) == 1
            seen |= values
        time.sleep(0.005)
    assert all(w.returncode == 0 for w in writers) and seen <= {1, 2}
    assert not list(tmp_path.glob(".*"))


def test_no_user_file_is_unpickled() -> None:
    """No pickle.load, no torch.load without weights_only=True, no np.load with allow_pickle=True in the source."""
    offenders = []
    for path in Path(fastadapt.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
            if name in ("pickle.load", "pickle.loads", "cloudpickle.load", "dill.load"):
                offenders.append(f"{path.name}:{node.lineno} {name}")
            if name == "torch.load" and keywords.get("weights_only") != "True":
                offenders.append(f"{path.name}:{node.lineno} torch.load without weights_only=True")
            if name in ("np.load", "numpy.load") and keywords.get("allow_pickle", "False") != "False":
                offenders.append(f"{path.name}:{node.lineno} np.load with allow_pickle")
    assert not offenders, offenders


def test_random_module_is_untouched_by_fuzzing() -> None:
    """The hypothesis tests above must not leave Python's global random state changed for later tests."""
    state = random.getstate()
    random.random()
    random.setstate(state)
    assert random.getstate() == state
