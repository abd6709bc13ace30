"""MAML++: Antoniou, Edwards & Storkey, "How to train your MAML" (ICLR 2019), section 4, on top of MAML.

Each switch changes one thing of :class:`~fastadapt.algorithms.optimization.maml.MAML`; all off is plain MAML:

- ``multi_step_loss`` (MSL): the meta-loss is ``sum_j v_j L^query(f_{theta_i^(j)})`` over the weights after every
  inner step j = 1..N, not only the last. The importance weights v start uniform (1/N) and are annealed linearly
  over ``multi_step_loss_steps`` outer steps towards the last step (earlier steps down to 0.03/N each, the last up
  to 1 - (N-1) * 0.03/N), as in the authors' code; afterwards only the last step's loss counts. The paper anneals
  per epoch of 500 outer steps; here the progress is per step.
- ``per_step_lr`` (LSLR, "learning per-layer per-step learning rates"): alpha becomes one learned scalar for every
  parameter tensor and every inner step, initialised to ``inner_lr`` and meta-learned with theta. For an
  evaluation with more inner steps than in training the last step's rates are reused.
- ``per_step_bn`` (BNWB, "per-step batch normalisation weights and biases"): every batch-norm layer gets one weight
  and bias vector per inner step (initialised from the layer's own); the forward pass of inner step j (and the
  query pass after step j's update) uses set j. As in the authors' code (their
  ``enable_inner_loop_optimizable_bn_params: false``) these are meta-learned but not adapted in the inner loop, so
  the layer's own weight and bias are unused and frozen. Per-step running statistics (BNRS) are not kept: our
  batch norm normalises with the statistics of the batch it is given (MAML's reference code), and the authors'
  code, which collects per-step running statistics, also normalises with batch statistics
  (``F.batch_norm(..., training=True)``), so collecting them would not change any output.
- ``first_order_steps`` (DOA, "derivative-order annealing"): the first ``first_order_steps`` outer steps use the
  first-order approximation, then second order (the paper: first order for 50 epochs).
- Cosine annealing of the outer learning rate (CA) is the trainer's ``--lr-schedule cosine``
  (:func:`fastadapt.train.outer_optimizer`), not part of the learner.

The trainer sets :attr:`training_step` before each outer step; the MSL and DOA schedules read it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from fastadapt.algorithms.optimization.maml import MAML, MAMLOptions, inner_loop_settings, network_for
from fastadapt.algorithms.optimization.maml import PRESETS as MAML_PRESETS
from fastadapt.algorithms.registry import Algorithm, register
from fastadapt.engine.functional import Params, parameter_key, parameters_of
from fastadapt.engine.layers import EpisodeBatchNorm1d, EpisodeBatchNorm2d
from fastadapt.errors import ConfigError
from fastadapt.options import option

#: MAML++'s floor on the weight of each non-final step's query loss, times the number of steps.
MSL_MIN_CONTRIBUTION = 0.03


def multi_step_loss_weights(steps: int, progress: float) -> list[float]:
    """MSL importance weights v_1..v_N after ``progress`` (0 to 1) of the annealing: uniform at 0, each earlier step
    decayed linearly to 0.03/N and the last grown to 1 - (N-1) * 0.03/N at 1; they sum to 1."""
    progress = min(max(progress, 0.0), 1.0)
    floor = MSL_MIN_CONTRIBUTION / steps
    earlier = [max(1.0 / steps - progress / steps, floor)] * (steps - 1)
    last = min(1.0 / steps + progress * (steps - 1) / steps, 1.0 - (steps - 1) * floor)
    return [*earlier, last]


def batch_norm_layers(model: nn.Module) -> list[str]:
    """Names of the model's batch-norm layers that have a weight and a bias."""
    kinds = (EpisodeBatchNorm2d, EpisodeBatchNorm1d, _BatchNorm)
    return [
        name for name, m in model.named_modules() if isinstance(m, kinds) and getattr(m, "weight", None) is not None
    ]


