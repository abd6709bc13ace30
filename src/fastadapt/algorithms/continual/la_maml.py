"""La-MAML: look-ahead meta-learning for online continual learning (Gupta, Yadav & Paull, "La-MAML:
Look-ahead Meta Learning for Continual Learning", NeurIPS 2020; code: github.com/montrealrobotics/La-MAML).

Every weight tensor theta has a learned, per-parameter learning rate alpha (same shape, initialised to
``alpha_init``). For each incoming mini-batch e_b of the stream (k examples), with b_m = replay samples from a
reservoir buffer together with e_b (the paper's Algorithm 1)::

    theta_0 = theta
    theta_n = theta_{n-1} - relu(alpha) * grad ell(theta_{n-1}, e_b[n])      n = 1..k, one example per step
    L       = 1/k sum_n  ell(theta_n, b_m)                                    the look-ahead meta-loss
    alpha  <- alpha - eta * grad_alpha L                                      the rates first,
    theta  <- theta - relu(alpha) * grad_theta L                              then the weights with them

then e_b enters the buffer by reservoir sampling. The meta-loss asks the online steps on new data not to
raise the loss on old data (replayed) and the new data alike: its gradient aligns the examples' gradients
(the paper's section 4, as MER), and the learned rates slow down the weights whose updates interfere.
``glances`` repeats this on the same incoming batch (the paper's single-pass setting: 5 for MNIST); the
meta-loss averages over the intermediate weights theta_1..theta_k as the authors' code does. By default the
inner gradients are constants in the meta-gradient (their MNIST runs leave ``--second_order`` off), which
still differentiates L with respect to alpha through every step; ``second_order=True`` keeps the Hessian
terms. ``sync_update=True`` is their "Sync-La-MAML" ablation (theta by plain SGD with ``weight_lr``).

Why La-MAML rather than MER (Riemer et al. 2019): it is MAML's differentiable inner loop plus learned
per-parameter rates, so it runs on fastadapt.engine.functional's inner loop as it is (``inner_sgd_trajectory`` with a
per-parameter ``lr``), its meta-gradient can be checked against a plain autograd loop, and it needs one
meta-step per incoming batch where MER runs Reptile over many within-batch steps per example (the La-MAML
paper reports it faster and better than MER on the MNIST benchmarks, its Table 1).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastadapt.algorithms.base import MetaLearner, MetaOutput
from fastadapt.algorithms.registry import Algorithm, register
from fastadapt.engine.functional import Params, call, inner_sgd_trajectory, parameter_key, parameters_of
from fastadapt.errors import ConfigError
from fastadapt.options import DEEPEST_MLP, MethodOptions, option, require_positive
from fastadapt.tasks.episodes import TaskBatch
from fastadapt.tasks.replay import ReservoirBuffer


@dataclass
class LaMAMLOptions(MethodOptions):
    """La-MAML's network and online meta-learning settings (defaults: the ``rotated-digits`` preset)."""

    inputs: int = option(64, "input features (8x8 digits: 64)")
    hidden: int = option(100, "units of each hidden layer of the MLP")
    layers: int = option(2, "hidden layers of the MLP")
    num_classes: int = option(10, "outputs of the shared (single) head")
    alpha_init: float = option(0.15, "initial value of every learned learning rate")
    alpha_lr: float = option(0.3, "eta: SGD step size of the learning rates")
    memory: int = option(200, "replay buffer capacity in examples (reservoir sampling)")
    replay_batch: int = option(10, "replayed examples added to each meta-loss batch")
    batch_size: int = option(10, "incoming examples per stream batch (inner steps)")
    glances: int = option(5, "meta-steps on each incoming batch (single pass)")
    second_order: bool = option(False, "keep second derivatives through the inner steps")
    grad_clip: float = option(2.0, "clip the weights' and rates' gradient norms (0: off)")
    sync_update: bool = option(False, "update the weights by SGD with weight_lr instead")
    weight_lr: float = option(0.1, "the weights' step size with sync_update")
    seed: int = option(0, "seed of the initialisation, the buffer and the shuffles")

    def validate(self) -> None:
        require_positive(self, "inputs", "hidden", "num_classes", "batch_size", "glances")
        require_positive(self, "layers", minimum=0, maximum=DEEPEST_MLP)
        require_positive(self, "memory", "replay_batch", minimum=0)
        if self.alpha_init < 0 or self.alpha_lr < 0 or self.grad_clip < 0 or self.weight_lr <= 0:
            raise ConfigError("La-MAML options alpha_init, alpha_lr and grad_clip must be >= 0, weight_lr > 0.")
        if self.replay_batch > self.memory:
            raise ConfigError(
                f"La-MAML's replay_batch ({self.replay_batch}) is larger than its buffer ({self.memory} examples); "
                f"lower replay_batch or raise memory."
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PRESETS: dict[str, dict[str, Any]] = {
    # The authors' MNIST settings (run_experiments.sh, "#lamaml" lines): two hidden layers of 100 units,
    # memories 200, batch_size 10, replay_batch_size 10, glances 5, alpha_init 0.15, opt_lr 0.3 (rotations and
    # permutations alike), grad_clip_norm 2.0 (parser default), first order.
    "rotated-digits": {},
    "permuted-digits": {},
}


def options_from_preset(name: str, **overrides: Any) -> LaMAMLOptions:
    if name not in PRESETS:
        raise ConfigError(f"unknown La-MAML preset {name!r}; choose one of {', '.join(PRESETS)}.")
    options = LaMAMLOptions(**{**PRESETS[name], **overrides})
    options.validate()
    return options


def mlp(inputs: int, hidden: int, layers: int, outputs: int) -> nn.Sequential:
    """inputs -> [hidden, ReLU] x layers -> outputs: the MLP of the MNIST continual-learning benchmarks."""
    sizes = [inputs] + [hidden] * layers
    modules: list[nn.Module] = []
    for a, b in zip(sizes, sizes[1:]):
        modules += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*modules, nn.Linear(sizes[-1], outputs))


