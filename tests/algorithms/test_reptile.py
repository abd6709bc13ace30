import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import sinusoid_mse_before_and_after
from torch import nn

from fastadapt.algorithms.optimization.reptile import Reptile, minibatch_indices
from fastadapt.engine.functional import parameters_of
from fastadapt.engine.strategy import needs_measuring
from fastadapt.nets import MLP
from fastadapt.tasks.episodes import TaskBatch


def tiny_model():
    return nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1)).double()


def regression_batch(tasks=3, shots=4, query=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tasks, shots + query, 2, generator=g, dtype=torch.float64)
    y = torch.randn(tasks, shots + query, 1, generator=g, dtype=torch.float64)
    return TaskBatch(x[:, :shots], y[:, :shots], x[:, shots:], y[:, shots:], None)


def fine_tuned_by_hand(model, x, y, optimizer, steps, batches=None, **kwargs):
    """phi: a copy of the model trained with a torch.optim optimiser (whole set, or the given index batches)."""
    copy_ = copy.deepcopy(model)
    opt = optimizer(copy_.parameters(), **kwargs)
    for step in range(steps):
        idx = slice(None) if batches is None else batches[step]
        opt.zero_grad()
        F.mse_loss(copy_(x[idx]), y[idx]).backward()
        opt.step()
    return [p.detach() for p in copy_.parameters()]


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_outer_sgd_step_on_the_surrogate_is_the_reptile_update(strategy):
    torch.manual_seed(0)
    model, batch, epsilon = tiny_model(), regression_batch(), 0.3
    learner = Reptile(model, inner_lr=0.1, inner_steps=3, inner_optimizer="sgd", strategy=strategy)
    theta = [p.detach().clone() for p in model.parameters()]
    phis = [
        fine_tuned_by_hand(model, batch.support_x[i], batch.support_y[i], torch.optim.SGD, 3, lr=0.1)
        for i in range(batch.num_tasks)
    ]
    outer = torch.optim.SGD(learner.parameters(), lr=epsilon)
    outer.zero_grad()
    learner.meta_loss(batch).loss.backward()
    outer.step()
    for j, (t, p) in enumerate(zip(theta, model.parameters())):
        mean_phi = torch.stack([phi[j] for phi in phis]).mean(0)
        torch.testing.assert_close(p.detach(), t + epsilon * (mean_phi - t))


def test_adam_inner_loop_on_minibatches_equals_torch_adam():
    torch.manual_seed(1)
    model, batch = tiny_model(), regression_batch(tasks=1, shots=5)
    learner = Reptile(model, inner_lr=0.05, inner_optimizer="adam", adam_betas=(0.0, 0.999))
    indices = minibatch_indices(1, 5, batch_size=2, steps=6)[0]
    for vectorised in (False, True):
        fn = learner.fine_tune
        if vectorised:  # inside vmap, as strategy="vmap" runs it
            fn = torch.func.vmap(lambda *a: tuple(learner.fine_tune(parameters_of(model), *a, True)[0].values()))
            phi = [v[0] for v in fn(batch.support_x, batch.support_y, indices[None])]
        else:
            phi = list(fn(parameters_of(model), batch.support_x[0], batch.support_y[0], indices, False)[0].values())
        expected = fine_tuned_by_hand(
            model, batch.support_x[0], batch.support_y[0], torch.optim.Adam, 6, indices, lr=0.05, betas=(0.0, 0.999)
        )
        for a, b in zip(phi, expected):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_carried_adam_state_continues_one_adam_from_task_to_task(strategy):
    """As the authors' code: one Adam for the whole run, the weights reset to theta before each task."""
    torch.manual_seed(4)
    model = tiny_model()
    first, second = regression_batch(tasks=1, seed=1), regression_batch(tasks=1, seed=2)
    learner = Reptile(model, inner_lr=0.05, inner_steps=3, adam_state="carried", strategy=strategy)
    theta = copy.deepcopy(model.state_dict())
    by_hand = copy.deepcopy(model)
    adam = torch.optim.Adam(by_hand.parameters(), lr=0.05, betas=(0.0, 0.999))
    for task in (first, second):
        by_hand.load_state_dict(theta)
        for _ in range(3):
            adam.zero_grad()
            F.mse_loss(by_hand(task.support_x[0]), task.support_y[0]).backward()
            adam.step()
        if task is first:
            learner.meta_loss(first)  # no outer step: theta stays, the moments are carried
            state, steps = learner.carried_moments()
            assert steps == 3
            for (name, _), p in zip(model.named_parameters(), by_hand.parameters()):
                torch.testing.assert_close(state["m"][name], adam.state[p]["exp_avg"])
                torch.testing.assert_close(state["v"][name], adam.state[p]["exp_avg_sq"])
    phis, _, _ = learner._fine_tuned(second, 3, None)
    for (name, _), p in zip(model.named_parameters(), by_hand.parameters()):
        torch.testing.assert_close(phis[name][0], p.detach())
    # test tasks start from the carried moments and leave them as they were
    before = {k: b.clone() for k, b in learner.adam_moments.named_buffers()}
    learner.predict(second)
    for k, b in learner.adam_moments.named_buffers():
        assert torch.equal(b, before[k])


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_tasks_on_two_workers_give_the_same_update_moments_and_predictions(strategy):
    """Workers share out whole tasks after every task's mini-batches are drawn: the same phi_i, carried moments and
    predictions as one worker (5 tasks: uneven shares)."""
    batch = regression_batch(tasks=5, shots=8)
    results = []
    for workers in (1, 2):
        torch.manual_seed(0)
        model = tiny_model()
        learner = Reptile(model, inner_steps=3, inner_batch_size=3, adam_state="carried", strategy=strategy)
        learner.workers = workers
        torch.manual_seed(1)
        output = learner.meta_loss(batch)
        output.loss.backward()
        torch.manual_seed(2)
        predicted = learner.predict(batch)
        moments = [b.clone() for b in learner.adam_moments.buffers()]
        results.append(([p.grad for p in model.parameters()], moments, output.predictions, predicted))
    for one, two in zip(*results):
        torch.testing.assert_close(one, two, rtol=1e-12, atol=1e-14)


