"""Meta-LSTM (Ravi & Larochelle 2017): the cell update is the paper's formula, gates stay in (0, 1), the
learner's gradient is an input (no second order), and a short meta-training run lowers the meta-loss."""

from __future__ import annotations

import torch
from helpers import adam_meta_losses, image_batch
from torch import nn

from fastadapt.algorithms.optimization.meta_lstm import MetaLSTM, MetaLSTMCell
from fastadapt.learned_optim.net import preprocess
from fastadapt.nets import Conv4


def tiny_learner() -> nn.Module:
    return Conv4(1, 4, 3, norm="episode", image_size=16).double()


def test_cell_update_is_the_formula_on_a_tiny_example():
    torch.manual_seed(0)
    cell = MetaLSTMCell(hidden=3).double()
    h = torch.randn(4, 3, dtype=torch.float64)
    grad, c_prev = torch.randn(4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    i_prev, f_prev = torch.rand(4, dtype=torch.float64), torch.rand(4, dtype=torch.float64)
    c, i, f = cell(h, grad, c_prev, i_prev, f_prev)
    W_I, b_I = cell.input_gate.weight[0], cell.input_gate.bias[0]
    W_F, b_F = cell.forget_gate.weight[0], cell.forget_gate.bias[0]
    for k in range(4):  # coordinate by coordinate, written out
        i_k = torch.sigmoid(W_I @ torch.cat([h[k], c_prev[k : k + 1], i_prev[k : k + 1]]) + b_I)
        f_k = torch.sigmoid(W_F @ torch.cat([h[k], c_prev[k : k + 1], f_prev[k : k + 1]]) + b_F)
        torch.testing.assert_close(i[k], i_k)
        torch.testing.assert_close(f[k], f_k)
        torch.testing.assert_close(c[k], f_k * c_prev[k] - i_k * grad[k])


def test_initialisation_starts_as_small_step_gradient_descent():
    cell = MetaLSTMCell(hidden=20)
    assert (cell.forget_gate.bias >= 4).all() and (cell.input_gate.bias <= -4).all()
    i, f = cell.gates(torch.zeros(5, 20), torch.zeros(5), torch.zeros(5), torch.zeros(5))
    assert (f > 0.98).all() and (i < 0.02).all()


def test_gates_stay_in_open_unit_interval_along_adaptation():
    """Along R's updates (with randomised gate weights, so not just the initial biases), every i_t and f_t
    lies strictly inside (0, 1)."""
    torch.manual_seed(0)
    learner = MetaLSTM(tiny_learner(), inner_steps=4).double()
    with torch.no_grad():
        for gate in (learner.cell.input_gate, learner.cell.forget_gate):
            gate.weight.normal_(0, 2.0)
            gate.bias.normal_(0, 2.0)
    batch = image_batch(tasks=1, size=16)
    c = learner.initial_cell_state().detach()
    n = c.numel()
    state = (c.new_zeros(n, 20), c.new_zeros(n, 20), c, c.new_zeros(n), c.new_zeros(n))
    for _ in range(4):
        loss, grad = learner.learner_loss_and_gradient(state[2], batch.support_x[0], batch.support_y[0])
        state = learner.update(state, loss, grad)
        i, f = state[3], state[4]
        assert ((i > 0) & (i < 1)).all() and ((f > 0) & (f < 1)).all()
        assert i.std() > 0 and f.std() > 0  # the gates differ per coordinate


def test_preprocessing_matches_appendix_a():
    x = torch.tensor([2.0, -3e-3, 1e-6, -1e-5, 0.0], dtype=torch.float64)
    p = 10.0
    out = preprocess(x, p)
    assert out.shape == (5, 2)
    torch.testing.assert_close(
        out[0], torch.tensor([torch.log(torch.tensor(2.0)).item() / p, 1.0], dtype=torch.float64)
    )
    torch.testing.assert_close(out[1, 1], torch.tensor(-1.0, dtype=torch.float64))
    e_p = torch.exp(torch.tensor(p, dtype=torch.float64))
    torch.testing.assert_close(out[2], torch.stack([torch.tensor(-1.0, dtype=torch.float64), 1e-6 * e_p]))
    torch.testing.assert_close(out[4], torch.tensor([-1.0, 0.0], dtype=torch.float64))


def test_first_update_applies_the_cell_to_the_learners_own_gradient():
    """theta_1 = f_1 * theta_0 - i_1 * grad L(theta_0): c_0 is the learner's initial weights, and the
    gradient R uses is the plain (detached) gradient of the support loss."""
    torch.manual_seed(0)
    learner = MetaLSTM(tiny_learner(), inner_steps=1).double()
    batch = image_batch(tasks=1, ways=3, shots=2, size=16)
    x, y = batch.support_x[0], batch.support_y[0]
    theta0 = learner.initial_cell_state()
    loss = nn.functional.cross_entropy(learner.model(x), y)
    grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(learner.model.parameters()))])
    got_loss, got_grad = learner.learner_loss_and_gradient(theta0, x, y)
    torch.testing.assert_close(got_grad, grad)
    assert not got_grad.requires_grad and not got_loss.requires_grad  # gradient independence

    n = theta0.numel()
    zeros = theta0.new_zeros(n)
    state = (theta0.new_zeros(n, 20), theta0.new_zeros(n, 20), theta0, zeros, zeros)
    h1, _, c1, i1, f1 = learner.update(state, got_loss, got_grad)
    torch.testing.assert_close(c1, f1 * theta0 - i1 * grad)
    adapted = learner.adapt(x, y, steps=1)
    torch.testing.assert_close(torch.cat([p.reshape(-1) for p in adapted.values()]), c1)


def test_meta_gradient_reaches_every_meta_parameter():
    torch.manual_seed(0)
    learner = MetaLSTM(tiny_learner(), inner_steps=2).double()
    learner.meta_loss(image_batch(tasks=2, size=16)).loss.backward()
    for name, p in learner.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_predict_needs_no_meta_gradient_and_matches_meta_loss_predictions():
    torch.manual_seed(0)
    learner = MetaLSTM(tiny_learner(), inner_steps=3).double()
    batch = image_batch(tasks=2, size=16)
    with torch.no_grad():
        predicted = learner.predict(batch)
    assert predicted.shape == (2, 6, 3) and not predicted.requires_grad
    torch.testing.assert_close(predicted, learner.meta_loss(batch).predictions.detach())


def test_short_meta_training_lowers_the_meta_loss():
    torch.manual_seed(0)
    learner = MetaLSTM(tiny_learner(), inner_steps=3)
    learner.float()
    batch = image_batch(tasks=2, ways=3, shots=2, query=3, size=16, dtype=torch.float32, uniform=True, seed=3)
    losses = adam_meta_losses(learner, batch, steps=15)
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3, losses
