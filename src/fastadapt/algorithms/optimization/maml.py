"""MAML: Model-Agnostic Meta-Learning (Finn, Abbeel & Levine, ICML 2017).

Inner loop, eq. (1), for each task T_i from the shared initialisation theta::

    theta'_i = theta - alpha * grad_theta L_{T_i}^{support}(f_theta)        (repeated ``inner_steps`` times)

Outer loop, eq. (3), on the query sets::

    theta <- theta - beta * grad_theta sum_i L_{T_i}^{query}(f_{theta'_i})

The meta-gradient flows through the inner updates (second order). ``first_order=True`` is the
paper's first-order approximation (FOMAML): the inner gradients are treated as constants, which drops
the Hessian-vector terms. Inner loops run per task or vectorised across tasks (``strategy``).
"""

from __future__ import annotations

from torch import Tensor, nn

from fastadapt.algorithms.base import MetaLearner, MetaOutput, task_loss
from fastadapt.functional import Params, Strategy, call, inner_sgd, map_tasks, parameters_of
from fastadapt.tasks.episodes import TaskBatch


class MAML(MetaLearner):
    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 0.4,
        inner_steps: int = 1,
        first_order: bool = False,
        eval_inner_steps: int | None = None,
        strategy: Strategy = "loop",
    ) -> None:
        super().__init__()
        self.model = model
        self.inner_lr = inner_lr
        self.inner_steps = inner_steps
        self.first_order = first_order
        self.eval_inner_steps = inner_steps if eval_inner_steps is None else eval_inner_steps
        self.strategy = strategy

    def inner_learning_rate(self) -> float | dict[str, Tensor]:
        """alpha of eq. (1): a fixed scalar here; Meta-SGD learns one per parameter."""
        return self.inner_lr

    def adapt(
        self, support_x: Tensor, support_y: Tensor, steps: int, first_order: bool, vectorised: bool = False
    ) -> Params:
        """theta'_i: ``steps`` gradient steps on one task's support loss (eq. 1)."""
        support_loss = lambda params: task_loss(call(self.model, params, support_x), support_y)
        return inner_sgd(
            support_loss,
            parameters_of(self.model),
            steps,
            self.inner_learning_rate(),
            first_order=first_order,
            vectorised=vectorised,
        )

    def _adapted_query(self, batch: TaskBatch, steps: int, first_order: bool) -> tuple[Tensor, Tensor]:
        def one_task(support_x, support_y, query_x, query_y, vectorised):
            fast = self.adapt(support_x, support_y, steps, first_order, vectorised)
            predictions = call(self.model, fast, query_x)
            return task_loss(predictions, query_y), predictions

        return map_tasks(one_task, (batch.support_x, batch.support_y, batch.query_x, batch.query_y), self.strategy)

    def meta_loss(self, batch: TaskBatch) -> MetaOutput:
        query_losses, predictions = self._adapted_query(batch, self.inner_steps, self.first_order)
        return MetaOutput(query_losses.mean(), predictions)  # eq. (3): mean over the meta-batch

    def predict(self, batch: TaskBatch, steps: int | None = None) -> Tensor:
        steps = self.eval_inner_steps if steps is None else steps
        # No meta-gradient is needed at test time, so the inner loop need not be differentiable.
        _, predictions = self._adapted_query(batch, steps, first_order=True)
        return predictions.detach()

    def extra_repr(self) -> str:
        return (
            f"inner_lr={self.inner_lr}, inner_steps={self.inner_steps}, first_order={self.first_order}, "
            f"eval_inner_steps={self.eval_inner_steps}, strategy={self.strategy!r}"
        )
