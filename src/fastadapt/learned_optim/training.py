"""Meta-training a learned optimiser, and running it or a hand-designed one on a batch of problems.

Meta-training (section 2 of Andrychowicz et al.): the loss of the optimiser is the summed optimizee loss
along its trajectory, L(phi) = E_f [ sum_t f(theta_t) ], minimised with Adam by back-propagating through the
unrolled optimisation. As in the paper:

- truncated BPTT: a horizon of T steps is cut into segments of ``unroll`` steps (100 and 20 in the paper);
  each segment is one Adam step on phi, then theta and the LSTM state are carried on, detached;
- the optimizee's gradient is an input, not a function of phi (grad_t is detached: no second derivatives,
  the paper's assumption of section 2), while f(theta_t) stays differentiable through theta_t.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Protocol

import torch
from torch import Tensor

from fastadapt.learned_optim.net import LSTMOptimizerNet
from fastadapt.learned_optim.problems import ProblemBatch


class ProblemFamily(Protocol):
    def sample(self, batch: int, generator: torch.Generator) -> ProblemBatch: ...


def _loss_and_gradient(problem: ProblemBatch, params: Tensor) -> tuple[Tensor, Tensor]:
    """The B losses at ``params`` (differentiable when ``params`` is) and their gradient, detached."""
    with torch.enable_grad():
        if not params.requires_grad:
            params = params.detach().requires_grad_(True)
        losses = problem.loss(params)
        (grad,) = torch.autograd.grad(losses.sum(), params, retain_graph=torch.is_grad_enabled())
    return losses, grad.detach()


def meta_train(
    net: LSTMOptimizerNet,
    family: ProblemFamily,
    iterations: int,
    horizon: int = 100,
    unroll: int = 20,
    batch: int = 1,
    lr: float = 1e-3,
    seed: int = 0,
    log: Callable[[int, float], None] | None = None,
    lr_schedule: str = "constant",
) -> list[float]:
    """Train ``net`` on ``iterations`` batches of ``batch`` problems; returns each iteration's meta-loss
    (mean optimizee loss over the horizon). ``lr_schedule="cosine"`` anneals Adam's rate to 0 over the run."""
    if lr_schedule not in ("constant", "cosine"):
        raise ValueError(f"lr_schedule must be 'constant' or 'cosine', not {lr_schedule!r}")
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    segments = iterations * math.ceil(horizon / unroll)  # one Adam step per truncated segment
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, segments) if lr_schedule == "cosine" else None
    history = []
    for iteration in range(iterations):
        problem = family.sample(batch, generator)
        params = problem.initial.clone()
        state = net.initial_state(params.numel(), params)
        total = 0.0
        for _ in range(0, horizon, unroll):
            params = params.detach().requires_grad_(True)  # the truncation: no gradient to earlier segments
            state = [(h.detach(), c.detach()) for h, c in state]
            segment = params.new_zeros(())
            for _ in range(unroll):
                losses, grad = _loss_and_gradient(problem, params)
                segment = segment + losses.mean()
                update, state = net(grad.reshape(-1), state)
                params = params + update.view_as(params)
            optimizer.zero_grad()
            (segment / unroll).backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            total += segment.item()
        history.append(total / horizon)
        if log is not None:
            log(iteration, history[-1])
    return history


def run_learned(net: LSTMOptimizerNet, problem: ProblemBatch, steps: int) -> Tensor:
    """Losses (steps + 1, B) of the learned optimiser from ``problem.initial``, no meta-gradient."""
    params = problem.initial.clone()
    state = net.initial_state(params.numel(), params)
    trace = []
    with torch.no_grad():
        for _ in range(steps):
            losses, grad = _loss_and_gradient(problem, params)
            trace.append(losses)
            update, state = net(grad.reshape(-1), state)
            params = params + update.view_as(params)
        trace.append(problem.loss(params))
    return torch.stack(trace)


#: Hand-designed baselines, each a function of the learning rate (momentum 0.9 for Nesterov).
BASELINES: dict[str, Callable[[Sequence[Tensor], float], torch.optim.Optimizer]] = {
    "SGD": lambda params, lr: torch.optim.SGD(params, lr=lr),
    "Nesterov": lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True),
    "Adam": lambda params, lr: torch.optim.Adam(params, lr=lr),
    "RMSprop": lambda params, lr: torch.optim.RMSprop(params, lr=lr),
}


def run_baseline(name: str, lr: float, problem: ProblemBatch, steps: int) -> Tensor:
    """Losses (steps + 1, B) of a torch optimiser from ``problem.initial`` (one coordinate-wise optimiser
    over the (B, P) tensor: the same as B separate runs)."""
    params = problem.initial.clone().requires_grad_(True)
    optimizer = BASELINES[name]([params], lr)
    trace = []
    for _ in range(steps):
        losses = problem.loss(params)
        trace.append(losses.detach())
        optimizer.zero_grad()
        losses.sum().backward()
        optimizer.step()
    with torch.no_grad():
        trace.append(problem.loss(params))
    return torch.stack(trace)


def tune_learning_rate(name: str, grid: Sequence[float], problem: ProblemBatch, steps: int) -> tuple[float, dict]:
    """The learning rate of ``grid`` with the lowest mean final loss on ``problem`` (diverged runs lose)."""
    scores = {}
    for lr in grid:
        final = run_baseline(name, lr, problem, steps)[-1].mean().item()
        scores[lr] = final if math.isfinite(final) else math.inf
    return min(scores, key=scores.get), scores
