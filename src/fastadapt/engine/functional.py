"""The small functional core every optimisation-based meta-learner composes.

Parameters travel as a dict ``name -> tensor`` and a network is run with
``torch.func.functional_call``, so an inner loop produces new tensors that stay differentiable with
respect to the meta-parameters (the MAML meta-gradient) without touching the module itself.

Inner loops of a meta-batch run either as a per-task Python loop or vectorised across tasks with
``torch.func.vmap``; both give the same meta-gradient (tested), and which is faster depends on the
workload, so the strategy is an argument.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

Params = dict[str, Tensor]
Strategy = Literal["loop", "vmap", "fold", "auto"]
#: "auto" runs as "loop" until :func:`fastadapt.engine.strategy.choose_strategy` has measured the others. "fold" (the
#: MAML family: tasks folded into the channels of one network pass) is fastadapt.engine.folding's.
STRATEGIES: tuple[str, ...] = ("auto", "loop", "vmap", "fold")


def parameters_of(module: nn.Module) -> Params:
    """The module's trainable parameters as a name -> tensor dict (the tensors themselves, not copies)."""
    return {name: p for name, p in module.named_parameters() if p.requires_grad}


def parameter_key(name: str) -> str:
    """A parameter name usable as a module attribute or ``ParameterDict`` key (which may not contain dots)."""
    return name.replace(".", "-")


def call(module: nn.Module, params: Mapping[str, Tensor], *inputs: Tensor) -> Tensor:
    """Run ``module`` with ``params`` in place of its own parameters (buffers stay the module's)."""
    return functional_call(module, dict(params), inputs)


def sgd_step(params: Params, grads: Params, lr: float | Mapping[str, Tensor]) -> Params:
    """theta' = theta - alpha * grad; ``lr`` is a scalar or a per-parameter tensor (Meta-SGD)."""
    if isinstance(lr, Mapping):
        return {k: p - lr[k] * grads[k] for k, p in params.items()}
    return {k: p - lr * grads[k] for k, p in params.items()}


def gradients(loss_fn: Callable[[Params], Tensor], params: Params, *, create_graph: bool, vectorised: bool) -> Params:
    """d loss / d params. Under ``vmap`` this must be ``torch.func.grad``; in a plain loop
    ``torch.autograd.grad`` is cheaper. ``create_graph=False`` cuts the gradient out of the graph
    (first-order approximation)."""
    if vectorised:
        if create_graph:
            return torch.func.grad(loss_fn)(params)
        # From detached weights: otherwise autograd outside the transform also records this inner pass, which the
        # meta-gradient never flows through (its graph held memory growing with vmap's chunk of tasks). The result
        # is detached too: loss_fn may close over tensors that carry a graph (ANIL's features).
        grads = torch.func.grad(loss_fn)({k: p.detach() for k, p in params.items()})
        return {k: g.detach() for k, g in grads.items()}
    values = torch.autograd.grad(loss_fn(params), list(params.values()), create_graph=create_graph)
    return dict(zip(params.keys(), values))


def inner_sgd(
    loss_fn: Callable[[Params], Tensor],
    params: Params,
    steps: int,
    lr: float | Mapping[str, Tensor],
    *,
    first_order: bool = False,
    vectorised: bool = False,
) -> Params:
    """``steps`` differentiable gradient-descent steps on ``loss_fn`` starting from ``params``.

    Gradients are enabled even under an outer ``torch.no_grad()`` (evaluation still adapts)."""
    with torch.enable_grad():
        for _ in range(steps):
            grads = gradients(loss_fn, params, create_graph=not first_order, vectorised=vectorised)
            params = sgd_step(params, grads, lr)
    return params


def inner_sgd_trajectory(
    loss_at_step: Callable[[Params, int], Tensor],
    params: Params,
    steps: int,
    lr_at_step: Callable[[int], float | Mapping[str, Tensor]],
    *,
    first_order: bool = False,
    vectorised: bool = False,
) -> list[Params]:
    """:func:`inner_sgd` where the loss and the step size may depend on the step index (MAML++'s per-step
    batch-norm weights and learning rates). Returns every iterate, ``[params, theta_1, ..., theta_steps]``,
    for losses on the intermediate weights (MAML++'s multi-step loss)."""
    trajectory = [params]
    with torch.enable_grad():
        for step in range(steps):
            step_loss = lambda p, step=step: loss_at_step(p, step)
            grads = gradients(step_loss, params, create_graph=not first_order, vectorised=vectorised)
            params = sgd_step(params, grads, lr_at_step(step))
            trajectory.append(params)
    return trajectory


def map_tasks(
    fn: Callable[..., tuple[Tensor, ...]], per_task: Sequence[Tensor], strategy: Strategy = "loop"
) -> tuple[Tensor, ...]:
    """Apply ``fn(*task_tensors, vectorised=...)`` to every task (leading dimension of each tensor in
    ``per_task``) and stack its tuple of outputs along a new task dimension."""
    if strategy == "vmap":
        if per_task[0].shape[0] == 1:  # one task needs no batching, only torch.func's gradients
            return tuple(out.unsqueeze(0) for out in fn(*(t[0] for t in per_task), vectorised=True))
        return vmap(lambda *args: fn(*args, vectorised=True), randomness="different")(*per_task)
    if strategy not in ("loop", "auto"):
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")
    outputs = [fn(*(t[i] for t in per_task), vectorised=False) for i in range(per_task[0].shape[0])]
    return tuple(torch.stack(column) for column in zip(*outputs))
