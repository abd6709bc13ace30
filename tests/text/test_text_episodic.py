"""fastadapt's learners on text embeddings: heads, the learners the trainer gets, the splits it loads."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from text_fixtures import fake_encoder_folder, use_fake_encoder, write_csv

from fastadapt.algorithms.metric.protonet import ProtoNet
from fastadapt.config import Config
from fastadapt.errors import ConfigError, DataError
from fastadapt.tasks.samplers import ClassSplit, EpisodeSampler
from fastadapt.text.episodic import PRESETS, ResidualHead, build_head, build_text_learner, text_load_splits


def vector_split(classes=8, per_class=10, dim=12, seed=0) -> ClassSplit:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g) * 2
    vectors = torch.cat([c + 0.3 * torch.randn(per_class, dim, generator=g) for c in centres])
    vectors = torch.nn.functional.normalize(vectors, dim=-1)  # like sentence embeddings
    rows = [np.arange(i * per_class, (i + 1) * per_class) for i in range(classes)]
    return ClassSplit("train", vectors, rows, [f"c{i}" for i in range(classes)])


def test_residual_head_starts_as_a_scaled_identity():
    batch = EpisodeSampler(vector_split(), 5, 2, 3, seed=0).sample(2)
    head = ResidualHead(12, 16, scale=3.0)
    plain = ProtoNet(torch.nn.Identity()).predict(batch)
    assert torch.allclose(ProtoNet(head).predict(batch), 9.0 * plain, atol=1e-5)  # squared distances scale by s^2


@pytest.mark.parametrize(
    ("network", "ways", "message"),
    [("mlp-256", None, "unknown --network 'mlp-256'"), ("residual-x", None, "hidden units"), ("conv4", 5, "conv4")],
)
def test_unknown_heads_are_one_line(network, ways, message):
    with pytest.raises(ConfigError) as exc:
        build_head(network, 12, ways)
    assert message in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("algorithm", ["protonet", "maml", "leo", "logistic"])
def test_learners_train_and_predict_on_embedding_episodes(algorithm):
    preset = PRESETS.get((algorithm, "clinc150"), {})
    config = Config(dataset="clinc150", algorithm=algorithm, ways=4, shots=2, **preset)
    config.inner_steps, config.eval_inner_steps = min(config.inner_steps, 2), None
    learner = build_text_learner(config, 12)
    batch = EpisodeSampler(vector_split(), 4, 2, 3, seed=1).sample(3)
    output = learner.meta_backward(batch)
    assert output.predictions.shape == (3, 12, 4) and torch.isfinite(output.loss)
    if algorithm != "logistic":
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in learner.parameters())
    assert learner.predict(batch).shape == (3, 12, 4)


def test_unknown_algorithm_and_maml_train_ways():
    with pytest.raises(ConfigError, match="not available on text embeddings"):
        build_text_learner(Config(dataset="clinc150", algorithm="relation"), 12)
    with pytest.raises(ConfigError, match="--train-ways must equal --ways"):
        build_text_learner(Config(dataset="clinc150", algorithm="maml", network="linear", train_ways=10), 12)


def test_text_load_splits_for_a_file(tmp_path, monkeypatch):
    use_fake_encoder(monkeypatch)
    monkeypatch.setenv("FASTADAPT_CACHE", str(tmp_path / "cache"))
    rows = [(f"text {k} of topic{c}", f"label{c}") for c in range(5) for k in range(4)]
    path = write_csv(tmp_path / "d.csv", rows)
    config = SimpleNamespace(
        dataset="text",
        data_dir=str(path),
        split="vinyals",
        seed=0,
        device="cpu",
        encoder=str(fake_encoder_folder(tmp_path)),
    )
    splits = text_load_splits(config, progress=False)
    assert sum(s.num_classes for s in splits.values()) == 5
    with pytest.raises(DataError, match="--dataset text needs --data-dir"):
        text_load_splits(SimpleNamespace(**{**vars(config), "data_dir": None}))
    with pytest.raises(ConfigError, match="not a text data set"):
        text_load_splits(SimpleNamespace(**{**vars(config), "dataset": "omniglot"}))
