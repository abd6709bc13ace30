"""Reptile (Nichol, Achiam & Schulman, "On First-Order Meta-Learning Algorithms", arXiv:1803.02999, 2018).

For each task T_i of a meta-batch, starting from theta, run k steps of an ordinary optimiser (SGD or
Adam; Adam with beta1 = 0 in the paper's code) on mini-batches of the task's support set::

    phi_i = U^k_{T_i}(theta)

then move theta towards the adapted weights (Algorithm 2, the batched version; Algorithm 1, the serial
version, is meta_batch_size = 1)::

    theta <- theta + epsilon * mean_i (phi_i - theta)

No gradient flows through the inner loop (phi_i is a constant for the outer update).

How the update is realised here. The generic trainer calls ``meta_loss(batch).loss.backward()`` and
then steps an outer optimiser, so :meth:`Reptile.meta_loss` returns the surrogate loss::

    loss = sum over parameter tensors of 0.5 * || theta - stopgrad(mean_i phi_i) ||^2

whose gradient with respect to theta is exactly ``theta - mean_i phi_i``. An outer
``torch.optim.SGD(lr=epsilon)`` step then gives ``theta - epsilon * (theta - mean phi) = theta +
epsilon * mean_i (phi_i - theta)``: the paper's update (tested). The paper anneals epsilon linearly to 0,
which is an outer learning-rate schedule. With Adam as the outer optimiser (the trainer's default) the
same gradient gives the "Reptile with an Adam outer step" variant, not the paper's update. The loss value
is half the squared length of the Reptile step, not a task loss; ``MetaOutput.predictions`` are the
query predictions of the adapted phi_i (a held-out post-adaptation score for training logs).

:meth:`Reptile.predict` fine-tunes from theta on each support set with the inner optimiser for
``eval_inner_steps`` steps (mini-batches of ``eval_inner_batch_size``) and predicts the query set.
Unlike the paper's TensorFlow code, whose Adam moments persist from task to task, every task starts
with a fresh optimiser state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from torch import Tensor, nn

from fastadapt.algorithms.base import MetaLearner, MetaOutput, task_loss
from fastadapt.functional import Params, Strategy, call, gradients, map_tasks, parameters_of, sgd_step
from fastadapt.tasks.episodes import TaskBatch

InnerOptimizer = Literal["sgd", "adam"]
INNER_OPTIMIZERS: tuple[str, ...] = ("sgd", "adam")


def minibatch_indices(num_tasks: int, examples: int, batch_size: int | None, steps: int) -> Tensor:
    """(tasks, steps, batch) indices into each task's support set: the paper's ``_mini_batches``, i.e.
    consecutive chunks of a stream of random permutations (a batch may straddle two epochs).
    ``batch_size=None`` means the whole support set at every step. Uses torch's global random state."""
    if batch_size is None:
        return torch.arange(examples).expand(num_tasks, steps, examples)
    if batch_size < 1:
        raise ValueError(f"inner batch size must be at least 1 (got {batch_size})")
    epochs = -(-steps * batch_size // examples)
    stream = torch.rand(num_tasks, epochs, examples).argsort(dim=-1).reshape(num_tasks, -1)
    return stream[:, : steps * batch_size].reshape(num_tasks, steps, batch_size)


def adam_step(
    params: Params,
    grads: Params,
    state: dict[str, Params],
    step: int,
    lr: float,
    betas: tuple[float, float],
    eps: float,
) -> tuple[Params, dict[str, Params]]:
    """One step of Adam (torch.optim.Adam's update, no weight decay) on a parameter dict; ``step``
    counts from 1. ``state`` holds the first and second moments ``m`` and ``v``."""
    beta1, beta2 = betas
    m = {k: beta1 * state["m"][k] + (1 - beta1) * g for k, g in grads.items()}
    v = {k: beta2 * state["v"][k] + (1 - beta2) * g * g for k, g in grads.items()}
    correction1, correction2 = 1 - beta1**step, 1 - beta2**step
    new = {k: p - lr * (m[k] / correction1) / ((v[k] / correction2).sqrt() + eps) for k, p in params.items()}
    return new, {"m": m, "v": v}


class Reptile(MetaLearner):
    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 1e-3,
        inner_steps: int = 5,
        inner_optimizer: InnerOptimizer = "adam",
        inner_batch_size: int | None = None,
        eval_inner_steps: int | None = None,
        eval_inner_batch_size: int | None = None,
        adam_betas: tuple[float, float] = (0.0, 0.999),
        adam_eps: float = 1e-8,
        strategy: Strategy = "loop",
    ) -> None:
        super().__init__()
        if inner_optimizer not in INNER_OPTIMIZERS:
            raise ValueError(f"unknown inner optimizer {inner_optimizer!r}; choose one of {INNER_OPTIMIZERS}")
        self.model = model
        self.inner_lr = inner_lr
        self.inner_steps = inner_steps
        self.inner_optimizer = inner_optimizer
        self.inner_batch_size = inner_batch_size
        self.eval_inner_steps = inner_steps if eval_inner_steps is None else eval_inner_steps
        self.eval_inner_batch_size = inner_batch_size if eval_inner_batch_size is None else eval_inner_batch_size
        self.adam_betas = tuple(adam_betas)
        self.adam_eps = adam_eps
        self.strategy = strategy

    def fine_tune(
        self, theta: Mapping[str, Tensor], support_x: Tensor, support_y: Tensor, indices: Tensor, vectorised: bool
    ) -> Params:
        """phi_i = U^k(theta): one step of the inner optimiser per row of ``indices`` (steps, batch), each
        on that mini-batch of the support set. Not differentiable with respect to theta."""
        params = {k: v.detach() for k, v in theta.items()}
        state = {moment: {k: torch.zeros_like(v) for k, v in params.items()} for moment in ("m", "v")}  # Adam
        with torch.enable_grad():
            for step in range(1, indices.shape[0] + 1):
                x, y = support_x[indices[step - 1]], support_y[indices[step - 1]]
                if not vectorised:  # torch.autograd.grad needs leaves that require grad
                    params = {k: v.detach().requires_grad_() for k, v in params.items()}
                loss = lambda p, x=x, y=y: task_loss(call(self.model, p, x), y)
                grads = gradients(loss, params, create_graph=False, vectorised=vectorised)
                if self.inner_optimizer == "sgd":
                    params = sgd_step(params, grads, self.inner_lr)
                else:
                    params, state = adam_step(params, grads, state, step, self.inner_lr, self.adam_betas, self.adam_eps)
        return {k: v.detach() for k, v in params.items()}

    def _fine_tuned(self, batch: TaskBatch, steps: int, batch_size: int | None) -> tuple[Params, Tensor]:
        """phi_i for every task (stacked along a leading task dimension) and its query predictions."""
        theta = parameters_of(self.model)
        indices = minibatch_indices(batch.num_tasks, batch.support_x.shape[1], batch_size, steps)
        indices = indices.to(batch.support_x.device)

        def one_task(support_x, support_y, query_x, task_indices, vectorised):
            phi = self.fine_tune(theta, support_x, support_y, task_indices, vectorised)
            with torch.no_grad():
                predictions = call(self.model, phi, query_x)
            return (*phi.values(), predictions)

        *phis, predictions = map_tasks(
            one_task, (batch.support_x, batch.support_y, batch.query_x, indices), self.strategy
        )
        return dict(zip(theta.keys(), phis)), predictions

    def meta_loss(self, batch: TaskBatch) -> MetaOutput:
        """Surrogate loss whose gradient is theta - mean_i phi_i (see the module docstring)."""
        phis, predictions = self._fine_tuned(batch, self.inner_steps, self.inner_batch_size)
        theta = parameters_of(self.model)
        loss = sum(0.5 * (theta[k] - phis[k].mean(dim=0)).square().sum() for k in theta)
        return MetaOutput(loss, predictions)

    def predict(self, batch: TaskBatch, steps: int | None = None) -> Tensor:
        steps = self.eval_inner_steps if steps is None else steps
        _, predictions = self._fine_tuned(batch, steps, self.eval_inner_batch_size)
        return predictions

    def extra_repr(self) -> str:
        return (
            f"inner_optimizer={self.inner_optimizer!r}, inner_lr={self.inner_lr}, inner_steps={self.inner_steps}, "
            f"inner_batch_size={self.inner_batch_size}, eval_inner_steps={self.eval_inner_steps}, "
            f"eval_inner_batch_size={self.eval_inner_batch_size}, strategy={self.strategy!r}"
        )
