"""The learned LSTM optimiser (Andrychowicz et al. 2016): saved, loaded and stepped on a fresh model as a
torch optimiser; meta-training lowers the meta-loss; baselines over a batch of problems are separate runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fastadapt.errors import DataError
from fastadapt.learned_optim import (
    LSTMOptimizer,
    LSTMOptimizerNet,
    OmniglotMLPs,
    Quadratics,
    load_net,
    meta_train,
    run_baseline,
    run_learned,
    save_net,
)
from fastadapt.tasks.samplers import ClassSplit


def test_saved_loaded_optimiser_steps_a_fresh_model_like_the_original(tmp_path):
    torch.manual_seed(0)
    net = LSTMOptimizerNet()
    with torch.no_grad():
        net.out.weight.normal_()  # not a zero-ish update: loading must restore these exact values
    save_net(net, tmp_path / "opt.pt")
    loaded = load_net(tmp_path / "opt.pt")
    assert not list(tmp_path.glob(".*tmp*"))  # atomic write leaves no temporary file

    def trajectory(optimiser_net):
        torch.manual_seed(1)
        model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
        opt = LSTMOptimizer(model.parameters(), net=optimiser_net)
        x, y = torch.randn(16, 3), torch.randn(16, 1)
        before = [p.detach().clone() for p in model.parameters()]
        for _ in range(3):
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
        assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
        return [p.detach().clone() for p in model.parameters()], opt

    original, opt = trajectory(net)
    again, _ = trajectory(loaded)
    for a, b in zip(original, again):
        torch.testing.assert_close(a, b)
    # The per-parameter LSTM states travel with the optimiser's state_dict.
    state = opt.state_dict()
    assert set(state["state"][0]) == {"h0", "c0", "h1", "c1"} and state["state"][0]["h0"].shape == (12, 20)


def test_optimiser_step_is_the_nets_update():
    torch.manual_seed(0)
    net = LSTMOptimizerNet()
    p = nn.Parameter(torch.randn(2, 3))
    p.grad = torch.randn(2, 3)
    start = p.detach().clone()
    LSTMOptimizer([p], net=net).step()
    update, _ = net(p.grad.reshape(-1), net.initial_state(6, start))
    torch.testing.assert_close(p.detach(), start + update.detach().view(2, 3))


def test_load_refuses_a_missing_or_foreign_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_net(tmp_path / "none.pt")
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(DataError, match="not a learned optimiser"):
        load_net(tmp_path / "other.pt")


def test_output_scale_and_coordinatewise_sharing():
    torch.manual_seed(0)
    net = LSTMOptimizerNet(output_scale=0.1)
    grad = torch.randn(7)
    update, _ = net(grad, net.initial_state(7, grad))
    # Coordinate-wise: a coordinate's update does not depend on the others.
    alone, _ = net(grad[:1], net.initial_state(1, grad))
    torch.testing.assert_close(update[:1], alone)
    net.output_scale = 0.2
    doubled, _ = net(grad, net.initial_state(7, grad))
    torch.testing.assert_close(doubled, 2 * update)


def test_short_meta_training_on_quadratics_lowers_the_meta_loss():
    torch.manual_seed(0)
    net = LSTMOptimizerNet()
    quadratics = Quadratics(4)
    held_out = quadratics.sample(64, torch.Generator().manual_seed(99))
    before = run_learned(net, held_out, 10).mean().item()
    history = meta_train(net, quadratics, iterations=30, horizon=10, unroll=5, batch=32, lr=1e-2, seed=0)
    assert np.mean(history[-5:]) < 0.7 * np.mean(history[:5]), history
    assert run_learned(net, held_out, 10).mean().item() < 0.7 * before


def test_cosine_meta_lr_anneals_to_zero_and_still_learns():
    torch.manual_seed(0)
    net = LSTMOptimizerNet()
    snapshots = [torch.cat([p.detach().flatten() for p in net.parameters()])]

    def snapshot(iteration, loss):
        snapshots.append(torch.cat([p.detach().flatten() for p in net.parameters()]))

    history = meta_train(
        net, Quadratics(4), 30, horizon=10, unroll=5, batch=32, lr=1e-2, log=snapshot, lr_schedule="cosine"
    )
    assert np.mean(history[-5:]) < 0.8 * np.mean(history[:5]), history
    first_change = (snapshots[1] - snapshots[0]).abs().max()
    last_change = (snapshots[-1] - snapshots[-2]).abs().max()
    assert last_change < 0.05 * first_change  # Adam's steps shrink with the annealed rate
    with pytest.raises(ValueError, match="lr_schedule"):
        meta_train(net, Quadratics(4), iterations=1, horizon=10, unroll=5, lr_schedule="step")


def test_baseline_over_a_batch_equals_separate_runs():
    problems = Quadratics(3).sample(4, torch.Generator().manual_seed(0))
    together = run_baseline("Adam", 0.1, problems, 5)
    for b in range(4):
        one = type(problems)(problems.initial[b : b + 1], problems.name, problems.W[b : b + 1], problems.y[b : b + 1])
        torch.testing.assert_close(run_baseline("Adam", 0.1, one, 5)[:, 0], together[:, b])


def test_mlp_problems_on_an_image_split():
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (12 * 5, 1, 6, 6), dtype=np.uint8))
    split = ClassSplit("train", images, [np.arange(c * 5, (c + 1) * 5) for c in range(12)], [str(c) for c in range(12)])
    family = OmniglotMLPs(split, hidden=7, classes=10)
    problems = family.sample(2, torch.Generator().manual_seed(0))
    assert problems.initial.shape == (2, family.num_params) and problems.x.shape == (2, 50, 36)
    losses = run_baseline("SGD", 0.5, problems, 20)
    assert losses.shape == (21, 2) and (losses[-1] < losses[0]).all()
    with pytest.raises(DataError, match="needs 20 classes"):
        OmniglotMLPs(split, classes=20)


@pytest.mark.parametrize("activation, layer", [("sigmoid", nn.Sigmoid), ("relu", nn.ReLU)])
def test_mlp_problem_loss_is_that_of_the_same_network_as_modules(activation, layer):
    rng = np.random.default_rng(1)
    images = torch.from_numpy(rng.integers(0, 256, (10 * 3, 1, 4, 4), dtype=np.uint8))
    split = ClassSplit("train", images, [np.arange(c * 3, (c + 1) * 3) for c in range(10)], [str(c) for c in range(10)])
    problem = OmniglotMLPs(split, hidden=5, activation=activation).sample(1, torch.Generator().manual_seed(0))
    w1, b1, w2, b2 = (t[0] for t in problem.unpack(problem.initial))
    net = nn.Sequential(nn.Linear(16, 5), layer(), nn.Linear(5, 10))
    with torch.no_grad():
        net[0].weight.copy_(w1.T), net[0].bias.copy_(b1[0]), net[2].weight.copy_(w2.T), net[2].bias.copy_(b2[0])
    expected = nn.functional.cross_entropy(net(problem.x[0]), problem.y[0])
    torch.testing.assert_close(problem.loss(problem.initial)[0], expected)
    with pytest.raises(ValueError, match="activation"):
        OmniglotMLPs(split, activation="tanh")
