"""MAML: Model-Agnostic Meta-Learning (Finn, Abbeel & Levine, ICML 2017).

Inner loop, eq. (1), for each task T_i from the shared initialisation theta::

    theta'_i = theta - alpha * grad_theta L_{T_i}^{support}(f_theta)        (repeated ``inner_steps`` times)

Outer loop, eq. (3), on the query sets::

    theta <- theta - beta * grad_theta sum_i L_{T_i}^{query}(f_{theta'_i})

The meta-gradient flows through the inner updates (second order). ``first_order=True`` is the paper's first-order
approximation (FOMAML): the inner gradients are treated as constants, which drops the Hessian-vector terms.

This file is the paper: :meth:`MAML.adapt_trajectory` is eq. (1) and :meth:`MAML.task_loss` is task i's term of
eq. (3); the outer step beta is the trainer's optimiser. How the tasks of a meta-batch run (a per-task loop, vmap,
tasks folded into one network pass, chunks, workers, compile) is fastadapt's engine, which gives the same
meta-gradient whichever way (fastadapt.engine.execution). MAML++ is :mod:`.maml_plus_plus`, ANIL :mod:`.anil`,
Meta-SGD :mod:`.metasgd`: each states what differs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from fastadapt.algorithms.base import InnerLoopLearner, check_per_way_head
from fastadapt.algorithms.registry import Algorithm, register
from fastadapt.algorithms.registry import algorithm as registered_algorithm
from fastadapt.datasets import input_features
from fastadapt.engine.execution import Execution
from fastadapt.engine.functional import Params
from fastadapt.errors import ConfigError
from fastadapt.nets import build_network
from fastadapt.options import option


class MAML(InnerLoopLearner):
    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 0.4,
        inner_steps: int = 1,
        first_order: bool = False,
        eval_inner_steps: int | None = None,
        strategy: str = "loop",
        *,
        fast_layers: bool = True,
        **execution: Any,
    ) -> None:
        """``execution``: the engine's settings (``vmap_chunk``, ``workers``, ``channels_last``, ``compile``;
        fastadapt.engine.execution.Execution), which change the meta-gradient's cost, not its value."""
        super().__init__(model, fast_layers=fast_layers, strategy=strategy, **execution)
        self.inner_lr = inner_lr
        self.inner_steps = inner_steps
        self.first_order = first_order
        self.eval_inner_steps = inner_steps if eval_inner_steps is None else eval_inner_steps

    def inner_learning_rate(self, step: int = 0) -> float | dict[str, Tensor]:
        """alpha of eq. (1) in inner step ``step``: a fixed scalar here (Meta-SGD learns one per weight)."""
        return self.inner_lr

    def adapt_trajectory(self, support_x: Tensor, support_y: Tensor, steps: int, first_order: bool) -> list[Params]:
        """Eq. (1), ``steps`` times from theta: [theta, theta_i^(1), ..., theta_i^(steps)]."""
        support_loss = lambda params, step: self.loss(self.network(params, support_x, step), support_y)
        return self.inner_loop(support_loss, self.start(), steps, self.inner_learning_rate, first_order)

    def adapt(self, support_x: Tensor, support_y: Tensor, steps: int, first_order: bool) -> Params:
        """theta'_i: ``steps`` gradient steps on one task's support loss (eq. 1)."""
        return self.adapt_trajectory(support_x, support_y, steps, first_order)[-1]

    def task_loss(
        self,
        support_x: Tensor,
        support_y: Tensor,
        query_x: Tensor,
        query_y: Tensor,
        *,
        steps: int,
        first_order: bool,
    ) -> tuple[Tensor, Tensor]:
        """Task i's term of eq. (3): L_{T_i}^{query}(f_{theta'_i}), and the query predictions."""
        fast = self.adapt(support_x, support_y, steps, first_order)
        predictions = self.network(fast, query_x, max(steps - 1, 0))
        return self.loss(predictions, query_y), predictions

    def schedule(self, training: bool) -> dict[str, Any]:
        """Second order in training unless ``first_order``; evaluation needs no meta-gradient (first order)."""
        return {"first_order": self.first_order or not training}

    def extra_repr(self) -> str:
        return (
            f"inner_lr={self.inner_lr}, inner_steps={self.inner_steps}, first_order={self.first_order}, "
            f"eval_inner_steps={self.eval_inner_steps}, {super().extra_repr()}"
        )


