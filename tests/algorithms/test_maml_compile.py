"""``compile=True``: the MAML family's meta-gradient through ``torch.compile`` equals the eager one.

Each compile takes seconds to a minute, so the cases are few and small: float64 throughout, so that the
comparison is tight."""

import pytest
import torch
from helpers import image_batch

from fastadapt.algorithms import ANIL, MAML, MAMLPlusPlus, MetaSGD
from fastadapt.datasets.sinusoid import SinusoidTasks
from fastadapt.nets import MLP, Conv4Stride


def gradients_and_output(learner, batch):
    learner.zero_grad(set_to_none=True)
    output = learner.meta_backward(batch)
    return [None if p.grad is None else p.grad.clone() for p in learner.parameters()], output


def assert_compiled_equals_eager(make, batch):
    eager_grads, eager_out = gradients_and_output(make(False), batch)
    compiled = make(True)
    compiled_grads, compiled_out = gradients_and_output(compiled, batch)
    torch.testing.assert_close(compiled_out.loss, eager_out.loss)
    torch.testing.assert_close(compiled_out.predictions, eager_out.predictions)
    for got, expected in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(got, expected)
    return compiled


def test_compiled_maml_plus_plus_with_batch_norm_equals_eager():
    """Second order over 2 steps, task by task, with per-step learning rates and batch-norm weights and the
    multi-step loss; the episode batch norm takes its traceable form."""
    batch = image_batch(tasks=3)

    def make(compile):
        torch.manual_seed(0)
        net = Conv4Stride(1, 4, 3).double()
        return MAMLPlusPlus(
            net,
            0.3,
            2,
            strategy="loop",
            multi_step_loss=True,
            multi_step_loss_steps=10,
            per_step_lr=True,
            per_step_bn=True,
            compile=compile,
        )

    learner = assert_compiled_equals_eager(make, batch)
    # A later step changes MSL's weights, which the trace takes as a tensor: the same result again.
    eager = make(False)
    learner.training_step = eager.training_step = 7
    expected, _ = gradients_and_output(eager, batch)
    got, _ = gradients_and_output(learner, batch)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)


@pytest.mark.parametrize("cls", [MetaSGD, ANIL])
def test_compiled_meta_sgd_and_anil_equal_eager(cls):
    """Meta-SGD's learned rates get their gradient through the compiled program, here vectorised over chunks
    of 3 and 1 tasks; ANIL adapts the head only."""
    batch = SinusoidTasks(shots=5, query=5, seed=3).sample(4).to(torch.float64)

    def make(compile):
        torch.manual_seed(0)
        kwargs = {"head": "4."} if cls is ANIL else {}
        strategy = {"strategy": "vmap", "vmap_chunk": 3} if cls is MetaSGD else {}
        net = MLP(1, (8, 8), 1).double()
        return cls(net, inner_lr=0.05, inner_steps=2, compile=compile, **kwargs, **strategy)

    learner = assert_compiled_equals_eager(make, batch)
    if cls is MetaSGD:
        assert all(p.grad.abs().sum() > 0 for p in learner.inner_lrs.values())


def test_compile_leaves_evaluation_eager():
    learner = MAML(MLP(1, (8,), 1), 0.05, 1, compile=True)
    batch = SinusoidTasks(shots=5, query=5, seed=3).sample(2)
    assert learner._compiled_gradient is None
    learner.predict(batch)
    assert learner._compiled_gradient is None
    assert "compile" in repr(learner)


def test_compile_is_refused_where_it_does_nothing():
    from fastadapt.config import make_config
    from fastadapt.errors import ConfigError

    assert make_config("maml", "omniglot", compile=True).compile
    with pytest.raises(ConfigError, match="--compile applies to --algorithm maml"):
        make_config("protonet", "omniglot", compile=True)
