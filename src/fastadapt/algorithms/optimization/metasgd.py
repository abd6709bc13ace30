"""Meta-SGD: Learning to Learn Quickly for Few-Shot Learning (Li, Zhou, Chen & Li, arXiv:1707.09835, 2017).

MAML with a learned learning rate for every scalar parameter. Inner loop, eq. (1) of the paper::

    theta'_i = theta - alpha o grad_theta L_{T_i}^{support}(f_theta)      (o: element-wise product)

where ``alpha`` has the shape of ``theta`` (one tensor per parameter tensor), so it encodes both a
step size and an update direction. Outer loop, eq. (2): ``theta`` and ``alpha`` are meta-learned
jointly on the query losses::

    (theta, alpha) <- (theta, alpha) - beta * grad_{theta, alpha} sum_i L_{T_i}^{query}(f_{theta'_i})

Everything else is MAML's (second order by default, ``first_order``, ``strategy``); only the learning
rate differs. ``alpha`` starts at ``inner_lr`` everywhere (the paper draws it from U[0.005, 0.1]); at
that starting point the meta-gradient with respect to ``theta`` is exactly MAML's (tested). With
``first_order=True`` ``alpha`` still gets a gradient, ``-grad L^support o grad L^query(theta')``
for one step, since ``theta'`` depends on ``alpha`` directly. The paper adapts with one step.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from fastadapt.algorithms.optimization.maml import MAML, InnerLoopOptions, inner_loop_settings, network_for
from fastadapt.algorithms.optimization.maml import PRESETS as MAML_PRESETS
from fastadapt.algorithms.registry import Algorithm, register
from fastadapt.engine.functional import parameter_key, parameters_of


class MetaSGD(MAML):
    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 0.01,
        inner_steps: int = 1,
        first_order: bool = False,
        eval_inner_steps: int | None = None,
        strategy: str = "loop",
        **execution: Any,
    ) -> None:
        """``execution``: the engine's settings (``vmap_chunk``, ``workers``, ``channels_last``, ``compile``,
        ``fast_layers``), which change the meta-gradient's cost, not its value."""
        super().__init__(model, inner_lr, inner_steps, first_order, eval_inner_steps, strategy, **execution)
        #: alpha: one learned learning-rate tensor per parameter tensor, same shape, meta-parameters.
        self.inner_lrs = nn.ParameterDict(
            {
                parameter_key(name): nn.Parameter(torch.full_like(p, inner_lr))
                for name, p in parameters_of(self.model).items()
            }
        )

    def inner_learning_rate(self, step: int = 0) -> dict[str, Tensor]:
        """alpha as a mapping parameter name -> tensor: MAML's eq. (1) then computes theta'_i = theta - alpha o grad."""
        return {name: self.inner_lrs[parameter_key(name)] for name in self.theta()}


class MetaSGDOptions(InnerLoopOptions):
    """Meta-SGD takes MAML's settings; ``inner_lr`` is alpha's starting value."""


def build(config: Any) -> MetaSGD:
    return MetaSGD(network_for(config), **inner_loop_settings(config))


register(
    Algorithm(
        name="metasgd",
        listing=2,
        family="optimization",
        summary="Meta-SGD (Li et al. 2017): a learned inner learning rate per weight",
        options=MetaSGDOptions,
        build=build,
        # MAML's set-up with one adaptation step at test as well as in training (the paper adapts with one step).
        # On mini-ImageNet the paper builds on MAML's protocol; the values other than the one step (Conv-4 with 32
        # filters, meta-batch, 15 queries, Adam 1e-3, 60000 steps) are MAML's, not restated from the Meta-SGD paper.
        presets={
            dataset: {**MAML_PRESETS[dataset], "inner_steps": 1, "eval_inner_steps": 1}
            for dataset in ("omniglot", "sinusoid", "mini-imagenet", "linear")
        },
    )
)
