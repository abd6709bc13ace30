import copy

import pytest
import torch
import torch.nn.functional as F

from fastadapt.algorithms.continual.la_maml import LaMAML, LaMAMLOptions, build, mlp
from fastadapt.continual.protocol import run_task_stream
from fastadapt.engine.functional import parameter_key
from fastadapt.errors import ConfigError
from fastadapt.tasks.episodes import TaskBatch
from fastadapt.tasks.replay import ReservoirBuffer
from fastadapt.tasks.streams import Task, TaskStream


def tiny(second_order=False, **kwargs) -> LaMAML:
    torch.manual_seed(0)
    return LaMAML(mlp(4, 5, 1, 3).double(), alpha_init=0.2, second_order=second_order, seed=0, **kwargs)


def incoming(k=3, m=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(k, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (k,), generator=g)
    bx = torch.cat([torch.randn(m, 4, generator=g, dtype=torch.float64), x])
    by = torch.cat([torch.randint(0, 3, (m,), generator=g), y])
    return x, y, bx, by


def reference_gradients(learner: LaMAML, x, y, bx, by, create_graph):
    """A plain autograd loop: weights as a list, one step per incoming example with relu(alpha), the meta-loss
    averaged over the weights after every step; gradients for the weights and for alpha."""
    names = [n for n, _ in learner.model.named_parameters()]
    weights = list(learner.model.parameters())
    alphas = [learner.alpha[parameter_key(n)] for n in names]
    model = learner.model
    fast, losses = weights, []

    def forward(inp, w):
        return F.linear(F.relu(F.linear(inp, w[0], w[1])), w[2], w[3])

    for n in range(len(y)):
        loss = F.cross_entropy(forward(x[n : n + 1], fast), y[n : n + 1])
        grads = torch.autograd.grad(loss, fast, create_graph=create_graph)
        fast = [w - g * F.relu(a) for w, g, a in zip(fast, grads, alphas)]
        losses.append(F.cross_entropy(forward(bx, fast), by))
    meta = sum(losses) / len(losses)
    assert model is learner.model
    return torch.autograd.grad(meta, weights + alphas)


@pytest.mark.parametrize("second_order", [False, True])
def test_meta_gradient_for_weights_and_learning_rates_matches_a_reference_loop_in_float64(second_order):
    learner = tiny(second_order)
    x, y, bx, by = incoming()
    expected = reference_gradients(learner, x, y, bx, by, create_graph=second_order)
    learner.meta_loss(TaskBatch(x[None], y[None], bx[None], by[None], 3)).loss.backward()
    names = [n for n, _ in learner.model.named_parameters()]
    got = [p.grad for p in learner.model.parameters()] + [learner.alpha[parameter_key(n)].grad for n in names]
    for g, e in zip(got, expected):
        assert torch.allclose(g, e, atol=1e-12, rtol=1e-10)
    assert all(a.grad.abs().sum() > 0 for a in learner.alpha.values())  # the rates are meta-learned


def test_observe_updates_the_rates_then_the_weights_with_the_new_rates():
    learner = tiny(grad_clip=0.0, glances=1, memory=0, replay_batch=0)
    x, y, _, _ = incoming()
    reference = copy.deepcopy(learner)
    order = torch.as_tensor(copy.deepcopy(learner.rng).permutation(3))  # the shuffle observe will draw
    # one glance, empty buffer: the meta-loss batch b_m is the incoming batch itself
    reference.look_ahead_loss(x[order], y[order], x[order], y[order]).backward()
    new_alpha = {k: a - 0.3 * a.grad for k, a in reference.alpha.items()}
    expected = [p - F.relu(new_alpha[parameter_key(n)]) * p.grad for n, p in reference.model.named_parameters()]
    learner.observe(x, y)
    for p, e in zip(learner.model.parameters(), expected):
        assert torch.allclose(p, e, atol=1e-12)
    assert len(learner.buffer) == 0 and learner.buffer.seen == 3


def test_buffer_larger_than_the_stream_is_refused_in_one_line():
    tasks = [Task(str(t), torch.randn(6, 4), torch.zeros(6).long(), torch.randn(2, 4), torch.zeros(2).long())
             for t in range(2)]  # fmt: skip
    learner = build(LaMAMLOptions(inputs=4, hidden=5, num_classes=3, memory=20))
    with pytest.raises(ConfigError) as err:
        run_task_stream(learner, TaskStream("tiny", tasks, 3))
    assert "only 12" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="replay_batch"):
        LaMAMLOptions(memory=5, replay_batch=10).validate()


def test_reservoir_keeps_a_uniform_sample():
    hits = torch.zeros(50)
    for trial in range(300):
        buffer = ReservoirBuffer(5, seed=trial)
        buffer.add(torch.arange(50).float()[:, None], torch.arange(50))
        assert len(buffer) == 5 and buffer.seen == 50
        hits[buffer.y] += 1
    share = hits / 300  # each example should be kept with probability 5/50
    assert share[:10].mean() == pytest.approx(0.1, abs=0.03) and share[-10:].mean() == pytest.approx(0.1, abs=0.03)
    x, y = buffer.sample(3)
    assert len(set(y.tolist())) == 3 and torch.equal(x[:, 0].long(), y)
