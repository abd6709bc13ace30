import pytest
import torch
from helpers import sinusoid_mse_before_and_after

from fastadapt.algorithms import MAML, MAMLPlusPlus
from fastadapt.datasets.sinusoid import SinusoidTasks
from fastadapt.nets import MLP


def test_maml_meta_training_lowers_post_adaptation_loss_on_sinusoids():
    torch.manual_seed(0)
    learner = MAML(MLP(1, (40, 40), 1), inner_lr=0.01, inner_steps=1, strategy="vmap")
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
    before, after = sinusoid_mse_before_and_after(learner, optimizer)
    assert after < 0.7 * before


def test_adaptation_lowers_support_loss_and_more_steps_fit_better():
    torch.manual_seed(0)
    learner = MAML(MLP(1, (40, 40), 1), inner_lr=0.01, inner_steps=1)
    batch = SinusoidTasks(shots=10, query=10, seed=3).sample(20)
    support_as_query = type(batch)(batch.support_x, batch.support_y, batch.support_x, batch.support_y, None)
    mse = [(learner.predict(support_as_query, steps=k) - batch.support_y).square().mean().item() for k in (0, 1, 10)]
    assert mse[0] > mse[1] > mse[2]


@pytest.mark.parametrize("strategy, vmap_chunk", [("loop", 8), ("vmap", 3), ("vmap", 2), ("vmap", 0)])
def test_meta_backward_gives_the_meta_gradient_task_by_task(strategy, vmap_chunk):
    """The per-task backward of the loop strategy, and vmap run chunk by chunk (3 + 1 and 2 + 2 tasks) or
    all at once (0), equal one backward of the mean meta-loss, for second-order MAML and Meta-SGD (whose inner rates are
    parameters too), and return the same loss."""
    from fastadapt.algorithms import MetaSGD

    batch = SinusoidTasks(shots=5, query=5, seed=3).sample(4).to(torch.float64)
    for cls in (MAML, MetaSGD):
        torch.manual_seed(0)
        model = MLP(1, (8, 8), 1).double()
        learner = cls(model, inner_lr=0.05, inner_steps=2, strategy=strategy, vmap_chunk=vmap_chunk)
        loss = learner.meta_loss(batch).loss
        expected = torch.autograd.grad(loss, list(learner.parameters()))
        learner.zero_grad()
        output = learner.meta_backward(batch)
        torch.testing.assert_close(output.loss, loss.detach())
        assert not output.loss.requires_grad and output.predictions.shape == (4, 5, 1)
        for p, g in zip(learner.parameters(), expected):
            torch.testing.assert_close(p.grad, g)


def test_vmap_chunk_must_not_be_negative():
    from fastadapt.errors import ConfigError

    with pytest.raises(ConfigError, match="--vmap-chunk"):
        MAML(MLP(1, (8,), 1), strategy="vmap", vmap_chunk=-1)


def test_default_vmap_chunk_follows_what_a_task_holds():
    """Several second-order steps: the graph grows with the steps; first order frees each step's graph."""
    net = MLP(1, (8,), 1)
    assert MAML(net, inner_steps=1, strategy="vmap", workers=1).tasks_per_call() == 8
    assert MAML(net, inner_steps=5, strategy="vmap", workers=1).tasks_per_call() == 4
    # Workers share the tasks in flight, so the memory they hold stays that of one worker's chunk.
    assert MAML(net, inner_steps=5, strategy="vmap", workers=2).tasks_per_call() == 2
    assert MAML(net, inner_steps=1, strategy="vmap", workers=16).tasks_per_call() == 1
    assert MAML(net, inner_steps=5, first_order=True, strategy="vmap", workers=1).tasks_per_call() == 8
    # One first-order step holds the least per task: more of them per call.
    assert MAML(net, inner_steps=1, first_order=True, strategy="vmap", workers=2).tasks_per_call() == 8
    assert MAML(net, inner_steps=5, strategy="vmap", vmap_chunk=16).tasks_per_call() == 16
    doa = MAMLPlusPlus(
        net, inner_steps=5, first_order_steps=10, strategy="vmap", workers=1
    )  # first order until step 10
    assert doa.tasks_per_call() == 8
    doa.training_step = 10
    assert doa.tasks_per_call() == 4


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_tasks_on_several_workers_give_the_same_meta_gradient_and_predictions(strategy):
    """Workers (fastadapt.engine.taskpool) change where tasks run, not what is computed: MAML++ with per-step
    batch-norm weights and learning rates, Meta-SGD and ANIL, second order, vmap in chunks of 2."""
    from helpers import image_batch

    from fastadapt.algorithms import ANIL, MetaSGD
    from fastadapt.nets import Conv4

    batch = image_batch(tasks=5, ways=3, shots=2, query=2, size=16)
    makers = {
        "maml++": lambda net, **kw: MAMLPlusPlus(net, 0.1, 2, per_step_bn=True, per_step_lr=True, **kw),
        "metasgd": lambda net, **kw: MetaSGD(net, 0.1, 1, **kw),
        "anil": lambda net, **kw: ANIL(net, 0.1, 2, head="head.", **kw),
    }
    for name, make in makers.items():
        results = []
        for workers in (1, 3):
            torch.manual_seed(0)
            learner = make(Conv4(1, 4, 3, norm="episode", image_size=16).double(), strategy=strategy, vmap_chunk=2)
            learner.workers = workers
            output = learner.meta_backward(batch)
            grads = [p.grad for p in learner.parameters() if p.requires_grad]
            with torch.no_grad():
                predictions = learner.predict(batch)
            results.append((output, grads, predictions))
        (serial, serial_grads, serial_predictions), (spread, spread_grads, spread_predictions) = results
        torch.testing.assert_close(spread.loss, serial.loss, msg=name)
        torch.testing.assert_close(spread.predictions, serial.predictions, msg=name)
        assert len(spread_grads) == len(serial_grads) and None not in spread_grads
        for a, b in zip(spread_grads, serial_grads):
            torch.testing.assert_close(a, b, msg=name)
        torch.testing.assert_close(spread_predictions, serial_predictions, msg=name)
        assert not spread_predictions.requires_grad


