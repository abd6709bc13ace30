"""Meta-LSTM: "Optimization as a Model for Few-Shot Learning" (Ravi & Larochelle, ICLR 2017).

Gradient descent, theta_t = theta_{t-1} - alpha_t * grad_t, is the cell update of an LSTM with forget gate 1
and input gate alpha_t. The paper lets an LSTM meta-learner R learn both gates; its cell state *is* the
learner's parameter vector::

    c_t = f_t * c_{t-1} + i_t * c~_t,  with  c~_t = -grad_{theta_{t-1}} L_t   (eq. 2: theta_t = c_t)
    i_t = sigmoid(W_I [grad_t, L_t, theta_{t-1}, i_{t-1}] + b_I)                 (input gate: a learned step size)
    f_t = sigmoid(W_F [grad_t, L_t, theta_{t-1}, f_{t-1}] + b_F)                 (forget gate: learned shrinkage)
    c_0 = theta_0                                                                 (the learned initialisation)

Parameter sharing and preprocessing (as the paper does it): R is coordinate-wise, one small LSTM shared by
every learner weight, each coordinate with its own hidden and cell state. It has two layers: the first a
standard LSTM (20 hidden units) over the preprocessed gradient and loss, the second the cell above with
[grad_t, L_t] replaced by the first layer's hidden state h_t, i.e. i_t = sigmoid(W_I [h_t, c_{t-1}, i_{t-1}] +
b_I). Inputs are preprocessed as in Andrychowicz et al. 2016 (appendix A), p = 10::

    x -> (log|x| / p, sign(x))  if |x| >= e^-p,   else (-1, e^p x)

Algorithm 1 (one episode): for t = 1..T, the learner M with weights theta_{t-1} = c_{t-1} takes the support
loss L_t and its gradient grad_t, R gives c_t; the meta-loss is the query loss of M with theta_T, and R's
parameters Theta (W, b and c_0) take a gradient step on it (Adam, learning rate 1e-3, gradient norm clipped
to 0.25, as in the authors' code).

Choices of the paper kept here:

- Gradient independence: grad_t and L_t are treated as inputs that do not depend on Theta (the paper's
  "we ignore the second derivatives"), so grad_t is computed on a detached copy of c_{t-1}. The meta-gradient
  still flows through c_{t-1} in f_t * c_{t-1} and in the gates' inputs.
- Initialisation: gate weights small (uniform in [-0.01, 0.01]); forget bias large (uniform in [4, 6], so
  f ~ 1 at first) and input bias small (uniform in [-5, -4], so i ~ 0.01): R starts as plain gradient
  descent with a small step.
- Batch normalisation uses the statistics of the batch it is given, in meta-training and at test time
  (support batch during the updates, query set for the predictions); the meta-learner does not keep or
  learn running statistics. The learner's BN scale and shift are weights like the others, updated by R.
- Number of updates: the authors' configuration makes T = 12 updates for 1-shot and 8 for 5-shot, each
  on the whole support set of a 5-way episode (batch size 5 and 25); the same T at test time.

Deviations: the learner is the Conv-4 with 32 filters on 28x28 Omniglot (the paper reports mini-ImageNet
only); the 1-shot preset's T = 12 is a setting (``inner_steps``), pass 8 for 5-shot; meta-batches of
several episodes average their query losses (the paper uses one episode per meta-update, the preset too).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from fastadapt.algorithms.base import MetaLearner, MetaOutput, check_per_way_head, task_loss
from fastadapt.algorithms.registry import Algorithm, register
from fastadapt.engine.functional import Params, call, parameters_of
from fastadapt.errors import ConfigError
from fastadapt.learned_optim.net import preprocess
from fastadapt.nets import build_network
from fastadapt.options import MethodOptions, option
from fastadapt.tasks.episodes import TaskBatch


class MetaLSTMCell(nn.Module):
    """The second layer: a cell whose state is the learner's weights, c_t = f_t * c_{t-1} - i_t * grad_t.

    Coordinate-wise: every tensor has one row per learner weight, and W_I, W_F are shared by all rows.
    """

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.input_gate = nn.Linear(hidden + 2, 1)  # W_I, b_I over [h_t, c_{t-1}, i_{t-1}]
        self.forget_gate = nn.Linear(hidden + 2, 1)  # W_F, b_F over [h_t, c_{t-1}, f_{t-1}]
        for gate in (self.input_gate, self.forget_gate):
            nn.init.uniform_(gate.weight, -0.01, 0.01)
        # Large forget bias (f ~ 1: keep the weights), small input bias (i ~ 0.01: a small first step).
        nn.init.uniform_(self.forget_gate.bias, 4.0, 6.0)
        nn.init.uniform_(self.input_gate.bias, -5.0, -4.0)

    def gates(self, h: Tensor, c_prev: Tensor, i_prev: Tensor, f_prev: Tensor) -> tuple[Tensor, Tensor]:
        """i_t and f_t, each (coordinates,) in (0, 1)."""
        c_col = c_prev.unsqueeze(1)
        i = torch.sigmoid(self.input_gate(torch.cat([h, c_col, i_prev.unsqueeze(1)], dim=1))).squeeze(1)
        f = torch.sigmoid(self.forget_gate(torch.cat([h, c_col, f_prev.unsqueeze(1)], dim=1))).squeeze(1)
        return i, f

    def forward(
        self, h: Tensor, grad: Tensor, c_prev: Tensor, i_prev: Tensor, f_prev: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(c_t, i_t, f_t) for one update; ``grad`` is the learner's gradient at c_{t-1}."""
        i, f = self.gates(h, c_prev, i_prev, f_prev)
        return f * c_prev - i * grad, i, f


