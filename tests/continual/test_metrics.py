import math

import numpy as np
import pytest

from fastadapt.continual.metrics import (
    continual_metrics,
    mean_ci,
    plot_accuracy_matrices,
    plot_first_tasks,
    summarise_runs,
    t_quantile_975,
)
from fastadapt.errors import ConfigError

# R[i, j]: accuracy on task j after training through task i; b[j]: accuracy at initialisation.
R = np.array([[0.9, 0.1, 0.2], [0.7, 0.8, 0.3], [0.6, 0.5, 0.9]])
B = np.array([0.1, 0.2, 0.1])


def test_acc_bwt_fwt_match_the_hand_computed_example():
    m = continual_metrics(R, B)
    assert m["acc"] == pytest.approx((0.6 + 0.5 + 0.9) / 3)  # last row
    assert m["bwt"] == pytest.approx(((0.6 - 0.9) + (0.5 - 0.8)) / 2)  # = -0.3
    assert m["fwt"] == pytest.approx(((0.1 - 0.2) + (0.3 - 0.1)) / 2)  # R[i-1, i] - b[i] = 0.05


def test_fwt_needs_the_initial_accuracies():
    assert continual_metrics(R)["fwt"] is None


def test_no_forgetting_and_total_forgetting():
    assert continual_metrics(np.ones((4, 4)))["bwt"] == 0.0
    assert continual_metrics(np.eye(4))["bwt"] == -1.0


def test_one_task_or_a_non_square_matrix_is_refused_in_one_line():
    for bad in (np.ones((1, 1)), np.ones((2, 3))):
        with pytest.raises(ConfigError) as err:
            continual_metrics(bad)
        assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="one per task"):
        continual_metrics(R, np.ones(2))


def test_mean_ci_uses_students_t():
    s = mean_ci([1.0, 2.0, 3.0, 4.0])
    sd = math.sqrt(5 / 3)
    assert s["mean"] == 2.5 and s["sd"] == pytest.approx(sd) and s["n"] == 4
    assert s["ci95"] == pytest.approx(3.182 * sd / 2)
    assert mean_ci([0.7])["ci95"] == 0.0


def test_t_quantile_table_and_expansion_agree_and_tend_to_the_normal():
    assert t_quantile_975(9) == 2.262
    assert t_quantile_975(31) == pytest.approx(2.0395, abs=2e-4)
    assert t_quantile_975(10_000) == pytest.approx(1.96, abs=1e-3)


def test_summary_over_runs_and_the_plots(tmp_path):
    runs = [R, R * 0.5]
    s = summarise_runs(runs, [B, B])
    assert s["acc"]["mean"] == pytest.approx(np.mean([R[2].mean(), 0.5 * R[2].mean()]))
    assert np.allclose(s["mean_matrix"], 0.75 * R)
    plot_accuracy_matrices({"a": R, "b": R * 0.5}, tmp_path / "r.png")
    plot_first_tasks({"a": runs}, tmp_path / "first.png", first=2)
    assert (tmp_path / "r.png").stat().st_size > 0 and (tmp_path / "first.png").stat().st_size > 0