class MAMLPlusPlus(MAML):
    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 0.4,
        inner_steps: int = 1,
        first_order: bool = False,
        eval_inner_steps: int | None = None,
        strategy: str = "loop",
        *,
        multi_step_loss: bool = False,
        multi_step_loss_steps: int = 0,
        per_step_lr: bool = False,
        per_step_bn: bool = False,
        first_order_steps: int = 0,
        **execution: Any,
    ) -> None:
        super().__init__(model, inner_lr, inner_steps, first_order, eval_inner_steps, strategy, **execution)
        if (multi_step_loss or per_step_lr or per_step_bn) and inner_steps < 1:
            raise ConfigError("MAML++'s multi-step loss and per-step settings need --inner-steps of at least 1.")
        if multi_step_loss and multi_step_loss_steps < 1:
            raise ConfigError(
                f"the multi-step loss anneals over --multi-step-loss-steps outer steps, which must be at least 1 "
                f"(got {multi_step_loss_steps})."
            )
        self.multi_step_loss = multi_step_loss
        self.multi_step_loss_steps = multi_step_loss_steps
        self.per_step_lr = per_step_lr
        self.per_step_bn = per_step_bn
        self.first_order_steps = first_order_steps
        if per_step_bn:
            layers = batch_norm_layers(self.model)
            if not layers:
                raise ConfigError(
                    "--per-step-bn needs a network with batch-norm layers (conv4, conv4-stride); this one has none."
                )
            own = dict(self.model.named_parameters())
            self.step_bn_names = [f"{layer}.{kind}" for layer in layers for kind in ("weight", "bias")]
            #: BNWB: one row per inner step for every batch-norm weight and bias, shape (inner_steps, C).
            self.step_bn_params = nn.ParameterDict(
                {
                    parameter_key(n): nn.Parameter(own[n].detach().clone().expand(inner_steps, -1).clone())
                    for n in self.step_bn_names
                }
            )
            for n in self.step_bn_names:  # replaced by the per-step rows; frozen so that no optimiser or loop sees them
                own[n].requires_grad_(False)
        if per_step_lr:
            #: LSLR: one learning rate per parameter tensor and inner step, shape (inner_steps,).
            self.step_lrs = nn.ParameterDict(
                {
                    parameter_key(n): nn.Parameter(torch.full((inner_steps,), float(inner_lr), dtype=p.dtype))
                    for n, p in parameters_of(self.model).items()
                }
            )

    def inner_learning_rate(self, step: int = 0) -> float | dict[str, Tensor]:
        """LSLR: alpha per parameter tensor and inner step (the last step's rates for steps beyond training's)."""
        if not self.per_step_lr:
            return super().inner_learning_rate(step)
        row = min(step, self.inner_steps - 1)
        return {name: self.step_lrs[parameter_key(name)][row] for name in self.theta()}

    def network(self, params: Params, x: Tensor, step: int = 0) -> Tensor:
        """BNWB: the batch-norm weights of inner step ``step`` (the last set beyond the training steps)."""
        if self.per_step_bn:
            row = min(step, self.inner_steps - 1)
            params = {**params, **{n: self.step_bn_params[parameter_key(n)][row] for n in self.step_bn_names}}
        return super().network(params, x, step)

    def task_loss(
        self,
        support_x: Tensor,
        support_y: Tensor,
        query_x: Tensor,
        query_y: Tensor,
        *,
        steps: int,
        first_order: bool,
        step_weights: Sequence[float] | Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """MSL: sum_j v_j L^query(theta_i^(j)) over the inner steps j (``step_weights`` None: the last step's loss, as
        MAML), and the query predictions after the last step. The query pass after step j uses step j's batch-norm
        weights, as the authors' code does."""
        if step_weights is None:
            return super().task_loss(support_x, support_y, query_x, query_y, steps=steps, first_order=first_order)
        trajectory = self.adapt_trajectory(support_x, support_y, steps, first_order)
        loss = 0.0
        for done, (weight, fast) in enumerate(zip(step_weights, trajectory[1:]), start=1):
            predictions = self.network(fast, query_x, done - 1)
            loss = loss + weight * self.loss(predictions, query_y)
        return loss, predictions

    def step_loss_weights(self) -> list[float] | None:
        """MSL's importance weights at the current training step, or None once only the last step counts."""
        if not self.multi_step_loss or self.training_step >= self.multi_step_loss_steps:
            return None
        return multi_step_loss_weights(self.inner_steps, self.training_step / self.multi_step_loss_steps)

    def uses_first_order(self) -> bool:
        """FOMAML, or DOA's first-order phase."""
        return self.first_order or self.training_step < self.first_order_steps

    def schedule(self, training: bool) -> dict[str, Any]:
        if not training:
            return {"first_order": True, "step_weights": None}
        return {"first_order": self.uses_first_order(), "step_weights": self.step_loss_weights()}

    def schedule_phases(self) -> list[int]:
        """Step 0, and where DOA turns to second order and where MSL's annealing ends."""
        return sorted({0, self.first_order_steps, self.multi_step_loss_steps})

    def extra_repr(self) -> str:
        switches = [name for name in ("multi_step_loss", "per_step_lr", "per_step_bn") if getattr(self, name)]
        if self.multi_step_loss:
            switches.append(f"multi_step_loss_steps={self.multi_step_loss_steps}")
        if self.first_order_steps:
            switches.append(f"first_order_steps={self.first_order_steps}")
        return ", ".join([super().extra_repr(), *switches])


@dataclass
class MAMLPlusPlusOptions(MAMLOptions):
    """MAML's settings with every MAML++ switch on (``--no-<switch>`` turns one off)."""

    multi_step_loss: bool = option(True, "meta-loss on the query set after every inner step (MSL)")
    multi_step_loss_steps: int = option(5000, "outer steps over which MSL's weights anneal to the last step")
    per_step_lr: bool = option(True, "learned inner learning rate per layer and inner step (LSLR)")
    per_step_bn: bool = option(True, "batch-norm weights and biases per inner step (BNWB)")
    first_order_steps: int = option(0, "first order for the first N outer steps, then second (DOA; 0: off)")


# The authors' Omniglot 5-way 1-shot configuration: max-pool Conv-4, 5 inner steps (also at test) of initial size 0.1,
# meta-batch 8, one query per class, Adam 1e-3 cosine-annealed to 1e-5 over 100 epochs of 500 steps, the multi-step
# loss annealed over the first 10 epochs, per-step learning rates and batch-norm weights, first order for the first
# 50 epochs (derivative-order annealing).
# fmt: off
_OMNIGLOT = dict(
    network="conv4", query=1, eval_query=15, meta_batch_size=8, inner_lr=0.1, inner_steps=5, eval_inner_steps=5,
    lr=1e-3, lr_schedule="cosine", lr_min=1e-5, steps=50000, val_every=500, val_episodes=300,
    multi_step_loss=True, multi_step_loss_steps=5000, per_step_lr=True, per_step_bn=True, first_order_steps=25000,
)
PRESETS: dict[str, dict[str, Any]] = {
    "omniglot": _OMNIGLOT,
    "folder": {**MAML_PRESETS["folder"], **{k: _OMNIGLOT[k] for k in (
        "lr_schedule", "lr_min", "multi_step_loss", "multi_step_loss_steps", "per_step_lr", "per_step_bn")}},
    # The sinusoid MLP has no batch norm: the other switches on MAML's sinusoid setting.
    "sinusoid": dict(MAML_PRESETS["sinusoid"], inner_steps=5, eval_inner_steps=5, lr_schedule="cosine", lr_min=1e-5,
                     multi_step_loss=True, multi_step_loss_steps=5000, per_step_lr=True, per_step_bn=False,
                     first_order_steps=35000),
    # The authors' released configuration (experiment_config/mini-imagenet_maml++-mini-imagenet_1_2_0.01_48_5_0.json,
    # github.com/AntreasAntoniou/HowToTrainYourMAMLPytorch; the 5-shot file differs only in the shots): Conv-4 with
    # 48 filters and max-pooling; 5 inner steps in training and at test, initial inner step 0.01 learned per layer
    # and step; per-step batch-norm weights; meta-batch 2; 15 targets per class; Adam 1e-3 (the config's cosine
    # schedule has min_learning_rate = meta_learning_rate = 0.001, i.e. constant); 100 epochs of 500 steps; the
    # multi-step loss annealed over the first 15 epochs; second order throughout (first_order_to_second_order_epoch
    # -1).
    "mini-imagenet": dict(network="conv4-48", query=15, meta_batch_size=2, inner_lr=0.01, inner_steps=5,
                          eval_inner_steps=5, lr=1e-3, steps=50000, val_every=500, multi_step_loss=True,
                          multi_step_loss_steps=7500, per_step_lr=True, per_step_bn=True, first_order_steps=0),
}
# fmt: on


def build(config: Any) -> MAMLPlusPlus:
    """MAML++ with the switches the configuration turns on (also for `--algorithm maml` with one of them)."""
    switches = ("multi_step_loss", "multi_step_loss_steps", "per_step_lr", "per_step_bn", "first_order_steps")
    return MAMLPlusPlus(
        network_for(config), **inner_loop_settings(config), **{name: getattr(config, name) for name in switches}
    )


register(
    Algorithm(
        name="maml++",
        listing=1,
        family="optimization",
        summary="MAML++ (Antoniou et al. 2019): MSL, LSLR, BNWB, DOA switches on MAML (--no-<switch> turns one off)",
        options=MAMLPlusPlusOptions,
        build=build,
        presets=PRESETS,
    )
)