@dataclass
class InnerLoopOptions(Execution):
    """The settings of MAML's inner loop, shared by the methods built on it; the engine's (strategy, chunks, workers,
    layout, compile) come from Execution."""

    inner_lr: float = option(0.4, "inner-loop step size alpha of eq. (1)")
    inner_steps: int = option(1, "inner-loop steps in meta-training")
    eval_inner_steps: int | None = option(None, "inner-loop steps at test time (default: as in meta-training)")
    first_order: bool = option(False, "first-order approximation: drop the second derivatives (FOMAML)")

    def validate(self) -> None:
        self.check()
        if self.inner_steps < 0 or (self.eval_inner_steps is not None and self.eval_inner_steps < 0):
            raise ConfigError(f"--inner-steps must be >= 0 (got {self.inner_steps}).")


@dataclass
class MAMLOptions(InnerLoopOptions):
    """MAML's settings, with MAML++'s switches (maml_plus_plus.py), each off: any one on makes the run MAML++'s
    with that switch alone (`--algorithm maml++` turns them all on)."""

    multi_step_loss: bool = option(False, "meta-loss on the query set after every inner step (MAML++'s MSL)")
    multi_step_loss_steps: int = option(0, "outer steps over which MSL's weights anneal to the last step")
    per_step_lr: bool = option(False, "learned inner learning rate per layer and inner step (MAML++'s LSLR)")
    per_step_bn: bool = option(False, "batch-norm weights and biases per inner step (MAML++'s BNWB)")
    first_order_steps: int = option(0, "first order for the first N outer steps, then second (MAML++'s DOA; 0: off)")

    def switched_on(self) -> bool:
        return any((self.multi_step_loss, self.per_step_lr, self.per_step_bn, self.first_order_steps))

    def validate(self) -> None:
        """Runs on the run's whole configuration (its ``network`` too)."""
        super().validate()
        for name in ("multi_step_loss_steps", "first_order_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0 (got {getattr(self, name)}).")
        if self.multi_step_loss and self.multi_step_loss_steps < 1:
            raise ConfigError("--multi-step-loss anneals over --multi-step-loss-steps outer steps; give at least 1.")
        if (self.multi_step_loss or self.per_step_lr or self.per_step_bn) and self.inner_steps < 1:
            raise ConfigError("the multi-step loss and per-step settings need --inner-steps of at least 1.")
        if self.per_step_bn and self.network == "mlp":
            raise ConfigError("--per-step-bn needs a network with batch norm; --network mlp has none.")