def test_workers_wait_for_a_measurement_and_stay_one_where_thread_timing_would_matter():
    from fastadapt.errors import ConfigError

    net = MLP(1, (8,), 1)
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        assert MAML(net).task_workers() == 1  # until fastadapt.engine.strategy.choose_strategy has measured
        assert MAML(net).most_workers() == 3  # one per torch thread is the other candidate
        assert MAML(net, compile=True).most_workers() == 1
        # Dropout's draws and running batch-norm statistics would follow thread timing.
        assert MAML(torch.nn.Sequential(torch.nn.Linear(1, 8), torch.nn.Dropout(0.1))).most_workers() == 1
        assert MAML(torch.nn.Sequential(torch.nn.Linear(1, 8), torch.nn.BatchNorm1d(8))).most_workers() == 1
        episode_norm = torch.nn.Sequential(torch.nn.Linear(1, 8), torch.nn.BatchNorm1d(8, track_running_stats=False))
        assert MAML(episode_norm).most_workers() == 3
    finally:
        torch.set_num_threads(threads)
    assert MAML(net, workers=3).task_workers() == 3
    with pytest.raises(ConfigError, match="--workers"):
        MAML(net, workers=0)


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_channels_last_gives_the_same_meta_gradient_and_predictions(strategy):
    """Laying image batches out channels-last changes only how memory is read: the second-order meta-gradient
    over two inner steps and the predictions equal the standard layout's in float64, for a network built from
    torch's layers (batch norm, max pooling) as for fastadapt's."""
    from helpers import image_batch

    from fastadapt.engine.layers import EpisodeBatchNorm2d, MaxPool2x2

    batch = image_batch(tasks=3, ways=3, shots=2, query=2, size=16)
    results = []
    for channels_last in (False, True):
        torch.manual_seed(0)
        network = torch.nn.Sequential(
            torch.nn.Conv2d(1, 4, 3, padding=1),
            torch.nn.BatchNorm2d(4, track_running_stats=False),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(4, 6, 3, padding=1),
            EpisodeBatchNorm2d(6),
            MaxPool2x2(),
            torch.nn.ReLU(),
            torch.nn.Flatten(),  # of a 4x4 map: channels-last memory, the standard order of values
            torch.nn.Linear(6 * 4 * 4, 3),
        ).double()
        layouts = set()
        if strategy == "loop":  # vmap's batched tensors hide their layout
            network[4].register_forward_hook(
                lambda module, inputs, output, seen=layouts: seen.add(
                    inputs[0].is_contiguous(memory_format=torch.channels_last)
                )
            )
        learner = MAML(network, inner_lr=0.3, inner_steps=2, strategy=strategy, channels_last=channels_last)
        learner.meta_backward(batch)
        results.append(([p.grad for p in learner.parameters()], learner.predict(batch)))
        if strategy == "loop":
            assert layouts == {channels_last}
    (standard_grads, standard_predictions), (grads, predictions) = results
    torch.testing.assert_close(predictions, standard_predictions)
    for got, expected in zip(grads, standard_grads):
        torch.testing.assert_close(got, expected)