class MetaLSTM(MetaLearner):
    """Ravi & Larochelle's meta-learner around a learner network ``model``, whose parameters are c_0."""

    supports_regression = False

    def __init__(
        self,
        model: nn.Module,
        inner_steps: int = 12,
        eval_inner_steps: int | None = None,
        hidden: int = 20,
        preprocess_p: float = 10.0,
        max_grad_norm: float | None = 0.25,
        compile_update: bool = False,
    ) -> None:
        super().__init__()
        self.model = model  # its parameters are the learned initial cell state c_0
        self.inner_steps = inner_steps
        self.eval_inner_steps = inner_steps if eval_inner_steps is None else eval_inner_steps
        self.preprocess_p = preprocess_p
        # The authors clip the meta-gradient norm to 0.25 (clip_meta_gradient, after any averaging over processes).
        self.max_grad_norm = max_grad_norm
        self.input_lstm = nn.LSTMCell(4, hidden)  # first layer: preprocessed (grad, loss) -> h_t
        self.cell = MetaLSTMCell(hidden)
        # R's step is a dozen elementwise passes over (weights x 80) tensors; torch.compile fuses them (about
        # 2x faster on CPU after a one-off compile of about a minute, worth it for long runs only).
        self.compile_update = compile_update
        self._step = torch.compile(self.update, dynamic=False) if compile_update else self.update

    def clip_meta_gradient(self) -> None:
        if self.max_grad_norm:
            nn.utils.clip_grad_norm_(self.parameters(), self.max_grad_norm)

    # --- the learner's weights as one flat vector (the cell state) -------------------------------------

    def initial_cell_state(self) -> Tensor:
        """c_0: the learner's (meta-learned) initial weights, flattened in parameter order."""
        return torch.cat([p.reshape(-1) for p in parameters_of(self.model).values()])

    def unflatten(self, flat: Tensor) -> Params:
        """The flat cell state as the learner's name -> tensor dict (views, differentiable)."""
        params, offset = {}, 0
        for name, p in parameters_of(self.model).items():
            params[name] = flat[offset : offset + p.numel()].view_as(p)
            offset += p.numel()
        return params

    def learner_loss_and_gradient(self, flat: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """L_t and grad_t of the learner at weights ``flat``, both detached (gradient independence)."""
        with torch.enable_grad():
            theta = flat.detach().requires_grad_(True)
            loss = task_loss(call(self.model, self.unflatten(theta), x), y)
            (grad,) = torch.autograd.grad(loss, theta)
        return loss.detach(), grad

    def update(
        self, state: tuple[Tensor, Tensor, Tensor, Tensor, Tensor], loss: Tensor, grad: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """One step of R: (h1, c1, c, i, f) -> the next, given the learner's loss and gradient at c."""
        h1, c1, c, i, f = state
        p = self.preprocess_p
        inputs = torch.cat([preprocess(grad, p), preprocess(loss, p).expand(grad.shape[0], 2)], dim=1)
        h1, c1 = self.input_lstm(inputs, (h1, c1))
        c, i, f = self.cell(h1, grad, c, i, f)
        return h1, c1, c, i, f

    def adapt(self, support_x: Tensor, support_y: Tensor, steps: int) -> Params:
        """theta_T for one task: ``steps`` updates of R on the whole support set (Algorithm 1, lines 5-10)."""
        c = self.initial_cell_state()
        n, hidden = c.shape[0], self.input_lstm.hidden_size
        zeros = c.new_zeros(n)
        state = (c.new_zeros(n, hidden), c.new_zeros(n, hidden), c, zeros, zeros)  # i_0 = f_0 = 0
        for _ in range(steps):
            loss, grad = self.learner_loss_and_gradient(state[2], support_x, support_y)
            state = self._step(state, loss, grad)
        return self.unflatten(state[2])

    def _query(self, batch: TaskBatch, steps: int) -> tuple[Tensor, Tensor]:
        losses, predictions = [], []
        for t in range(batch.num_tasks):
            fast = self.adapt(batch.support_x[t], batch.support_y[t], steps)
            logits = call(self.model, fast, batch.query_x[t])
            losses.append(task_loss(logits, batch.query_y[t]))
            predictions.append(logits)
        return torch.stack(losses), torch.stack(predictions)

    def meta_loss(self, batch: TaskBatch) -> MetaOutput:
        losses, predictions = self._query(batch, self.inner_steps)
        return MetaOutput(losses.mean(), predictions)

    def predict(self, batch: TaskBatch, steps: int | None = None) -> Tensor:
        with torch.no_grad():  # R runs forward only; the learner's gradients are taken inside adapt
            _, predictions = self._query(batch, self.eval_inner_steps if steps is None else steps)
        return predictions

    def extra_repr(self) -> str:
        return (
            f"inner_steps={self.inner_steps}, eval_inner_steps={self.eval_inner_steps}, "
            f"preprocess_p={self.preprocess_p}, max_grad_norm={self.max_grad_norm}"
        )


@dataclass
class MetaLSTMOptions(MethodOptions):
    inner_steps: int = option(12, "updates of the learner by the meta-learner on the support set (5-shot: 8)")
    eval_inner_steps: int | None = option(None, "updates at test time (default: as in meta-training)")
    compile: bool = option(False, "torch.compile the per-coordinate update: a one-off compile, then ~2x faster steps")

    def validate(self) -> None:
        if self.inner_steps < 0:
            raise ConfigError(f"--inner-steps must be >= 0 (got {self.inner_steps}).")


def build(config: Any) -> MetaLSTM:
    check_per_way_head(config.algorithm, config.ways, config.train_ways)
    model = build_network(config.network, config.channels, config.image_size, config.ways, norm="episode")
    return MetaLSTM(
        model, inner_steps=config.inner_steps, eval_inner_steps=config.eval_inner_steps, compile_update=config.compile
    )


# The authors' 1-shot configuration: Conv-4 with 32 filters, 12 updates of the learner on the whole support set (pass
# --inner-steps 8 for 5-shot), 15 queries per class, one episode per meta-update, Adam 1e-3 (meta-gradient norm
# clipped to 0.25 by the learner itself), 75000 episodes.
# fmt: off
_OMNIGLOT = dict(network="conv4-32", query=15, eval_query=15, meta_batch_size=1, inner_steps=12, lr=1e-3, steps=75000,
                 val_every=1000, val_episodes=200)
# fmt: on
register(
    Algorithm(
        name="meta-lstm",
        listing=5,
        family="optimization",
        summary="Meta-LSTM (Ravi & Larochelle 2017): an LSTM whose cell state is the learner's weights",
        options=MetaLSTMOptions,
        build=build,
        presets={
            "omniglot": _OMNIGLOT,
            "folder": dict(_OMNIGLOT, query=5, steps=5000, val_every=500),
            # Ravi & Larochelle 2017, config/lstm/train-imagenet-1shot.lua and config/1-shot-5-class.lua: the
            # learner is Conv-4 with 32 filters; 12 updates on the whole 5-example support set, 75000 episodes
            # (5-shot: 8 updates, 50000 episodes); Adam 1e-3; 15 queries per class; one episode per meta-update.
            # Not expressible here: the learner's batch-norm momentum 0.9 (5-shot: 0.95).
            "mini-imagenet": dict(
                network="conv4-32", query=15, meta_batch_size=1, inner_steps=12, lr=1e-3, steps=75000, val_every=1000
            ),
        },
        supports_regression=False,
    )
)
