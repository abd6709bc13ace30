import json

import pytest
import torch

from fastadapt.algorithms.continual.oml import OMLOptions, build
from fastadapt.continual.runner import load_learner, meta_train, pretrain
from fastadapt.errors import ConfigError

OPTIONS = OMLOptions(
    image_size=12, channels=3, strides=(2, 1), hidden=5, num_outputs=8, trajectory=3, remember=2, steps=4
)


def background():
    return torch.rand(6, 20, 1, 12, 12, generator=torch.Generator().manual_seed(0))


def test_meta_training_resumes_exactly(tmp_path):
    straight = build(OPTIONS)
    meta_train(straight, OPTIONS, background(), tmp_path / "a", log_every=1, checkpoint_every=2, progress=False)
    interrupted = build(OPTIONS)
    meta_train(interrupted, OPTIONS, background(), tmp_path / "b", checkpoint_every=1, progress=False, stop_after=3)
    assert not (tmp_path / "b" / "model.pt").exists()
    resumed = build(OPTIONS)  # a fresh process: everything comes from the checkpoint
    meta_train(resumed, OPTIONS, background(), tmp_path / "b", checkpoint_every=1, progress=False)
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    loaded = load_learner(tmp_path / "b" / "model.pt")
    assert all(torch.equal(a, b) for a, b in zip(straight.state_dict().values(), loaded.state_dict().values()))
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert [row["step"] for row in metrics["log"]] == [1, 2, 3, 4] and (tmp_path / "a" / "meta_training.png").is_file()


def test_resuming_with_other_settings_is_refused(tmp_path):
    meta_train(build(OPTIONS), OPTIONS, background(), tmp_path, progress=False, stop_after=1)
    other = OMLOptions(**{**OPTIONS.__dict__, "inner_lr": 0.1})
    with pytest.raises(ConfigError, match="inner_lr"):
        meta_train(build(other), other, background(), tmp_path, progress=False)


def test_pretraining_keeps_the_best_epoch(tmp_path):
    record = pretrain(build(OPTIONS), OPTIONS, background(), tmp_path, epochs=2, batch_size=16, progress=False)
    assert len(record["log"]) == 2 and record["best_epoch"] in (1, 2)
    assert (tmp_path / "model.pt").is_file()


def test_a_finished_run_carried_on_to_more_steps_equals_one_run_of_them(tmp_path):
    straight = build(OPTIONS)
    meta_train(straight, OPTIONS, background(), tmp_path / "a", progress=False)
    shorter = OMLOptions(**{**OPTIONS.__dict__, "steps": OPTIONS.steps - 2})
    meta_train(build(shorter), shorter, background(), tmp_path / "b", checkpoint_every=1, progress=False)
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["step"] == OPTIONS.steps - 2
    carried_on = build(OPTIONS)  # the same folder, the full number of steps: it goes on where the shorter run ended
    meta_train(carried_on, OPTIONS, background(), tmp_path / "b", checkpoint_every=1, progress=False)
    for a, b in zip(straight.state_dict().values(), carried_on.state_dict().values()):
        assert torch.equal(a, b)
