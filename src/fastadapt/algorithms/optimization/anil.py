"""ANIL: Almost No Inner Loop (Raghu, Raghu, Bengio & Vinyals, "Rapid Learning or Feature Reuse?
Towards Understanding the Effectiveness of MAML", ICLR 2020).

The network is split into a body ``phi`` (every parameter outside the head) and a head ``w`` (the
parameters of the submodule named by ``head``, by default ``head.``). Only the head is adapted, section
4 of the paper::

    w'_i = w - alpha * grad_w L_{T_i}^{support}(w; phi)               (repeated ``inner_steps`` times)
    (phi, w) <- (phi, w) - beta * grad_{phi, w} sum_i L_{T_i}^{query}(w'_i; phi)

Since the body does not change in the inner loop, its features are computed once per task (one pass
over the support set, one over the query set) and the inner loop runs on the head alone; the body's
meta-gradient flows through those features (and, second order, through the inner head updates that
depend on the support features). ``first_order=True`` treats the inner gradients as constants. The
paper uses MAML's hyper-parameters. The head must be the network's last module: its output is the
network's output (checked), its input the "features".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from fastadapt.algorithms.base import task_loss
from fastadapt.algorithms.optimization.maml import MAML
from fastadapt.functional import Params, Strategy, call, inner_sgd, map_tasks, parameters_of
from fastadapt.tasks.episodes import TaskBatch


class ANIL(MAML):
    """MAML whose inner loop adapts only the head; everything else (meta_loss, predict) is MAML's."""

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 0.4,
        inner_steps: int = 1,
        first_order: bool = False,
        eval_inner_steps: int | None = None,
        strategy: Strategy = "loop",
        head: str = "head.",
        **speed: Any,
    ) -> None:
        """``speed``: MAML's settings of how the meta-gradient is computed (``vmap_chunk``, ``compile``, ``workers``,
        ``fast_layers``, ``channels_last``), which change its cost, not its value."""
        super().__init__(model, inner_lr, inner_steps, first_order, eval_inner_steps, strategy, **speed)
        self.head_name = head.rstrip(".")
        try:
            model.get_submodule(self.head_name)
        except AttributeError:
            raise ValueError(
                f"ANIL's head {head!r} is not a submodule of the network; pass head=<name of its last layer> "
                f"(e.g. head='4.' for MLP(1, (40, 40), 1))."
            ) from None
        self.head_prefix = self.head_name + "."
        if not any(name.startswith(self.head_prefix) for name in parameters_of(model)):
            raise ValueError(f"ANIL's head {head!r} has no trainable parameters to adapt.")

    def fold_problem(self) -> str | None:
        return "ANIL adapts the head alone, on features computed once (its loop and vmap are cheap already)"

    @property
    def head(self) -> nn.Module:
        # Looked up, not stored: an attribute would register the head twice in the state dict.
        return self.model.get_submodule(self.head_name)

    def split(self, params: Mapping[str, Tensor]) -> tuple[Params, Params]:
        """(body, head) parameters; head names are relative to the head module (``weight``, ``bias``)."""
        body = {k: v for k, v in params.items() if not k.startswith(self.head_prefix)}
        head = {k[len(self.head_prefix) :]: v for k, v in params.items() if k.startswith(self.head_prefix)}
        return body, head

    def features(self, params: Mapping[str, Tensor], x: Tensor) -> Tensor:
        """The head's input when the network runs on ``x`` with ``params`` (one pass of the body)."""
        seen: dict[str, Tensor] = {}

        def record(module, inputs, output):
            seen["input"], seen["output"] = inputs[0], output

        handle = self.head.register_forward_hook(record)
        try:
            output = call(self.model, params, x)
        finally:
            handle.remove()
        if seen.get("output") is not output:
            raise ValueError(
                f"ANIL needs the head {self.head_name!r} to be the network's last module (its output the "
                f"network's output); it adapts the head on precomputed features."
            )
        return seen["input"]

    def adapt_head(
        self, features: Tensor, support_y: Tensor, steps: int, first_order: bool, vectorised: bool = False
    ) -> Params:
        """w'_i: ``steps`` gradient steps of the head alone on the support set's features."""
        _, head = self.split(self.theta())
        support_loss = lambda w: task_loss(call(self.head, w, features), support_y)
        return inner_sgd(support_loss, head, steps, self.inner_lr, first_order=first_order, vectorised=vectorised)

    def adapt(
        self, support_x: Tensor, support_y: Tensor, steps: int, first_order: bool, vectorised: bool = False
    ) -> Params:
        """All adapted parameters of one task: the body's are theta's own tensors, the head's are w'_i."""
        theta = self.theta()
        body, _ = self.split(theta)
        fast_head = self.adapt_head(self.features(theta, support_x), support_y, steps, first_order, vectorised)
        return {**body, **{self.head_prefix + k: v for k, v in fast_head.items()}}

    def _adapted_query(
        self, batch: TaskBatch, steps: int, first_order: bool, strategy: Strategy
    ) -> tuple[Tensor, Tensor]:
        theta = self.theta()

        def one_task(support_x, support_y, query_x, query_y, vectorised):
            support_features = self.features(theta, support_x)  # the body runs once per set, not per step
            query_features = self.features(theta, query_x)
            fast_head = self.adapt_head(support_features, support_y, steps, first_order, vectorised)
            predictions = call(self.head, fast_head, query_features)
            return task_loss(predictions, query_y), predictions

        return map_tasks(one_task, (batch.support_x, batch.support_y, batch.query_x, batch.query_y), strategy)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, head={self.head_name!r}"
