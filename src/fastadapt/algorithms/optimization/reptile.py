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
Adam's state. The paper's TensorFlow code keeps one Adam optimiser for the whole run: its moments (and
its bias-correction step count) carry over from task to task, and each test task starts from them too
(restored afterwards). ``adam_state="carried"`` does that: every task of a meta-batch starts from the
carried moments, and after the meta-batch they become the tasks' mean (the code runs the tasks one after
another, so there the next task starts from the previous one's); test tasks read them and leave them.
Under torchrun each process carries the moments of its own tasks, averaged at every validation.
``adam_state="fresh"`` starts every task from zero moments, which with beta1 = 0 makes the first steps
nearly sign descent: every weight moves by about ``inner_lr`` whatever its gradient's size.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from fastadapt.algorithms.base import MetaLearner, MetaOutput, check_per_way_head, task_loss
from fastadapt.algorithms.registry import Algorithm, register
from fastadapt.engine.execution import Execution, StrategyOptions, task_workers
from fastadapt.engine.fastlayers import with_fast_layers
from fastadapt.engine.functional import (
    Params,
    Strategy,
    call,
    gradients,
    map_tasks,
    parameter_key,
    parameters_of,
    sgd_step,
)
from fastadapt.engine.taskpool import available_workers, map_parts, timing_dependent_modules
from fastadapt.errors import ConfigError
from fastadapt.nets import build_network
from fastadapt.options import option
from fastadapt.tasks.episodes import TaskBatch

InnerOptimizer = Literal["sgd", "adam"]
INNER_OPTIMIZERS: tuple[str, ...] = ("sgd", "adam")
AdamState = Literal["fresh", "carried"]
ADAM_STATES: tuple[str, ...] = ("fresh", "carried")


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


