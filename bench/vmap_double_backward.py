"""Minimal reproduction: torch.func.vmap differentiates some normalisation layers' affine weights wrongly twice.

Second-order MAML, one inner SGD step per task, written twice with plain torch: a per-task loop of
``torch.autograd.grad(create_graph=True)``, and ``vmap`` over tasks of ``torch.func.grad``. Both compute the same
meta-gradient in exact arithmetic; in float64 they should agree to ~1e-15. No fastadapt code is involved.

    python bench/vmap_double_backward.py

prints, for each layer, the relative difference ||g_vmap - g_loop|| / ||g_loop|| (second and first order) and
whether that is rounding. Results are in docs/performance.md ("The gradient guard").
"""

from __future__ import annotations

import platform

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

TASKS, WAYS, SHOTS, INNER_LR = 4, 3, 2, 0.1


def meta_gradient(model: nn.Module, support_x, support_y, query_x, query_y, vectorised: bool, second_order: bool):
    params = dict(model.named_parameters())

    def support_loss(p, x, y):
        return F.cross_entropy(functional_call(model, p, (x,)), y)

    def query_loss(sx, sy, qx, qy, inner_grad):
        g = inner_grad(sx, sy)
        if not second_order:
            g = {k: v.detach() for k, v in g.items()}
        fast = {k: p - INNER_LR * g[k] for k, p in params.items()}
        return F.cross_entropy(functional_call(model, fast, (qx,)), qy)

    if vectorised:
        losses = vmap(lambda *task: query_loss(*task, lambda x, y: grad(support_loss)(params, x, y)))(
            support_x, support_y, query_x, query_y
        )
    else:

        def autograd_grad(x, y):
            values = torch.autograd.grad(support_loss(params, x, y), list(params.values()), create_graph=True)
            return dict(zip(params, values))

        losses = torch.stack([query_loss(*task, autograd_grad) for task in zip(support_x, support_y, query_x, query_y)])
    return torch.autograd.grad(losses.mean(), list(params.values()))


def relative_difference(a, b) -> float:
    difference = torch.sqrt(sum((x - y).square().sum() for x, y in zip(a, b)))
    return (difference / torch.sqrt(sum(y.square().sum() for y in b))).item()


def networks() -> dict[str, tuple[nn.Module, tuple[int, ...]]]:
    def mlp(norm):
        return nn.Sequential(nn.Linear(20, 16), norm, nn.ReLU(), nn.Linear(16, WAYS)), (20,)

    def conv2d(norm):
        network = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), norm, nn.ReLU(), nn.Flatten(), nn.Linear(100, WAYS))
        return network, (2, 5, 5)

    def conv1d(norm):
        return nn.Sequential(nn.Conv1d(2, 4, 3, padding=1), norm, nn.ReLU(), nn.Flatten(), nn.Linear(28, WAYS)), (2, 7)

    return {
        "LayerNorm(16)": mlp(nn.LayerNorm(16)),
        "LayerNorm(16, elementwise_affine=False)": mlp(nn.LayerNorm(16, elementwise_affine=False)),
        "BatchNorm1d(16, track_running_stats=False)": mlp(nn.BatchNorm1d(16, track_running_stats=False)),
        "BatchNorm2d(4, track_running_stats=False)": conv2d(nn.BatchNorm2d(4, track_running_stats=False)),
        "BatchNorm2d(4, affine=False, track_running_stats=False)": conv2d(
            nn.BatchNorm2d(4, affine=False, track_running_stats=False)
        ),
        "InstanceNorm1d(4, affine=True)": conv1d(nn.InstanceNorm1d(4, affine=True)),
        "InstanceNorm2d(4, affine=True)": conv2d(nn.InstanceNorm2d(4, affine=True)),
        "InstanceNorm2d(4)": conv2d(nn.InstanceNorm2d(4)),
        "LayerNorm([4, 5, 5])": conv2d(nn.LayerNorm([4, 5, 5])),
        "GroupNorm(2, 4)": conv2d(nn.GroupNorm(2, 4)),
        "RMSNorm(16)": mlp(nn.RMSNorm(16)),
        "Identity()": mlp(nn.Identity()),
    }


def main() -> None:
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {platform.machine()}, float64, {TASKS} tasks, {WAYS}-way {SHOTS}-shot")
    print(f"{'layer':<56} {'second order':>13} {'first order':>12}")
    for name, (model, shape) in networks().items():
        model = model.double()
        labels = torch.arange(WAYS).repeat(SHOTS).expand(TASKS, -1)
        support_x = torch.randn(TASKS, WAYS * SHOTS, *shape, dtype=torch.float64)
        query_x = torch.randn(TASKS, WAYS * SHOTS, *shape, dtype=torch.float64)
        row = []
        for second_order in (True, False):
            loop = meta_gradient(model, support_x, labels, query_x, labels, False, second_order)
            batched = meta_gradient(model, support_x, labels, query_x, labels, True, second_order)
            row.append(relative_difference(batched, loop))
        verdict = "WRONG" if max(row) > 1e-10 else "ok"
        print(f"{name:<56} {row[0]:>13.1e} {row[1]:>12.1e}  {verdict}")


if __name__ == "__main__":
    main()