# fmt: off
PRESETS: dict[str, dict[str, Any]] = {
    # Finn et al. 2017, Omniglot: stride-2 Conv-4, meta-batch 32, one inner step of 0.4, one query per class in
    # training; 3 inner steps at test.
    "omniglot": dict(network="conv4-stride", query=1, eval_query=15, meta_batch_size=32, inner_lr=0.4, inner_steps=1,
                     eval_inner_steps=3, lr=1e-3, steps=20000, val_every=1000, val_episodes=300),
    "folder": dict(network="conv4", query=5, eval_query=15, meta_batch_size=4, inner_lr=0.01, inner_steps=5,
                   eval_inner_steps=10),
    # Finn et al. 2017, sinusoid: K=10, one inner step of 0.01, meta-batch 25, 70k iterations.
    "sinusoid": dict(network="mlp", shots=10, query=10, eval_query=100, meta_batch_size=25, inner_lr=0.01,
                     inner_steps=1, eval_inner_steps=1, lr=1e-3, steps=70000, val_every=5000, val_episodes=300),
    # Finn et al. 2017, sec. 5.2, 5-way 1-shot: Conv-4 with 32 filters and max-pooling "to reduce overfitting"; 5
    # inner steps of 0.01 in training, 10 at test; meta-batch 4 tasks (5-shot: 2); 15 queries per class; Adam 1e-3
    # (appendix A.1); 60000 meta-iterations. The protocol (84x84 colour, Ravi & Larochelle's split, 15 test queries)
    # is the data set's own (fastadapt.datasets.DATASETS).
    "mini-imagenet": dict(network="conv4-32", query=15, meta_batch_size=4, inner_lr=0.01, inner_steps=5,
                          eval_inner_steps=10, lr=1e-3, steps=60000, val_every=1000),
    # Lines y = theta_0 + theta_1 x: the sinusoid set-up above (MLP 1-40-40-1, K=10, one step of 0.01, meta-batch 25,
    # Adam 1e-3) with 5000 outer steps, fastadapt's choice for this easier family (docs/data.md measures them).
    "linear": dict(network="mlp", shots=10, query=10, eval_query=100, meta_batch_size=25, inner_lr=0.01,
                   inner_steps=1, eval_inner_steps=1, lr=1e-3, steps=5000, val_every=500, val_episodes=300),
    # Over sentence embeddings (docs/text.md): a linear classifier head on the frozen encoder's embeddings, all of it
    # adapted in the inner loop. Chosen by short runs (400 steps, 5-way 1-shot) on CLINC150's meta-validation
    # domains: an MLP head (mlp-256, inner lr 0.5 or 2.0) lost accuracy as it trained, a linear head with inner lr 4.0
    # did not (the embeddings have unit norm, so the support gradients are small); 1500 steps.
    "clinc150": dict(network="linear", query=10, eval_query=15, meta_batch_size=4, inner_lr=4.0, inner_steps=5,
                     eval_inner_steps=10, lr=1e-3, steps=1500, val_every=250, val_episodes=300),
}
PRESETS["text"] = PRESETS["clinc150"]
# fmt: on


def network_for(config: Any) -> nn.Module:
    """The network of an adapted classifier (one output per way) or regressor (one output), with batch
    statistics in every batch norm (each task's own, as in MAML's reference code)."""
    check_per_way_head(config.algorithm, config.ways, config.train_ways)
    outputs = 1 if config.ways is None or config.regression else config.ways
    features = input_features(config)  # vectors (text embeddings): a head over them
    return build_network(config.network, config.channels, config.image_size, outputs, "episode", features)


def engine_settings(config: Any) -> dict[str, Any]:
    """The engine's settings of a configuration, as keyword arguments of a learner."""
    names = ("strategy", "vmap_chunk", "workers", "channels_last", "compile", "gradient_check")
    return {name: getattr(config, name) for name in names}


def inner_loop_settings(config: Any) -> dict[str, Any]:
    """The settings of InnerLoopOptions (MAML's inner loop and the engine's), as keyword arguments of a learner."""
    names = ("inner_lr", "inner_steps", "first_order", "eval_inner_steps")
    return {**{name: getattr(config, name) for name in names}, **engine_settings(config)}


def build(config: Any) -> MAML:
    """MAML, or MAML++ (maml_plus_plus.py) with the switches that are on."""
    if config.switched_on():
        return registered_algorithm("maml++").build(config)
    return MAML(network_for(config), **inner_loop_settings(config))


register(
    Algorithm(
        name="maml",
        listing=0,
        family="optimization",
        summary="MAML (Finn et al. 2017), second order; --first-order for FOMAML",
        options=MAMLOptions,
        build=build,
        presets=PRESETS,
    )
)
