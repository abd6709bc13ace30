"""--algorithm logistic: the per-episode logistic regression baseline as a registered method."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import vector_batch

from fastadapt.algorithms import build_algorithm
from fastadapt.algorithms.baseline.logistic import SupportLogisticRegression
from fastadapt.algorithms.registry import algorithm
from fastadapt.config import make_config
from fastadapt.errors import ConfigError
from fastadapt.evaluate import evaluate
from fastadapt.tasks.samplers import ClassSplit, EpisodeSampler
from fastadapt.text.classifiers import fit_logistic_regression


def test_it_is_registered_as_a_baseline_with_text_presets():
    spec = algorithm("logistic")
    assert spec.family == "baseline" and not spec.supports_regression
    assert spec.presets["clinc150"]["steps"] == 1 and spec.presets["clinc150"]["logistic_c"] == 10.0


def test_predictions_are_each_episode_s_own_fit_on_normalised_vectors():
    batch = vector_batch(tasks=2, ways=3, shots=2, dim=5, seed=2)
    learner = SupportLogisticRegression(C=3.0)
    unit = torch.nn.functional.normalize
    weights, biases = fit_logistic_regression(unit(batch.support_x, dim=-1), batch.support_y, 3, C=3.0)
    expected = torch.einsum("tmd,twd->tmw", unit(batch.query_x, dim=-1), weights) + biases.unsqueeze(1)
    assert torch.allclose(learner.predict(batch), expected, atol=1e-5)
    output = learner.meta_backward(batch)  # nothing to meta-learn: a loss, no parameters, no gradient
    assert torch.isfinite(output.loss) and list(learner.parameters()) == []


def test_it_scores_separable_episodes_perfectly():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(8, 10)) * 5
    vectors = np.concatenate([c + 0.1 * rng.normal(size=(12, 10)) for c in centres])
    split = ClassSplit(
        "test",
        torch.tensor(vectors, dtype=torch.float32),
        [np.arange(i * 12, i * 12 + 12) for i in range(8)],
        [str(i) for i in range(8)],
    )
    scores = evaluate(SupportLogisticRegression(C=1.0), EpisodeSampler(split, 5, 1, 5, seed=1), episodes=20)
    assert scores.shape == (20,) and scores.min() == 1.0


def test_one_line_errors():
    with pytest.raises(ConfigError, match="--logistic-c must be positive"):
        make_config("logistic", "clinc150", logistic_c=0.0)
    with pytest.raises(ConfigError, match="fits feature vectors") as error:
        build_algorithm(make_config("logistic", "omniglot"))
    assert "\n" not in str(error.value)