class LaMAML(MetaLearner):
    """La-MAML around ``model``. ``observe(x, y)`` learns one incoming batch of the stream; ``meta_loss(batch)``
    is one look-ahead step with ``batch.support_*`` the incoming examples (one inner step each) and
    ``batch.query_*`` the meta-loss batch b_m."""

    supports_regression = False

    def __init__(
        self,
        model: nn.Module,
        alpha_init: float = 0.15,
        alpha_lr: float = 0.3,
        memory: int = 200,
        replay_batch: int = 10,
        glances: int = 5,
        second_order: bool = False,
        grad_clip: float = 2.0,
        sync_update: bool = False,
        weight_lr: float = 0.1,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.model = model
        self.alpha = nn.ParameterDict(
            {parameter_key(n): nn.Parameter(torch.full_like(p, alpha_init)) for n, p in parameters_of(model).items()}
        )
        self.alpha_lr = alpha_lr
        self.replay_batch = replay_batch
        self.glances = glances
        self.second_order = second_order
        self.grad_clip = grad_clip
        self.sync_update = sync_update
        self.weight_lr = weight_lr
        self.buffer = ReservoirBuffer(memory, seed)
        self.rng = np.random.default_rng([seed, 1])

    def learning_rates(self) -> dict[str, Tensor]:
        """relu(alpha) per parameter name: the step sizes actually used (negative rates are switched off)."""
        return {name: F.relu(self.alpha[parameter_key(name)]) for name in parameters_of(self.model)}

    # ------------------------------------------------------------------------------------------ the update rule
    def look_ahead_loss(self, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor) -> Tensor:
        """1/k sum_n ell(theta_n, b_m) over the weights after each of the k inner steps."""
        lrs = self.learning_rates()

        def loss_at_step(p: Params, n: int) -> Tensor:
            return F.cross_entropy(call(self.model, p, support_x[n : n + 1]), support_y[n : n + 1])

        trajectory = inner_sgd_trajectory(
            loss_at_step, parameters_of(self.model), len(support_y), lambda _: lrs, first_order=not self.second_order
        )
        losses = [F.cross_entropy(call(self.model, theta, query_x), query_y) for theta in trajectory[1:]]
        return torch.stack(losses).mean()

    def meta_loss(self, batch: TaskBatch) -> MetaOutput:
        losses = [
            self.look_ahead_loss(batch.support_x[t], batch.support_y[t], batch.query_x[t], batch.query_y[t])
            for t in range(batch.num_tasks)
        ]
        with torch.no_grad():
            predictions = torch.stack([self.model(batch.query_x[t]) for t in range(batch.num_tasks)])
        return MetaOutput(torch.stack(losses).mean(), predictions)

    @torch.no_grad()
    def _apply_meta_gradient(self) -> None:
        weights = list(parameters_of(self.model).values())
        if self.grad_clip > 0:
            nn.utils.clip_grad_norm_(weights, self.grad_clip)
            nn.utils.clip_grad_norm_(list(self.alpha.parameters()), self.grad_clip)
        for a in self.alpha.values():  # the rates first
            if a.grad is not None:
                a -= self.alpha_lr * a.grad
        lrs = self.learning_rates()
        for name, p in parameters_of(self.model).items():  # then the weights, with the rates just updated
            if p.grad is not None:
                p -= (self.weight_lr if self.sync_update else lrs[name]) * p.grad

    def observe(self, x: Tensor, y: Tensor) -> float:
        """Learn one incoming batch: ``glances`` look-ahead meta-steps on it with replayed examples, then
        store it in the buffer. Returns the last meta-loss."""
        loss = 0.0
        for _ in range(self.glances):
            order = torch.as_tensor(self.rng.permutation(len(y)))
            x, y = x[order], y[order]
            bx, by = self.buffer.with_replay(x, y, self.replay_batch)
            self.zero_grad(set_to_none=True)
            out = self.look_ahead_loss(x, y, bx, by)
            out.backward()
            self._apply_meta_gradient()
            self.zero_grad(set_to_none=True)
            loss = out.item()
        self.buffer.add(x, y)
        return loss

    @torch.no_grad()
    def predict_logits(self, x: Tensor) -> Tensor:
        return self.model(x)

    def predict(self, batch: TaskBatch) -> Tensor:
        """La-MAML tests without adapting: the current weights' logits on each query set."""
        return torch.stack([self.predict_logits(batch.query_x[t]) for t in range(batch.num_tasks)])

    def check_stream(self, stream: Any) -> None:
        """Refuse a replay buffer larger than the whole stream (it would never fill: the memory setting is a no-op)."""
        self.buffer.check_fits(stream.total_train_examples, "La-MAML")


def build(options: LaMAMLOptions | None = None, model: nn.Module | None = None) -> LaMAML:
    """La-MAML for ``options`` (defaults: the ``rotated-digits`` preset) around ``model`` (default: the MLP
    of ``options``), seeded by ``options.seed``."""
    options = options or LaMAMLOptions()
    options.validate()
    if model is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(options.seed)
            model = mlp(options.inputs, options.hidden, options.layers, options.num_classes)
    return LaMAML(
        model,
        options.alpha_init,
        options.alpha_lr,
        options.memory,
        options.replay_batch,
        options.glances,
        options.second_order,
        options.grad_clip,
        options.sync_update,
        options.weight_lr,
        options.seed,
    )


register(
    Algorithm(
        name="la-maml",
        family="continual",
        summary="La-MAML (Gupta et al. 2020): look-ahead MAML with learned per-parameter rates and replay",
        options=LaMAMLOptions,
        build=build,
        presets=PRESETS,
        supports_regression=False,
        command="continual",
    )
)
