"""Meta-training: exact resume (after a shorter run and after Ctrl-C), configuration checks on resume,
NaN guard, atomic checkpoints, metrics file and learning curve. Tiny runs on CPU."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import make_image_folder

import fastadapt.checkpoint as checkpoint_module
import fastadapt.train as train_module
from fastadapt.algorithms import MAML, ProtoNet
from fastadapt.algorithms.base import MetaOutput
from fastadapt.checkpoint import load_checkpoint, save_checkpoint
from fastadapt.config import Config, make_config
from fastadapt.errors import ConfigError, DataError, TrainingDiverged
from fastadapt.train import read_metrics, train


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("data") / "images", size=16)


REAL_PLOT = train_module.plot_learning_curve


@pytest.fixture(autouse=True)
def fast_training(monkeypatch: pytest.MonkeyPatch) -> None:
    # Log boundaries every 2 steps, so that a run stopped at step 4 logs where an 8-step run logs too.
    monkeypatch.setattr(train_module, "LOG_EVERY", 2)
    # Plotting costs more than these tiny runs; test_outputs_metrics_and_learning_curve plots for real.
    monkeypatch.setattr(train_module, "plot_learning_curve", lambda metrics, png: None)


#: The run length and schedule both tiny configurations share (8 steps, validation every 4).
TINY_RUN = dict(steps=8, val_every=4, val_episodes=4, test_episodes=4, lr=1e-2, lr_decay_every=3)


def protonet_config(folder: Path, out: Path, **overrides: Any) -> Config:
    settings = dict(
        data_dir=str(folder),
        image_size=16,
        ways=3,
        shots=1,
        query=2,
        eval_query=2,
        meta_batch_size=2,
        out=str(out),
    )
    return make_config("protonet", "folder", **{**TINY_RUN, **settings, **overrides})


def maml_config(out: Path, **overrides: Any) -> Config:
    settings = dict(
        shots=5,
        query=5,
        eval_query=5,
        meta_batch_size=3,
        inner_steps=2,
        # A fixed strategy: "auto" picks by timing, and loop and vmap differ in the last bits of a float.
        strategy="loop",
        out=str(out),
    )
    return make_config("maml", "sinusoid", **{**TINY_RUN, **settings, **overrides})


@pytest.fixture(params=["protonet", "maml"])
def make(request, image_folder: Path):
    """A function out_dir, **overrides -> Config for a tiny ProtoNet (folder) or MAML (sinusoid) run."""
    if request.param == "protonet":
        return lambda out, **kw: protonet_config(image_folder, out, **kw)
    return lambda out, **kw: maml_config(out, **kw)


def _learner_class(config: Config) -> type:
    return ProtoNet if config.algorithm == "protonet" else MAML


def _assert_same_tree(a: Any, b: Any, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), where
        for k in a:
            _assert_same_tree(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same_tree(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _metrics_without_time(out: Path) -> list[str]:
    """metrics.jsonl lines, less the wall-clock field ``elapsed_s`` (the only one that may differ)."""
    lines = []
    for record in read_metrics(out / "metrics.jsonl"):
        record.pop("elapsed_s", None)
        lines.append(json.dumps(record, sort_keys=True))
    return lines


def assert_same_run(a: Path, b: Path) -> None:
    for name in ("last.pt", "best.pt"):
        sa, sb = (torch.load(d / name, weights_only=True) for d in (a, b))
        for key in ("model", "optimizer", "scheduler", "sampler", "torch_rng", "step", "best_val"):
            _assert_same_tree(sa[key], sb[key], f"{name}:{key}")
        assert sa["model"], "empty state_dict"
    assert _metrics_without_time(a) == _metrics_without_time(b)


def _fail_at_call(monkeypatch: pytest.MonkeyPatch, cls: type, call: int, action) -> None:
    """Make ``cls.meta_backward`` (one training step's meta-loss and gradient) run ``action(output)`` on
    its ``call``-th call (1-based), counting from now."""
    original = cls.meta_backward
    calls = {"n": 0}

    def meta_backward(self, batch):
        calls["n"] += 1
        output = original(self, batch)
        return action(output) if calls["n"] >= call else output

    monkeypatch.setattr(cls, "meta_backward", meta_backward)


def _interrupt(output: MetaOutput) -> MetaOutput:
    raise KeyboardInterrupt


def test_resume_after_shorter_run_equals_uninterrupted_run(make, tmp_path: Path) -> None:
    full = train(make(tmp_path / "a"), progress=False)
    assert full.step == 8
    first = train(make(tmp_path / "b", steps=4), progress=False)
    assert first.step == 4
    resumed = train(make(tmp_path / "b"), resume=True, progress=False)
    assert resumed.step == 8 and resumed.best_val == full.best_val
    assert_same_run(tmp_path / "a", tmp_path / "b")
    # The learner returned in memory is the trained one.
    _assert_same_tree(full.learner.state_dict(), resumed.learner.state_dict())


def test_reptile_carried_adam_state_is_checkpointed_and_resumes_exactly(tmp_path: Path) -> None:
    def config(out: Path, **kw: Any) -> Config:
        # a step schedule: the preset's linear one depends on --steps, which the shorter first leg changes
        settings = dict(inner_optimizer="adam", inner_adam_state="carried", inner_lr=1e-3, strategy="loop")
        settings["lr_schedule"] = "step"
        return make_config("reptile", "sinusoid", **{**TINY_RUN, **settings, "out": str(out), **kw})

    full = train(config(tmp_path / "a"), progress=False)
    moments = {k: v for k, v in full.learner.state_dict().items() if k.startswith("adam_moments.")}
    assert int(moments["adam_moments.steps"]) == 8 * 5 and any(v.abs().sum() > 0 for v in moments.values())
    train(config(tmp_path / "b", steps=4), progress=False)
    train(config(tmp_path / "b"), resume=True, progress=False)
    assert_same_run(tmp_path / "a", tmp_path / "b")


def test_a_presets_carried_adam_state_yields_to_an_sgd_inner_loop() -> None:
    assert make_config("reptile", "omniglot").inner_adam_state == "carried"
    assert make_config("reptile", "omniglot", inner_optimizer="sgd").inner_adam_state == "fresh"
    with pytest.raises(ConfigError, match="needs --inner-optimizer adam"):
        make_config("reptile", "omniglot", inner_optimizer="sgd", inner_adam_state="carried")


def test_elapsed_time_counts_the_whole_run_across_resumes(make, tmp_path: Path, monkeypatch) -> None:
    clock = {"now": 1000.0}
    monkeypatch.setattr(train_module.time, "time", lambda: clock["now"])

    def tick(output: MetaOutput) -> MetaOutput:
        clock["now"] += 10.0  # every step takes 10 s of the fake clock
        return output

    config = make(tmp_path / "b", steps=4)
    _fail_at_call(monkeypatch, _learner_class(config), 1, tick)
    train(config, progress=False)
    clock["now"] += 3600.0  # an hour passes between the two processes: not training time
    train(make(tmp_path / "b"), resume=True, progress=False)
    elapsed = [r["elapsed_s"] for r in read_metrics(tmp_path / "b" / "metrics.jsonl") if "elapsed_s" in r]
    assert elapsed[-1] == pytest.approx(80.0)  # 8 steps of 10 s, the hour between them left out
    assert elapsed == sorted(elapsed)
    # validations carry the training time at their step, the time-to-accuracy clock (before and after the resume)
    validations = [r for r in read_metrics(tmp_path / "b" / "metrics.jsonl") if "loss" not in r]
    assert len(validations) >= 2
    assert [r["elapsed_s"] for r in validations] == pytest.approx([10.0 * r["step"] for r in validations])


@pytest.mark.parametrize("interrupt_at", [5, 7])
def test_keyboard_interrupt_saves_last_and_resume_matches(
    make, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interrupt_at: int
) -> None:
    train(make(tmp_path / "a"), progress=False)
    config = make(tmp_path / "b")
    with monkeypatch.context() as m:
        _fail_at_call(m, _learner_class(config), interrupt_at, _interrupt)
        with pytest.raises(KeyboardInterrupt):
            train(config, progress=False)
    state = load_checkpoint(tmp_path / "b" / "last.pt", expected=config)
    assert state["step"] == interrupt_at - 1  # the interrupted step is not counted
    assert not list((tmp_path / "b").glob(".*")), "temporary files left behind"
    resumed = train(config, resume=True, progress=False)
    assert resumed.step == 8
    assert_same_run(tmp_path / "a", tmp_path / "b")


def test_resume_without_checkpoint_starts_fresh(tmp_path: Path) -> None:
    result = train(maml_config(tmp_path / "a", steps=2, val_every=2), resume=True, progress=False)
    assert result.step == 2 and (tmp_path / "a" / "last.pt").is_file()


@pytest.mark.parametrize(
    "algorithm,change,field",
    [
        ("maml", {"inner_lr": 0.02}, "inner_lr"),
        ("protonet", {"ways": 2}, "ways"),
    ],
)
def test_resume_with_other_configuration_is_config_error(
    image_folder: Path, tmp_path: Path, algorithm: str, change: dict, field: str
) -> None:
    make = (
        (lambda **kw: protonet_config(image_folder, tmp_path, **kw))
        if algorithm == "protonet"
        else (lambda **kw: maml_config(tmp_path, **kw))
    )
    train(make(steps=2, val_every=2), progress=False)
    before = (tmp_path / "last.pt").read_bytes()
    with pytest.raises(ConfigError) as info:
        train(make(**change), resume=True, progress=False)
    msg = str(info.value)
    assert f"{field}:" in msg and "--out" in msg
    assert (tmp_path / "last.pt").read_bytes() == before
    # Run-only settings (steps, val_every, test_episodes) may change on resume.
    train(make(steps=3, val_every=3, test_episodes=7), resume=True, progress=False)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_meta_loss_stops_and_keeps_last_good_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad: float
) -> None:
    config = maml_config(tmp_path / "run", val_every=2)
    saved: list[tuple[str, int, str]] = []
    original_save = train_module.save_checkpoint

    def recording_save(path: Path, state: dict) -> None:
        original_save(path, state)
        saved.append((Path(path).name, state["step"], hashlib.sha256(Path(path).read_bytes()).hexdigest()))

    with monkeypatch.context() as m:
        m.setattr(train_module, "save_checkpoint", recording_save)
        _fail_at_call(m, MAML, 5, lambda out: MetaOutput(out.loss * bad, out.predictions))
        with pytest.raises(TrainingDiverged) as info:
            train(config, progress=False)
    assert "step 5" in str(info.value) and "--lr" in str(info.value)

    last = tmp_path / "run" / "last.pt"
    last_saves = [s for s in saved if s[0] == "last.pt"]
    assert [s[1] for s in last_saves] == [2, 4]
    assert hashlib.sha256(last.read_bytes()).hexdigest() == last_saves[-1][2]  # unchanged since step 4
    state = load_checkpoint(last, expected=config)
    assert state["step"] == 4
    assert all(torch.isfinite(t).all() for t in state["model"].values())
    assert not list((tmp_path / "run").glob(".*"))

    # The kept checkpoint is the one of a clean 4-step run, and training can go on from it.
    reference = train(maml_config(tmp_path / "ref", steps=4, val_every=2), progress=False)
    _assert_same_tree(reference.learner.state_dict(), state["model"])
    assert train(config, resume=True, progress=False).step == 8


def test_outputs_metrics_and_learning_curve(
    image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(train_module, "plot_learning_curve", REAL_PLOT)
    out = tmp_path / "run"
    result = train(protonet_config(image_folder, out), progress=False)
    assert result.out == out and result.best_val is not None and 0.0 <= result.best_val <= 1.0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["best.pt", "last.pt", "learning_curve.png", "metrics.jsonl"]  # no temporary files
    assert (out / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    records = read_metrics(out / "metrics.jsonl")
    train_records = [r for r in records if "loss" in r]
    val_records = [r for r in records if "val_acc" in r]
    assert [r["step"] for r in train_records] == [2, 4, 6, 8]
    assert [r["step"] for r in val_records] == [4, 8]
    for r in train_records:
        assert set(r) == {"step", "loss", "train_acc", "lr", "elapsed_s"}
        assert r["loss"] > 0 and 0 <= r["train_acc"] <= 1
    # lr_decay_every=3 halves the outer learning rate after steps 3 and 6.
    assert [r["lr"] for r in train_records] == pytest.approx([1e-2, 5e-3, 2.5e-3, 2.5e-3])
    for r in val_records:
        assert 0 <= r["val_acc"] <= 1 and r["val_acc_ci95"] >= 0
    assert result.best_val == max(r["val_acc"] for r in val_records)

    best = load_checkpoint(out / "best.pt")
    assert best["best_val"] == result.best_val
    assert best["step"] == next(r["step"] for r in val_records if r["val_acc"] == result.best_val)


def test_regression_metrics_use_mse(tmp_path: Path) -> None:
    result = train(maml_config(tmp_path), progress=False)
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert {"train_mse"} <= set(records[0]) and any("val_mse" in r for r in records)
    val = [r["val_mse"] for r in records if "val_mse" in r]
    assert result.best_val == min(val)  # lower is better for regression


def test_checkpoint_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.pt"
    config = Config()
    save_checkpoint(path, {"config": config.to_dict(), "model": {"w": torch.ones(3)}, "step": 1})
    before = path.read_bytes()

    def crash_midway(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")

    with monkeypatch.context() as m:
        m.setattr(checkpoint_module.torch, "save", crash_midway)
        with pytest.raises(OSError, match="disk full"):
            save_checkpoint(path, {"config": config.to_dict(), "model": {"w": torch.zeros(3)}, "step": 2})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    assert load_checkpoint(path)["step"] == 1


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_last_checkpoint_is_data_error(tmp_path: Path, damage: str) -> None:
    config = maml_config(tmp_path, steps=2, val_every=2)
    train(config, progress=False)
    last = tmp_path / "last.pt"
    data = last.read_bytes()
    last.write_bytes(
        {"truncated": data[: len(data) // 2], "garbage": b"not a checkpoint at all" * 50, "empty": b""}[damage]
    )
    with pytest.raises(DataError, match="corrupt"):
        train(config, resume=True, progress=False)
    with pytest.raises(DataError, match="corrupt"):
        load_checkpoint(last)


def test_foreign_file_is_not_a_checkpoint(tmp_path: Path) -> None:
    torch.save({"weights": torch.ones(2)}, tmp_path / "other.pt")
    with pytest.raises(DataError, match="not a fastadapt checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(DataError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_init_from_starts_from_another_runs_weights(tmp_path: Path) -> None:
    source = train(maml_config(tmp_path / "stage1", steps=4), progress=False)
    # With a zero outer learning rate the second stage never moves: its weights are stage 1's.
    stage2 = maml_config(tmp_path / "stage2", init_from=str(tmp_path / "stage1" / "last.pt"))
    result = train(replace(stage2, outer_optimizer="sgd", lr=0.0, steps=2, val_every=2), progress=False)
    _assert_same_tree(source.learner.state_dict(), result.learner.state_dict())
    # A fresh optimiser and schedule: the step count starts again from 0.
    assert result.step == 2
    fresh = train(
        replace(maml_config(tmp_path / "fresh"), outer_optimizer="sgd", lr=0.0, steps=2, val_every=2), progress=False
    )
    assert not torch.equal(
        next(iter(fresh.learner.state_dict().values())), next(iter(result.learner.state_dict().values()))
    )


def test_init_from_another_method_or_shape_is_config_error(image_folder: Path, tmp_path: Path) -> None:
    train(protonet_config(image_folder, tmp_path / "protonet", steps=2, val_every=2), progress=False)
    with pytest.raises(ConfigError, match="protonet model, not maml"):
        train(maml_config(tmp_path / "a", init_from=str(tmp_path / "protonet" / "last.pt")), progress=False)
    train(maml_config(tmp_path / "maml", steps=2, val_every=2), progress=False)
    with pytest.raises(ConfigError, match="does not fit"):
        train(
            maml_config(tmp_path / "b", per_step_lr=True, init_from=str(tmp_path / "maml" / "last.pt")),
            progress=False,
        )
    with pytest.raises(DataError, match="not found"):
        train(maml_config(tmp_path / "c", init_from=str(tmp_path / "missing.pt")), progress=False)


# --- what fuzzing found (tests/fuzzing.py, bench/fuzz_loaders.py) ------------------------------------------------


def test_metrics_lines_that_are_not_records_are_dropped_on_resume(tmp_path: Path) -> None:
    """Lines a damaged or edited metrics.jsonl may hold: nesting too deep for json (RecursionError escaped), values
    that are not numbers (the learning curve's TypeError escaped), a step that is not an integer."""
    good = {"step": 2, "loss": 0.5, "train_acc": 0.25, "lr": 0.001, "elapsed_s": 1.0}
    odd = [{"step": 1, "loss": "high"}, {"step": True, "loss": 1.0}, {"step": 1.0, "loss": 1.0}]
    lines = ["[" * 100_000, *map(json.dumps, odd), json.dumps(good), json.dumps({"step": 9, "loss": 1.0})]
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(lines) + "\n")
    train_module._truncate_metrics(path, step=4)
    assert read_metrics(path) == [good]
    assert path.read_text() == json.dumps(good) + "\n"


def test_the_learning_curve_of_records_without_scores_warns_nothing(tmp_path: Path) -> None:
    import warnings

    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"step": 1, "loss": 0.5}) + "\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib's "No artists with labels found to put in legend" before
        REAL_PLOT(path, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG" and not list(tmp_path.glob(".*"))


# --- data options: augmentation, TensorBoard, bfloat16 ----------------------------------------------------------------


def test_augmentation_touches_training_episodes_only_and_resumes_exactly(
    image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrapped = []
    real = train_module.AugmentedTasks

    def spy(source, options, seed=0):
        wrapped.append(source)
        return real(source, options, seed)

    monkeypatch.setattr(train_module, "AugmentedTasks", spy)
    full = train(protonet_config(image_folder, tmp_path / "a", augment="all"), progress=False)
    assert [source.split.name for source in wrapped] == ["train"]  # validation and test episodes are not wrapped
    assert set(load_checkpoint(tmp_path / "a" / "last.pt")["sampler"]) == {"source", "augment_rng"}
    train(protonet_config(image_folder, tmp_path / "b", augment="all", steps=4), progress=False)
    train(protonet_config(image_folder, tmp_path / "b", augment="all"), resume=True, progress=False)
    assert_same_run(tmp_path / "a", tmp_path / "b")
    plain = train(protonet_config(image_folder, tmp_path / "c"), progress=False)
    first = next(iter(plain.learner.state_dict()))
    assert not torch.equal(full.learner.state_dict()[first], plain.learner.state_dict()[first])


def test_augmentation_of_regression_tasks_is_refused() -> None:
    with pytest.raises(ConfigError, match="--augment applies to images"):
        make_config("maml", "sinusoid", augment="flip")


def test_tensorboard_events_mirror_metrics_across_a_resume(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from fastadapt.metrics_log import read_scalars

    train(maml_config(tmp_path / "run", steps=4, tensorboard=True), progress=False)
    train(maml_config(tmp_path / "run", tensorboard=True), resume=True, progress=False)
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    expected: dict[str, list[tuple[int, float]]] = {}
    for record in records:
        for key, value in record.items():
            if key != "step":
                expected.setdefault(key, []).append((record["step"], value))
    scalars = read_scalars(tmp_path / "run" / "tensorboard")
    assert set(scalars) == set(expected) >= {"loss", "train_mse", "lr", "val_mse", "val_mse_ci95"}
    for key, points in expected.items():
        assert [step for step, _ in scalars[key]] == [step for step, _ in points], key
        assert [value for _, value in scalars[key]] == pytest.approx([value for _, value in points], rel=1e-6), key
    # A fresh run in the same folder replaces the events, as it replaces metrics.jsonl.
    train(maml_config(tmp_path / "run", steps=2, val_every=2, tensorboard=True), progress=False)
    assert [step for step, _ in read_scalars(tmp_path / "run" / "tensorboard")["loss"]] == [2]


def test_bf16_is_checked_first_and_the_check_changes_nothing(
    image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check runs on the first batch without moving the sampler, the random streams or the batch-norm statistics:
    a run with it trains exactly as one whose check is skipped. Training then runs under bf16 autocast."""
    import fastadapt.device as device_module

    real = device_module.require_bf16_exact_enough
    checked = []

    def lenient(learner, batch, device):  # computes the real comparison, accepts any result
        checked.append(batch.num_tasks)
        return real(learner, batch, device, loss_tolerance=1.0, min_gradient_cosine=-1.0)

    autocast_seen = []
    original = ProtoNet.meta_backward

    def meta_backward(self, batch):
        autocast_seen.append(torch.is_autocast_enabled("cpu"))
        return original(self, batch)

    monkeypatch.setattr(ProtoNet, "meta_backward", meta_backward)
    monkeypatch.setattr(train_module, "require_bf16_exact_enough", lenient)
    train(protonet_config(image_folder, tmp_path / "checked", precision="bf16"), progress=False)
    assert checked == [2] and autocast_seen and all(autocast_seen)
    saved = load_checkpoint(tmp_path / "checked" / "last.pt")["precision_check"]
    assert saved["precision"] == "bf16" and saved["passed"] and 0 <= saved["loss_relative_error"] < 1

    passing = device_module.Bf16Check(1.0, 1.0, 0.0, 1.0, 1e-2, 0.99)
    monkeypatch.setattr(train_module, "require_bf16_exact_enough", lambda learner, batch, device: passing)
    train(protonet_config(image_folder, tmp_path / "unchecked", precision="bf16"), progress=False)
    assert_same_run(tmp_path / "checked", tmp_path / "unchecked")


def test_bf16_refused_where_inexact_before_any_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fastadapt.device as device_module

    strict = lambda learner, batch, device: device_module.require_bf16_exact_enough(  # noqa: E731
        learner, batch, device, min_gradient_cosine=1.5
    )
    monkeypatch.setattr(train_module, "require_bf16_exact_enough", strict)
    with pytest.raises(ConfigError, match=r"--precision bf16 is not exact enough .* use --precision fp32"):
        train(maml_config(tmp_path / "run", precision="bf16"), progress=False)
    assert not (tmp_path / "run" / "last.pt").exists()