def _buffer_name(moment: str, parameter: str) -> str:
    return f"{moment}_{parameter_key(parameter)}"


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
        adam_state: AdamState = "fresh",
        strategy: Strategy = "loop",
        fast_layers: bool = True,
        gradient_check: bool = True,
        workers: int | None = None,
    ) -> None:
        super().__init__()
        if inner_optimizer not in INNER_OPTIMIZERS:
            raise ValueError(f"unknown inner optimizer {inner_optimizer!r}; choose one of {INNER_OPTIMIZERS}")
        if adam_state not in ADAM_STATES:
            raise ValueError(f"unknown Adam state {adam_state!r}; choose one of {ADAM_STATES}")
        if adam_state == "carried" and inner_optimizer != "adam":
            raise ValueError("a carried Adam state needs the Adam inner optimiser (inner_optimizer='adam')")
        # torch's layers with an exact, faster equivalent run as fastadapt's (fastadapt.engine.fastlayers), as in MAML.
        if strategy == "fold":
            raise ConfigError(
                "--strategy fold runs MAML's inner loops (MAML, Meta-SGD); Reptile takes loop, vmap or auto."
            )
        model = with_fast_layers(model) if fast_layers else model
        self.model = model
        self.inner_lr = inner_lr
        self.inner_steps = inner_steps
        self.inner_optimizer = inner_optimizer
        self.inner_batch_size = inner_batch_size
        self.eval_inner_steps = inner_steps if eval_inner_steps is None else eval_inner_steps
        self.eval_inner_batch_size = inner_batch_size if eval_inner_batch_size is None else eval_inner_batch_size
        self.adam_betas = tuple(adam_betas)
        self.adam_eps = adam_eps
        self.adam_state = adam_state
        # Loop or vmap over tasks (fastadapt.engine), on ``workers`` cores (None: measured by auto, as MAML's); no
        # layout or folding.
        self.execution = Execution(
            strategy=strategy, workers=workers, channels_last=False, gradient_check=gradient_check
        )
        self.execution.check()
        if adam_state == "carried":
            # Buffers, so checkpoints keep them and data-parallel training averages them across processes.
            self.adam_moments = nn.Module()
            for name, p in model.named_parameters():
                for moment in ("m", "v"):
                    self.adam_moments.register_buffer(_buffer_name(moment, name), torch.zeros_like(p.detach()))
            self.adam_moments.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def carried_moments(self) -> tuple[dict[str, Params] | None, int]:
        """The Adam state a task starts from and its step count: None (fresh) at 0, or the carried ones."""
        if self.adam_state == "fresh":
            return None, 0
        theta = parameters_of(self.model)
        buffers = dict(self.adam_moments.named_buffers())
        state = {moment: {k: buffers[_buffer_name(moment, k)] for k in theta} for moment in ("m", "v")}
        return state, int(self.adam_moments.steps)

    @torch.no_grad()
    def _carry(self, final_state: dict[str, Params], steps: int) -> None:
        buffers = dict(self.adam_moments.named_buffers())
        for moment, tensors in final_state.items():
            for k, per_task in tensors.items():
                buffers[_buffer_name(moment, k)].copy_(per_task.mean(dim=0))
        self.adam_moments.steps += steps

    def fine_tune(
        self,
        theta: Mapping[str, Tensor],
        support_x: Tensor,
        support_y: Tensor,
        indices: Tensor,
        vectorised: bool,
        state: dict[str, Params] | None = None,
        first_step: int = 0,
    ) -> tuple[Params, dict[str, Params]]:
        """phi_i = U^k(theta): one step of the inner optimiser per row of ``indices`` (steps, batch), each
        on that mini-batch of the support set, from Adam's ``state`` after ``first_step`` steps (None: fresh).
        Returns phi and Adam's final state. Not differentiable with respect to theta."""
        params = {k: v.detach() for k, v in theta.items()}
        if state is None:
            state = {moment: {k: torch.zeros_like(v) for k, v in params.items()} for moment in ("m", "v")}
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
                    params, state = adam_step(
                        params, grads, state, first_step + step, self.inner_lr, self.adam_betas, self.adam_eps
                    )
        detached = {moment: {k: v.detach() for k, v in tensors.items()} for moment, tensors in state.items()}
        return {k: v.detach() for k, v in params.items()}, detached

    def _fine_tuned(
        self, batch: TaskBatch, steps: int, batch_size: int | None
    ) -> tuple[Params, Tensor, dict[str, Params]]:
        """phi_i for every task, its query predictions and Adam's final state (each stacked along a
        leading task dimension)."""
        theta = parameters_of(self.model)
        start, first_step = self.carried_moments()
        indices = minibatch_indices(batch.num_tasks, batch.support_x.shape[1], batch_size, steps)
        indices = indices.to(batch.support_x.device)
        per_task = (batch.support_x, batch.support_y, batch.query_x, indices)
        workers = min(task_workers(self.execution), batch.num_tasks)
        if workers > 1:
            # Tasks side by side on the cores (fastadapt.engine.taskpool), each worker on its own replica: a task's
            # phi does not depend on the worker that ran it, and every task's mini-batches were drawn above. The loop
            # hands out single tasks (worker w takes tasks w, w + workers, ...), vmap one share per worker.
            share = 1 if self.strategy != "vmap" else -(-batch.num_tasks // workers)
            parts = [tuple(t[i : i + share] for t in per_task) for i in range(0, batch.num_tasks, share)]
            run = lambda replica, part: replica._tasks_fine_tuned(theta, part, start, first_step)
            *outputs, predictions = (torch.cat(column) for column in zip(*map_parts(self, parts, run, workers)))
        else:
            *outputs, predictions = self._tasks_fine_tuned(theta, per_task, start, first_step)
        n = len(theta)
        phis, m, v = (dict(zip(theta.keys(), outputs[i * n : (i + 1) * n])) for i in range(3))
        return phis, predictions, {"m": m, "v": v}

    def _tasks_fine_tuned(
        self, theta: Params, per_task: tuple[Tensor, ...], start: dict[str, Params] | None, first_step: int
    ) -> tuple[Tensor, ...]:
        """For the tasks of ``per_task`` (support x, support y, query x, mini-batch indices), stacked along a task
        dimension: each parameter's phi_i, Adam's final moments m and v, then the query predictions."""

        def one_task(support_x, support_y, query_x, task_indices, vectorised):
            phi, state = self.fine_tune(theta, support_x, support_y, task_indices, vectorised, start, first_step)
            with torch.no_grad():
                predictions = call(self.model, phi, query_x)
            return (*phi.values(), *state["m"].values(), *state["v"].values(), predictions)

        return map_tasks(one_task, per_task, self.strategy)

    def most_workers(self) -> int:
        """One worker per CPU thread; one on a GPU, and for a network with dropout or running batch-norm statistics,
        whose draws or buffer updates would follow thread timing (fastadapt.engine.execution.most_workers)."""
        if timing_dependent_modules(self.model):
            return 1
        return available_workers(next(self.parameters()).device)

    def meta_loss(self, batch: TaskBatch) -> MetaOutput:
        """Surrogate loss whose gradient is theta - mean_i phi_i (see the module docstring)."""
        phis, predictions, final_state = self._fine_tuned(batch, self.inner_steps, self.inner_batch_size)
        if self.adam_state == "carried":
            self._carry(final_state, self.inner_steps)
        theta = parameters_of(self.model)
        loss = sum(0.5 * (theta[k] - phis[k].mean(dim=0)).square().sum() for k in theta)
        return MetaOutput(loss, predictions)

    def predict(self, batch: TaskBatch, steps: int | None = None) -> Tensor:
        steps = self.eval_inner_steps if steps is None else steps
        _, predictions, _ = self._fine_tuned(batch, steps, self.eval_inner_batch_size)
        return predictions

    def gradient_probe(self) -> Reptile:
        """The gradient guard's float64 copy, with plain SGD as its inner optimiser (and so no carried state). The guard
        compares how a strategy computes each task's gradients; Adam would divide them by their own running size, and a
        weight whose gradient is zero in exact arithmetic (a convolution's bias before batch norm) would move by its
        rounding noise over ``adam_eps``: 4e-5 apart (relative) between loop and vmap, both right. SGD's step is linear
        in the gradient; Adam's arithmetic on it is element-wise, which vmap runs as the loop does."""
        probe = super().gradient_probe()
        probe.inner_optimizer, probe.adam_state = "sgd", "fresh"
        return probe

    def extra_repr(self) -> str:
        return (
            f"inner_optimizer={self.inner_optimizer!r}, inner_lr={self.inner_lr}, inner_steps={self.inner_steps}, "
            f"inner_batch_size={self.inner_batch_size}, eval_inner_steps={self.eval_inner_steps}, "
            f"eval_inner_batch_size={self.eval_inner_batch_size}, adam_state={self.adam_state!r}, "
            f"strategy={self.strategy!r}"
        )


@dataclass
class ReptileOptions(StrategyOptions):
    inner_lr: float = option(1e-3, "the inner optimiser's learning rate")
    inner_steps: int = option(5, "inner optimiser steps per task in meta-training")
    eval_inner_steps: int | None = option(None, "inner steps at test time (default: as in meta-training)")
    inner_optimizer: str = option("sgd", "the inner optimiser", choices=INNER_OPTIMIZERS)
    inner_adam_state: str = option(
        "fresh", "with Adam: fresh moments per task, or carried across tasks as the authors' code", choices=ADAM_STATES
    )
    inner_batch_size: int | None = option(None, "support mini-batch per inner step (default: the whole support set)")
    eval_inner_batch_size: int | None = option(None, "support mini-batch per test-time step (default: as in training)")

    def settle(self, given: set[str]) -> None:
        """A preset's carried Adam state falls back to fresh where the inner optimiser given is SGD."""
        if self.inner_optimizer != "adam" and "inner_adam_state" not in given:
            self.inner_adam_state = "fresh"

    def validate(self) -> None:
        if self.strategy == "fold":
            raise ConfigError(
                "--strategy fold runs MAML's inner loops (MAML, Meta-SGD); Reptile takes loop, vmap or auto."
            )
        if self.inner_steps < 0:
            raise ConfigError(f"--inner-steps must be >= 0 (got {self.inner_steps}).")
        if self.inner_adam_state == "carried" and self.inner_optimizer != "adam":
            raise ConfigError("--inner-adam-state carried needs --inner-optimizer adam (SGD has no state to carry).")
        for name in ("inner_batch_size", "eval_inner_batch_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(self, name)}).")


def build(config: Any) -> Reptile:
    check_per_way_head(config.algorithm, config.ways, config.train_ways)
    outputs = 1 if config.regression else config.ways
    return Reptile(
        build_network(config.network, config.channels, config.image_size, outputs, norm="episode"),
        inner_lr=config.inner_lr,
        inner_steps=config.inner_steps,
        inner_optimizer=config.inner_optimizer,
        inner_batch_size=config.inner_batch_size,
        eval_inner_steps=config.eval_inner_steps,
        eval_inner_batch_size=config.eval_inner_batch_size,
        adam_state=config.inner_adam_state,
        strategy=config.strategy,
        gradient_check=config.gradient_check,
    )


# fmt: off
PRESETS: dict[str, dict[str, Any]] = {
    # Reptile (Nichol et al. 2018, Table 3 and the authors' 5-way 1-shot Omniglot command): Adam inner loop (lr 1e-3,
    # beta1 0, its moments carried from task to task as in the authors' code), 5 steps on mini-batches of 10 of 10
    # training shots per class; 5 tasks per outer step; outer SGD with epsilon 1 decayed linearly to 0 over 100k
    # steps; at test 50 steps on mini-batches of 5 of the support set.
    "omniglot": dict(network="conv4-stride", query=1, eval_query=15, meta_batch_size=5, inner_optimizer="adam",
                     inner_adam_state="carried", inner_lr=1e-3, inner_steps=5, inner_batch_size=10,
                     eval_inner_steps=50, eval_inner_batch_size=5, train_shots=10, outer_optimizer="sgd", lr=1.0,
                     lr_schedule="linear", steps=100000, val_every=2000, val_episodes=300),
    # Reptile's sine demo: SGD 0.02 on 50 points in batches of 10 (5 steps), one task per outer step, epsilon 0.1
    # decayed linearly, 30k steps; at test 32 full-batch steps on the support set.
    "sinusoid": dict(network="mlp", shots=10, train_shots=50, query=10, eval_query=100, meta_batch_size=1,
                     inner_optimizer="sgd", inner_lr=0.02, inner_steps=5, inner_batch_size=10, eval_inner_steps=32,
                     outer_optimizer="sgd", lr=0.1, lr_schedule="linear", steps=30000, val_every=5000,
                     val_episodes=300),
    # Nichol et al. 2018, the authors' README command "1-shot 5-way Mini-ImageNet" (non-transductive;
    # github.com/openai/supervised-reptile): --shots 1 --inner-batch 3 --inner-iters 19 --meta-step 0.235
    # --meta-batch 2 --eval-batch 3 --eval-iters 55 --learning-rate 0.0012 --train-shots 12. Conv-4 with 32 filters
    # and max-pooling (supervised_reptile/models.py); Adam inner loop with beta1 0 whose moments carry from task to
    # task (the authors' code); outer SGD step decayed linearly to 0 (--meta-step-final 0) over 200000 iterations.
    "mini-imagenet": dict(network="conv4-32", query=1, train_shots=12, meta_batch_size=2, inner_optimizer="adam",
                          inner_adam_state="carried", inner_lr=0.0012, inner_steps=19, inner_batch_size=3,
                          eval_inner_steps=55, eval_inner_batch_size=3, outer_optimizer="sgd", lr=0.235,
                          lr_schedule="linear", steps=200000, val_every=5000),
    # Lines: the sine demo's setting above over 5000 steps, as MAML's linear preset (fastadapt's choice).
    "linear": dict(network="mlp", shots=10, train_shots=50, query=10, eval_query=100, meta_batch_size=1,
                   inner_optimizer="sgd", inner_lr=0.02, inner_steps=5, inner_batch_size=10, eval_inner_steps=32,
                   outer_optimizer="sgd", lr=0.1, lr_schedule="linear", steps=5000, val_every=500, val_episodes=300),
}
# fmt: on
register(
    Algorithm(
        name="reptile",
        listing=4,
        family="optimization",
        summary="Reptile (Nichol et al. 2018): move towards each task's fine-tuned weights",
        options=ReptileOptions,
        build=build,
        presets=PRESETS,
    )
)
