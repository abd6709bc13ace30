"""The learned optimiser m of "Learning to learn by gradient descent by gradient descent"
(Andrychowicz et al., NeurIPS 2016), and its use as a ``torch.optim.Optimizer``.

Update rule (eq. 1 of the paper), with m an LSTM of parameters phi and hidden state h::

    theta_{t+1} = theta_t + g_t,     [g_t, h_{t+1}] = m(grad_t, h_t; phi)

Coordinate-wise (section 2.1): one small two-layer LSTM (20 hidden units) is shared by every coordinate
of theta, each with its own hidden state, so m works for any number of parameters. Its input is the
gradient preprocessed as in appendix A (p = 10), and its output is multiplied by 0.1 (section 3).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fastadapt.errors import DataError

LSTMState = list[tuple[Tensor, Tensor]]


def preprocess(x: Tensor, p: float = 10.0) -> Tensor:
    """Appendix A's log/sign preprocessing, (...) -> (..., 2): (log|x| / p, sign x) if |x| >= e^-p, else
    (-1, e^p x). Gradients of very different magnitudes then reach the LSTM on the same scale."""
    big = x.abs() >= math.exp(-p)
    log_part = torch.where(big, x.abs().clamp_min(math.exp(-p)).log() / p, torch.full_like(x, -1.0))
    sign_part = torch.where(big, torch.sign(x), x * math.exp(p))
    return torch.stack([log_part, sign_part], dim=-1)


class LSTMOptimizerNet(nn.Module):
    """m(grad, h; phi): gradients of n coordinates, shape (n,), to updates g of shape (n,)."""

    def __init__(
        self, hidden: int = 20, layers: int = 2, preprocess_p: float = 10.0, output_scale: float = 0.1
    ) -> None:
        super().__init__()
        self.hidden, self.layers = hidden, layers
        self.preprocess_p, self.output_scale = preprocess_p, output_scale
        self.cells = nn.ModuleList(nn.LSTMCell(2 if i == 0 else hidden, hidden) for i in range(layers))
        self.out = nn.Linear(hidden, 1)

    def settings(self) -> dict[str, Any]:
        return {
            "hidden": self.hidden,
            "layers": self.layers,
            "preprocess_p": self.preprocess_p,
            "output_scale": self.output_scale,
        }

    def initial_state(self, n: int, like: Tensor) -> LSTMState:
        """Zero (h, c) per layer for ``n`` coordinates, on ``like``'s device and dtype."""
        return [(like.new_zeros(n, self.hidden), like.new_zeros(n, self.hidden)) for _ in range(self.layers)]

    def forward(self, grad: Tensor, state: LSTMState) -> tuple[Tensor, LSTMState]:
        x = preprocess(grad, self.preprocess_p)
        new_state = []
        for cell, (h, c) in zip(self.cells, state):
            h, c = cell(x, (h, c))
            new_state.append((h, c))
            x = h
        return self.output_scale * self.out(x).squeeze(-1), new_state


def save_net(net: LSTMOptimizerNet, path: str | Path) -> None:
    """Write a trained optimiser atomically (temporary file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save({"kind": "lstm-optimizer", "settings": net.settings(), "state_dict": net.state_dict()}, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_net(path: str | Path) -> LSTMOptimizerNet:
    """A trained optimiser written by :func:`save_net`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"learned optimiser not found: {path}; train one first (bench/learned_optimizer.py).")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("kind") != "lstm-optimizer":
        raise DataError(f"{path} is not a learned optimiser saved by fastadapt.learned_optim.save_net.")
    net = LSTMOptimizerNet(**state["settings"])
    net.load_state_dict(state["state_dict"])
    return net


class LSTMOptimizer(torch.optim.Optimizer):
    """A trained :class:`LSTMOptimizerNet` as a drop-in optimiser: ``LSTMOptimizer(model.parameters(), net)``,
    then ``loss.backward(); opt.step(); opt.zero_grad()`` as usual. Each parameter keeps its own LSTM state
    (in ``opt.state``, so ``state_dict()``/``load_state_dict()`` carry it); ``net`` is not trained here."""

    def __init__(self, params, net: LSTMOptimizerNet) -> None:
        super().__init__(params, defaults={})
        self.net = net

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad.reshape(-1).to(next(self.net.parameters()).dtype)
                state = self.state[p]
                if not state:
                    for i, (h, c) in enumerate(self.net.initial_state(grad.numel(), grad)):
                        state[f"h{i}"], state[f"c{i}"] = h, c
                lstm_state = [(state[f"h{i}"], state[f"c{i}"]) for i in range(self.net.layers)]
                update, lstm_state = self.net(grad, lstm_state)
                for i, (h, c) in enumerate(lstm_state):
                    state[f"h{i}"], state[f"c{i}"] = h, c
                p.add_(update.view_as(p).to(p.dtype))
        return loss