def test_workers_are_measured_except_with_running_statistics():
    learner = Reptile(tiny_model(), strategy="loop")
    assert learner.workers is None and needs_measuring(learner)
    assert learner.most_workers() == torch.get_num_threads()
    running = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3), nn.Linear(3, 1)).double()
    assert Reptile(running).most_workers() == 1


def test_carried_state_is_the_mean_over_the_meta_batch_and_needs_adam():
    torch.manual_seed(5)
    model, batch = tiny_model(), regression_batch(tasks=3)
    learner = Reptile(model, inner_lr=0.05, inner_steps=2, adam_state="carried")
    _, _, per_task = learner._fine_tuned(batch, 2, None)
    learner.meta_loss(batch)
    state, steps = learner.carried_moments()
    assert steps == 2
    for moment in ("m", "v"):
        for name, tensor in state[moment].items():
            torch.testing.assert_close(tensor, per_task[moment][name].mean(0))
    with pytest.raises(ValueError, match="needs the Adam inner optimiser"):
        Reptile(model, inner_optimizer="sgd", adam_state="carried")


def test_minibatches_walk_through_random_permutations():
    torch.manual_seed(2)
    idx = minibatch_indices(num_tasks=2, examples=6, batch_size=4, steps=3)  # 12 indices = two epochs
    assert idx.shape == (2, 3, 4)
    for task in idx.reshape(2, 2, 6):
        for epoch in task:
            assert sorted(epoch.tolist()) == list(range(6))
    assert minibatch_indices(2, 6, None, 3).shape == (2, 3, 6)


def test_predict_fine_tunes_without_touching_theta_and_strategies_agree():
    model = tiny_model()
    batch = regression_batch(tasks=4, shots=8)
    before = [p.detach().clone() for p in model.parameters()]
    support_as_query = TaskBatch(batch.support_x, batch.support_y, batch.support_x, batch.support_y, None)
    mse = []
    for steps in (0, 5, 50):
        learner = Reptile(model, inner_lr=0.05, inner_optimizer="sgd", eval_inner_steps=steps)
        with torch.no_grad():
            mse.append((learner.predict(support_as_query) - batch.support_y).square().mean().item())
    assert mse[0] > mse[1] > mse[2]
    for a, b in zip(before, model.parameters()):
        assert torch.equal(a, b)
    torch.manual_seed(3)
    loop = Reptile(model, inner_batch_size=3, eval_inner_steps=7, strategy="loop").predict(batch)
    torch.manual_seed(3)
    vmapped = Reptile(model, inner_batch_size=3, eval_inner_steps=7, strategy="vmap").predict(batch)
    torch.testing.assert_close(loop, vmapped)


def test_reptile_meta_training_lowers_post_adaptation_loss_on_sinusoids():
    torch.manual_seed(0)
    learner = Reptile(
        MLP(1, (40, 40), 1), inner_lr=0.02, inner_steps=5, inner_optimizer="sgd", eval_inner_steps=32, strategy="vmap"
    )
    optimizer = torch.optim.SGD(learner.parameters(), lr=1.0)  # epsilon
    before, after = sinusoid_mse_before_and_after(learner, optimizer, tasks_per_step=5)
    assert after < 0.5 * before  # measured: 3.83 -> 0.81
