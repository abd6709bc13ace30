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

from fastadapt.algorithms.optimization.maml import MAML
from fastadapt.functional import Strategy, parameter_key, parameters_of


class MetaSGD(MAML):
    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 0.01,
        inner_steps: int = 1,
        first_order: bool = False,
        eval_inner_steps: int | None = None,
        strategy: Strategy = "loop",
        **speed: Any,
    ) -> None:
        """``speed``: MAML's settings of how the meta-gradient is computed (``vmap_chunk``, ``compile``, ``workers``,
        ``fast_layers``, ``channels_last``), which change its cost, not its value."""
        super().__init__(model, inner_lr, inner_steps, first_order, eval_inner_steps, strategy, **speed)
        #: alpha: one learned learning-rate tensor per parameter tensor, same shape, meta-parameters.
        self.inner_lrs = nn.ParameterDict(
            {
                parameter_key(name): nn.Parameter(torch.full_like(p, inner_lr))
                for name, p in parameters_of(model).items()
            }
        )

    def inner_learning_rate(self) -> dict[str, Tensor]:
        """alpha as a mapping parameter name -> tensor, the form ``inner_sgd`` takes as ``lr``; MAML's
        ``adapt`` then computes theta'_i = theta - alpha o grad (eq. 1)."""
        return {name: self.inner_lrs[parameter_key(name)] for name in self.theta()}
