"""Trust region policy optimisation's step (Schulman et al., ICML 2015, section 6 and appendix C).

Maximise the surrogate L(theta) subject to the mean KL divergence KL(pi_old || pi_theta) <= delta:

1. g = grad L, the gradient of the surrogate at theta_old;
2. s ~= F^{-1} g by conjugate gradient, where F is the Hessian of the mean KL at theta_old (the Fisher
   matrix), used only through Hessian-vector products F v (plus ``damping * v``): either grad (grad KL . v)
   (:func:`hessian_vector_product`) or, equal at theta_old and cheaper, J^T M J v (:func:`gauss_newton_product`);
3. the largest step along s that keeps the quadratic model of the KL at delta: beta = sqrt(2 delta / s^T F s);
4. a backtracking line search, theta = theta_old + backtrack^k beta s for k = 0, 1, ..., accepting the first
   step that improves the surrogate and keeps the exact KL within delta (otherwise theta stays theta_old).

For MAML-RL the surrogate and the KL are functions of theta *through the inner adaptation step*, so F v is a
Hessian-vector product through the inner step; the caller builds that graph.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn.utils import parameters_to_vector, vector_to_parameters


def conjugate_gradient(
    matvec: Callable[[Tensor], Tensor], b: Tensor, iterations: int = 10, tol: float = 1e-10
) -> Tensor:
    """Approximately solve ``A x = b`` for symmetric positive definite ``A`` given only ``A v``."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rr = r.dot(r)
    for _ in range(iterations):
        if rr < tol:
            break
        Ap = matvec(p)
        alpha = rr / p.dot(Ap)
        x += alpha * p
        r -= alpha * Ap
        rr_new = r.dot(r)
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


def hessian_vector_product(
    scalar: Tensor, params: Sequence[Tensor], damping: float = 0.0
) -> Callable[[Tensor], Tensor]:
    """v -> (d^2 scalar / d params^2) v + damping * v, reusing one differentiable gradient of ``scalar``."""
    grads = torch.autograd.grad(scalar, params, create_graph=True)
    flat = torch.cat([g.reshape(-1) for g in grads])

    def product(vector: Tensor) -> Tensor:
        hv = torch.autograd.grad(flat.dot(vector), params, retain_graph=True)
        return torch.cat([h.reshape(-1) for h in hv]) + damping * vector

    return product


def gauss_newton_product(
    outputs: Sequence[Tensor], metrics: Sequence[Tensor], params: Sequence[Tensor], damping: float = 0.0
) -> Callable[[Tensor], Tensor]:
    """v -> J^T diag(metrics) J v + damping * v, J the Jacobian of ``outputs`` with respect to ``params``.

    At theta = theta_old this is exactly the Hessian of the mean KL (the KL's gradient with respect to the
    distribution's parameters vanishes there, leaving only J^T (d^2 KL / d dist^2) J), and cheaper than
    :func:`hessian_vector_product` because it never differentiates the inner step's gradient a third time. J v comes
    from the double-vjp trick: J^T u is built once, with a placeholder u, and differentiated with respect to u."""
    outputs, params = list(outputs), list(params)
    placeholders = [torch.zeros_like(o, requires_grad=True) for o in outputs]
    transposed = torch.autograd.grad(outputs, params, grad_outputs=placeholders, create_graph=True)
    flat = torch.cat([t.reshape(-1) for t in transposed])

    def product(vector: Tensor) -> Tensor:
        jv = torch.autograd.grad(flat, placeholders, grad_outputs=vector, retain_graph=True)
        weighted = [m * j for m, j in zip(metrics, jv)]
        back = torch.autograd.grad(outputs, params, grad_outputs=weighted, retain_graph=True)
        return torch.cat([b.reshape(-1) for b in back]) + damping * vector

    return product


@dataclass
class TRPOStats:
    surrogate_before: float
    surrogate_after: float
    kl: float
    accepted: bool
    backtracks: int


def trpo_step(
    params: Sequence[Tensor],
    surrogate: Tensor,
    fisher_product: Callable[[Tensor], Tensor],
    evaluate: Callable[[], tuple[Tensor, Tensor]],
    max_kl: float = 0.01,
    cg_iterations: int = 10,
    line_search_steps: int = 15,
    backtrack: float = 0.8,
) -> TRPOStats:
    """One TRPO update of ``params`` in place. ``surrogate``: the objective to maximise at the current ``params``
    (with its graph); ``fisher_product``: v -> F v, the KL's Hessian (damped) at the current ``params``;
    ``evaluate()``: the surrogate and the mean KL(pi_old || pi_params) at the values ``params`` then hold (the line
    search's check, run without gradients)."""
    params = list(params)
    grads = torch.autograd.grad(surrogate, params, retain_graph=True)
    g = torch.cat([grad.reshape(-1) for grad in grads])
    direction = conjugate_gradient(fisher_product, g, cg_iterations)
    quadratic = direction.dot(fisher_product(direction))
    old = parameters_to_vector(params).detach().clone()
    before = float(surrogate.detach())
    if not torch.isfinite(quadratic) or quadratic <= 0:
        return TRPOStats(before, before, 0.0, False, 0)
    full_step = torch.sqrt(2 * max_kl / quadratic) * direction
    del grads
    with torch.no_grad():
        for k in range(line_search_steps):
            vector_to_parameters(old + backtrack**k * full_step, params)
            new_surrogate, new_kl = evaluate()
            if new_surrogate > before and new_kl <= max_kl and torch.isfinite(new_surrogate):
                return TRPOStats(before, float(new_surrogate), float(new_kl), True, k)
        vector_to_parameters(old, params)
    return TRPOStats(before, before, 0.0, False, line_search_steps)
