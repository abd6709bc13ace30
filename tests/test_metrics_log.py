"""TensorBoard events mirror metrics.jsonl: same names, steps and values; one line when tensorboard is missing."""

from __future__ import annotations

import builtins
import json
from pathlib import Path

import pytest

from fastadapt.errors import ConfigError

RECORDS = [
    {"step": 50, "loss": 1.5, "train_acc": 0.4, "lr": 0.001, "elapsed_s": 3.2},
    {"step": 100, "loss": 1.25, "train_acc": 0.5, "lr": 0.001, "elapsed_s": 6.5},
    {"step": 100, "val_acc": 0.55, "val_acc_ci95": 0.02},
    {"step": 150, "loss": float("nan"), "train_acc": 0.5, "lr": 0.0005, "elapsed_s": 9.0, "note": "text"},
]


def test_missing_tensorboard_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from fastadapt.metrics_log import TensorBoardMirror

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard") or name.startswith("tensorboard"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(
        ConfigError, match=r"^--tensorboard needs the tensorboard package: pip install 'fastadapt\[tensorboard\]'"
    ) as info:
        TensorBoardMirror(tmp_path / "tb")
    assert "\n" not in str(info.value)


def test_events_mirror_the_records(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from fastadapt.metrics_log import TensorBoardMirror, read_scalars

    with TensorBoardMirror(tmp_path / "tb") as mirror:
        counts = [mirror.write(r) for r in RECORDS]
    assert counts == [4, 4, 2, 3]  # NaN and text are not scalars
    scalars = read_scalars(tmp_path / "tb")
    assert set(scalars) == {"loss", "train_acc", "lr", "elapsed_s", "val_acc", "val_acc_ci95"}
    assert scalars["loss"] == [(50, 1.5), (100, 1.25)]
    assert [s for s, _ in scalars["train_acc"]] == [50, 100, 150]
    assert scalars["val_acc"][0][0] == 100 and scalars["val_acc"][0][1] == pytest.approx(0.55)
    assert scalars["lr"][-1] == (150, pytest.approx(0.0005))


def test_converts_an_existing_run(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from fastadapt.metrics_log import mirror_metrics_file, read_scalars

    metrics = tmp_path / "run" / "metrics.jsonl"
    metrics.parent.mkdir()
    metrics.write_text("".join(json.dumps(r) + "\n" for r in RECORDS[:3]))
    log_dir = mirror_metrics_file(metrics)
    assert log_dir == tmp_path / "run" / "tensorboard"
    assert read_scalars(log_dir)["val_acc_ci95"] == [(100, pytest.approx(0.02))]


def test_resume_purges_later_steps(tmp_path: Path) -> None:
    """A run stopped after step 150 and resumed from its checkpoint at step 100 rewrites steps > 100."""
    pytest.importorskip("tensorboard")
    from fastadapt.metrics_log import TensorBoardMirror, read_scalars

    with TensorBoardMirror(tmp_path / "tb") as mirror:
        for r in RECORDS[:2] + [{"step": 150, "loss": 9.0}]:
            mirror.write(r)
    with TensorBoardMirror(tmp_path / "tb", resume_step=100) as mirror:
        mirror.write({"step": 150, "loss": 1.0})
        mirror.write({"step": 200, "loss": 0.9})
    assert read_scalars(tmp_path / "tb")["loss"] == [(50, 1.5), (100, 1.25), (150, 1.0), (200, pytest.approx(0.9))]


def test_record_without_step(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from fastadapt.metrics_log import TensorBoardMirror

    with TensorBoardMirror(tmp_path / "tb") as mirror, pytest.raises(ValueError, match="needs a 'step'"):
        mirror.write({"loss": 1.0})
