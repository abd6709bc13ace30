"""fastadapt's methods on text embeddings: each built by its own registered build, on the splits the trainer loads."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from text_fixtures import fake_encoder_folder, one_line, small_rows, use_fake_encoder, write_clinc_fixture, write_csv

from fastadapt.algorithms import build_algorithm
from fastadapt.algorithms.baseline.logistic import SupportLogisticRegression
from fastadapt.algorithms.metric.matching import MatchingNet
from fastadapt.algorithms.metric.protonet import ProtoNet
from fastadapt.algorithms.optimization.leo import LEO
from fastadapt.algorithms.optimization.maml import MAML
from fastadapt.config import make_config
from fastadapt.datasets import input_features, load_splits, task_source
from fastadapt.datasets.text import read_clinc150_domain_split
from fastadapt.errors import ConfigError, DataError
from fastadapt.nets.heads import ResidualHead
from fastadapt.tasks.samplers import EpisodeSampler
from fastadapt.text.episodic import clinc150_episode_splits, text_file_episode_splits, text_load_splits


@pytest.fixture
def text_file(tmp_path, monkeypatch):
    """A (text, label) CSV of 10 labels x 8 texts, embedded by a fake 16-dimensional encoder; the settings to use it."""
    use_fake_encoder(monkeypatch)
    monkeypatch.setenv("FASTADAPT_CACHE", str(tmp_path / "cache"))
    rows = [(f"text {k} about topic{c} and word{k % 3}", f"label{c}") for c in range(10) for k in range(8)]
    path = write_csv(tmp_path / "intents.csv", rows)
    return dict(data_dir=str(path), encoder=str(fake_encoder_folder(tmp_path)))


@pytest.mark.parametrize(
    ("algorithm", "kind", "network"),
    [("protonet", ProtoNet, ResidualHead), ("matching", MatchingNet, ResidualHead), ("maml", MAML, torch.nn.Linear),
     ("leo", LEO, None), ("logistic", SupportLogisticRegression, None)],
)  # fmt: skip
def test_each_method_builds_on_text_with_its_preset_and_learns(text_file, algorithm, kind, network):
    config = make_config(algorithm, "text", ways=2, shots=2, query=2, eval_query=2, **text_file)
    if algorithm in ("maml", "leo"):
        config = replace(config, inner_steps=1, eval_inner_steps=1)
    learner = build_algorithm(config)
    assert isinstance(learner, kind) and input_features(config) == 16
    if network is not None:
        modules = [type(m) for m in learner.modules()]
        assert network in modules
    batch = task_source(config, load_splits(config), "train", seed=0).sample(2)
    output = learner.meta_backward(batch)
    assert output.predictions.shape == (2, 4, 2) and torch.isfinite(output.loss)
    if algorithm != "logistic":
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in learner.parameters())
    assert learner.predict(batch).shape == (2, 4, 2)


def test_presets_and_the_data_set_s_own_settings():
    protonet = make_config("protonet", "clinc150")
    assert (protonet.network, protonet.split, protonet.encoder) == ("residual-256", "domains-v1", "all-MiniLM-L6-v2")
    assert (protonet.eval_query, protonet.test_episodes) == (15, 600)
    assert make_config("maml", "clinc150").network == "linear"
    assert make_config("leo", "text").meta_batch_size == 12
    assert make_config("omniglot" and "protonet", "omniglot").encoder is None


def test_encoder_is_a_setting_of_text_data_sets_only():
    with pytest.raises(ConfigError, match="--encoder applies to the text data sets") as error:
        make_config("protonet", "omniglot", encoder="all-MiniLM-L6-v2")
    assert "\n" not in str(error.value)


def test_image_networks_are_refused_on_text(text_file):
    config = make_config("protonet", "text", network="conv4", **text_file)
    with pytest.raises(ConfigError, match="--network conv4 does not take vectors"):
        build_algorithm(config)


def test_text_load_splits_for_a_file_and_its_errors(text_file):
    config = make_config("protonet", "text", **text_file)
    splits = text_load_splits(config, progress=False)
    assert sum(s.num_classes for s in splits.values()) == 10
    assert text_load_splits(config, progress=False) is splits  # loaded once per process
    with pytest.raises(DataError, match="--dataset text needs --data-dir"):
        text_load_splits(replace(config, data_dir=None))
    with pytest.raises(ConfigError, match="not a text data set"):
        text_load_splits(replace(config, dataset="omniglot"))
    with pytest.raises(DataError, match="classes with only 8"):  # shots + query above what a label has
        task_source(make_config("protonet", "text", shots=5, query=5, **text_file), splits, "train", seed=0)


def test_clinc150_splits_by_domain(tmp_path, monkeypatch):
    use_fake_encoder(monkeypatch)
    monkeypatch.setenv("FASTADAPT_CACHE", str(tmp_path / "cache"))
    intents = [i for part in read_clinc150_domain_split().values() for d in part.values() for i in d]
    write_clinc_fixture(tmp_path, intents, train=3, val=1, test=1)
    config = make_config("protonet", "clinc150", data_dir=str(tmp_path), encoder=str(fake_encoder_folder(tmp_path)))
    splits = load_splits(config)
    assert [splits[p].num_classes for p in ("train", "val", "test")] == [90, 30, 30]
    with pytest.raises(ConfigError, match="use --split domains-v1"):
        load_splits(replace(config, split="vinyals"))


def test_text_file_episode_splits_are_disjoint_label_splits(tmp_path, monkeypatch):
    use_fake_encoder(monkeypatch)
    monkeypatch.setenv("FASTADAPT_CACHE", str(tmp_path / "cache"))
    path = write_csv(tmp_path / "d.csv", small_rows(labels=10, per_label=6))
    splits = text_file_episode_splits(path, str(fake_encoder_folder(tmp_path)), progress=False)
    names = [set(splits[p].class_names) for p in ("train", "val", "test")]
    assert sum(len(n) for n in names) == 10 and not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    assert [len(n) for n in names] == [6, 2, 2]  # 64 / 16 / 20 %
    for split in splits.values():
        assert split.images.dtype.is_floating_point and split.images.shape[1] == 16
        assert all(len(ix) == 6 for ix in split.class_indices)
    # the sampler's own check: labels with fewer examples than shots + query, in one line
    EpisodeSampler(splits["train"], ways=3, shots=2, query=4)
    with pytest.raises(DataError) as exc:
        EpisodeSampler(splits["train"], ways=3, shots=5, query=2)
    assert "shots + query = 5 + 2 = 7" in one_line(exc)


def test_text_file_split_by_label_lists(tmp_path, monkeypatch):
    use_fake_encoder(monkeypatch)
    monkeypatch.setenv("FASTADAPT_CACHE", str(tmp_path / "cache"))
    path = write_csv(tmp_path / "d.csv", small_rows(labels=4, per_label=3))
    lists = tmp_path / "split"
    lists.mkdir()
    for part, labels in {"train": "label0\nlabel1", "val": "label2", "test": "label3"}.items():
        (lists / f"{part}.txt").write_text(labels)
    splits = text_file_episode_splits(path, str(fake_encoder_folder(tmp_path)), split=lists, progress=False)
    assert splits["train"].class_names == ["label0", "label1"] and splits["test"].class_names == ["label3"]


def test_clinc150_episode_splits_pool_in_scope_utterances(tmp_path, monkeypatch):
    split = read_clinc150_domain_split()
    intents = sorted(i for part in split.values() for d in part.values() for i in d)
    write_clinc_fixture(tmp_path, intents, train=2, val=1, test=1)
    use_fake_encoder(monkeypatch)
    monkeypatch.setenv("FASTADAPT_CACHE", str(tmp_path / "cache"))
    splits = clinc150_episode_splits(tmp_path, str(fake_encoder_folder(tmp_path)), progress=False)
    assert [splits[p].num_classes for p in ("train", "val", "test")] == [90, 30, 30]
    assert set(splits["test"].class_names) == set(split["test"]["banking"]) | set(split["test"]["utility"])
    assert all(len(ix) == 4 for ix in splits["val"].class_indices)  # train + val + test rows of each intent
    assert np.isfinite(splits["train"].images.numpy()).all()
