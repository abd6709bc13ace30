import numpy as np
import pytest
import torch

from fastadapt.continual.metrics import continual_metrics
from fastadapt.continual.protocol import choose_learning_rate, repeat_task_stream, run_task_stream
from fastadapt.errors import ConfigError
from fastadapt.tasks.streams import Task, TaskStream


class LastTaskOnly:
    """Knows only the task it saw last: inputs carry their task's id, labels are (task id) mod 2."""

    def __init__(self):
        self.last = -1

    def observe(self, x, y):
        self.last = int(x[0, 0])
        return 0.0

    def predict_logits(self, x):
        task = x[:, 0].long()
        right = torch.nn.functional.one_hot(task % 2, 2).float()
        return torch.where((task == self.last)[:, None], right, 1 - right)

    def check_stream(self, stream):
        pass


def id_stream(tasks=4):
    made = []
    for t in range(tasks):
        x = torch.full((6, 2), float(t))
        y = torch.full((6,), t % 2)
        made.append(Task(str(t), x, y, x[:3], y[:3]))
    return TaskStream("ids", made, 2)


def test_accuracy_matrix_row_i_is_measured_after_task_i():
    r, b = run_task_stream(LastTaskOnly(), id_stream(), batch_size=4)
    assert np.array_equal(r, np.eye(4)) and np.array_equal(b, np.zeros(4))
    m = continual_metrics(r, b)
    assert m == {"acc": 0.25, "bwt": -1.0, "fwt": 0.0}


def test_repeated_runs_are_summarised_with_intervals():
    s = repeat_task_stream(lambda seed: LastTaskOnly(), lambda seed: id_stream(3), seeds=[0, 1], progress=False)
    assert s["acc"]["mean"] == pytest.approx(1 / 3) and s["bwt"]["ci95"] == 0.0 and len(s["matrices"]) == 2


def test_learning_rate_is_the_most_frequent_winner_ties_to_the_best_mean():
    assert choose_learning_rate({0.1: [0.5, 0.9, 0.9], 0.01: [0.6, 0.1, 0.2]}) == 0.1
    assert choose_learning_rate({0.1: [0.5, 0.9], 0.01: [0.6, 0.1]}) == 0.1  # one win each; 0.7 > 0.35


def test_bad_batch_size():
    with pytest.raises(ConfigError, match="batch_size"):
        run_task_stream(LastTaskOnly(), id_stream(), batch_size=0)
