"""MAML: Model-Agnostic Meta-Learning (Finn, Abbeel & Levine, ICML 2017), with the MAML++ switches of
Antoniou, Edwards & Storkey, "How to train your MAML" (ICLR 2019).

Inner loop, eq. (1), for each task T_i from the shared initialisation theta::

    theta'_i = theta - alpha * grad_theta L_{T_i}^{support}(f_theta)        (repeated ``inner_steps`` times)

Outer loop, eq. (3), on the query sets::

    theta <- theta - beta * grad_theta sum_i L_{T_i}^{query}(f_{theta'_i})

The meta-gradient flows through the inner updates (second order). ``first_order=True`` is the
paper's first-order approximation (FOMAML): the inner gradients are treated as constants, which drops
the Hessian-vector terms. Inner loops run per task, vectorised across tasks with ``vmap``, or as one network pass
for a chunk of tasks folded into its channels (``strategy``; fastadapt.folding).

MAML++ (Antoniou et al. 2019, section 4), each a switch that is off by default; all off is plain MAML:

- ``multi_step_loss`` (MSL): the meta-loss is ``sum_j v_j L^query(f_{theta_i^(j)})`` over the weights after
  every inner step j = 1..N, not only the last. The importance weights v start uniform (1/N) and are
  annealed linearly over ``multi_step_loss_steps`` outer steps towards the last step (earlier steps down
  to 0.03/N each, the last up to 1 - (N-1) * 0.03/N), as in the authors' code; afterwards only the last
  step's loss counts. The paper anneals per epoch of 500 outer steps; here the progress is per step.
- ``per_step_lr`` (LSLR, "learning per-layer per-step learning rates"): alpha becomes one learned scalar
  for every parameter tensor and every inner step, initialised to ``inner_lr`` and meta-learned with
  theta. For an evaluation with more inner steps than in training the last step's rates are reused.
- ``per_step_bn`` (BNWB, "per-step batch normalisation weights and biases"): every batch-norm layer gets
  one weight and bias vector per inner step (initialised from the layer's own); the forward pass of inner
  step j (and the query pass after step j's update) uses set j. As in the authors' code (their
  ``enable_inner_loop_optimizable_bn_params: false``) these are meta-learned but not adapted in the inner
  loop, so the layer's own weight and bias are unused and frozen. Per-step running statistics (BNRS) are
  not kept: our batch norm normalises with the statistics of the batch it is given (MAML's reference
  code), and the authors' code, which collects per-step running statistics, also normalises with batch
  statistics (``F.batch_norm(..., training=True)``), so collecting them would not change any output.
- ``first_order_steps`` (DOA, "derivative-order annealing"): the first ``first_order_steps`` outer steps
  use the first-order approximation, then second order (the paper: first order for 50 epochs).
- Cosine annealing of the outer learning rate (CA) is the trainer's ``lr_schedule="cosine"``
  (:func:`fastadapt.train.outer_optimizer`), not part of the learner.

The trainer sets :attr:`MAML.training_step` before each outer step; the MSL and DOA schedules read it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.modules.batchnorm import _BatchNorm

from fastadapt.algorithms.base import MetaLearner, MetaOutput, per_task_losses, task_loss
from fastadapt.errors import ConfigError
from fastadapt.fastlayers import with_fast_layers
from fastadapt.folding import FoldedNetwork, NotFoldable, fold_params
from fastadapt.functional import (
    Params,
    Strategy,
    call,
    inner_sgd_trajectory,
    map_tasks,
    parameter_key,
    parameters_of,
)
from fastadapt.nets.layers import EpisodeBatchNorm2d
from fastadapt.taskpool import available_workers, concurrent_gradients, map_parts, timing_dependent_modules
from fastadapt.tasks.episodes import TaskBatch

#: MAML++'s floor on the weight of each non-final step's query loss, times the number of steps.
MSL_MIN_CONTRIBUTION = 0.03


def multi_step_loss_weights(steps: int, progress: float) -> list[float]:
    """MSL importance weights v_1..v_N after ``progress`` (0 to 1) of the annealing: uniform at 0, each
    earlier step decayed linearly to 0.03/N and the last grown to 1 - (N-1) * 0.03/N at 1; they sum to 1."""
    progress = min(max(progress, 0.0), 1.0)
    floor = MSL_MIN_CONTRIBUTION / steps
    earlier = [max(1.0 / steps - progress / steps, floor)] * (steps - 1)
    last = min(1.0 / steps + progress * (steps - 1) / steps, 1.0 - (steps - 1) * floor)
    return [*earlier, last]


def batch_norm_layers(model: nn.Module) -> list[str]:
    """Names of the model's batch-norm layers that have a weight and a bias."""
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, (EpisodeBatchNorm2d, _BatchNorm)) and getattr(module, "weight", None) is not None
    ]


def _add_to_grads(params: Iterable[Tensor], grads: Iterable[Tensor | None]) -> None:
    """What ``backward()`` does with gradients computed elsewhere: add each to ``.grad`` (None: unused)."""
    for p, grad in zip(params, grads):
        if grad is not None:
            p.grad = grad if p.grad is None else p.grad + grad


class MAML(MetaLearner):
    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 0.4,
        inner_steps: int = 1,
        first_order: bool = False,
        eval_inner_steps: int | None = None,
        strategy: Strategy = "loop",
        *,
        multi_step_loss: bool = False,
        multi_step_loss_steps: int = 0,
        per_step_lr: bool = False,
        per_step_bn: bool = False,
        first_order_steps: int = 0,
        vmap_chunk: int | None = None,
        compile: bool = False,
        workers: int | None = None,
        fast_layers: bool = True,
        channels_last: bool | None = None,
    ) -> None:
        super().__init__()
        #: With ``fast_layers``, torch's layers that fastadapt has an exact, faster (and vmap-safe) equivalent for
        #: are swapped in; the parameters, and their names, stay the model's own (fastadapt.fastlayers).
        model = with_fast_layers(model) if fast_layers else model
        self.model = model
        self.inner_lr = inner_lr
        self.inner_steps = inner_steps
        self.first_order = first_order
        self.eval_inner_steps = inner_steps if eval_inner_steps is None else eval_inner_steps
        self.strategy = strategy
        #: With vmap, tasks per vectorised call (0: all); each chunk is backpropagated before the next, so
        #: peak memory is one chunk's graph. None: see :meth:`tasks_per_call`. Fold's chunks too.
        self.vmap_chunk = vmap_chunk
        if vmap_chunk is not None and vmap_chunk < 0:
            raise ConfigError(f"--vmap-chunk must be a number of tasks >= 0 (0: all at once), not {vmap_chunk}.")
        self.multi_step_loss = multi_step_loss
        self.multi_step_loss_steps = multi_step_loss_steps
        self.per_step_lr = per_step_lr
        self.per_step_bn = per_step_bn
        self.first_order_steps = first_order_steps
        #: torch.compile the meta-gradient of each chunk of tasks (one task with the loop); see _compiled_backward.
        self.compile = compile
        #: Chunks of tasks (single tasks with the loop) run side by side on this many threads, one core each
        #: (fastadapt.taskpool). None: measured, like strategy="auto" (fastadapt.strategy); one until then.
        self.workers = workers
        if workers is not None and workers < 1:
            raise ConfigError(f"--workers must be at least 1 (or left out, to have it measured), not {workers}.")
        #: Image batches are copied to channels-last layout before the inner loops (TaskBatch.channels_last), where
        #: oneDNN's convolutions, torch's batch norm and max pooling run faster on a CPU. None: measured, like
        #: ``workers`` (fastadapt.strategy); the standard layout until then.
        self.channels_last = channels_last
        self._compiled_gradient: Callable[..., tuple[Params, tuple[Tensor, Tensor]]] | None = None
        self._folded: FoldedNetwork | str | None = None  # built on first use; a str says why it cannot be
        #: Names of theta's tensors while a compiled trace runs, where ``requires_grad`` cannot pick them.
        self._theta_names: tuple[str, ...] | None = None
        if strategy == "fold":
            self.folded_network()  # refuses a network that cannot fold, naming why
        if strategy == "fold" and compile:
            raise ConfigError("--compile traces vmap's program; use --strategy vmap, loop or auto with it, not fold.")
        if (multi_step_loss or per_step_lr or per_step_bn) and inner_steps < 1:
            raise ConfigError("MAML++'s multi-step loss and per-step settings need --inner-steps of at least 1.")
        if multi_step_loss and multi_step_loss_steps < 1:
            raise ConfigError(
                f"the multi-step loss anneals over --multi-step-loss-steps outer steps, which must be at least 1 "
                f"(got {multi_step_loss_steps})."
            )
        if per_step_bn:
            layers = batch_norm_layers(model)
            if not layers:
                raise ConfigError(
                    "--per-step-bn needs a network with batch-norm layers (conv4, conv4-stride); this one has none."
                )
            own = dict(model.named_parameters())
            names = [f"{layer}.{kind}" for layer in layers for kind in ("weight", "bias")]
            self.step_bn_names = names
            #: BNWB: one row per inner step for every batch-norm weight and bias, shape (inner_steps, C).
            self.step_bn_params = nn.ParameterDict(
                {parameter_key(n): nn.Parameter(own[n].detach().clone().expand(inner_steps, -1).clone()) for n in names}
            )
            for n in names:  # replaced by the per-step rows; frozen so that no optimiser or inner loop sees them
                own[n].requires_grad_(False)
        if per_step_lr:
            #: LSLR: one learning rate per parameter tensor and inner step, shape (inner_steps,).
            self.step_lrs = nn.ParameterDict(
                {
                    parameter_key(n): nn.Parameter(torch.full((inner_steps,), float(inner_lr), dtype=p.dtype))
                    for n, p in parameters_of(model).items()
                }
            )

    def theta(self) -> Params:
        """The network's meta-learned weights: its trainable parameters, or inside ``functional_call``
        the tensors standing in for them."""
        if self._theta_names is None:
            return parameters_of(self.model)
        params = dict(self.model.named_parameters())
        return {name: params[name] for name in self._theta_names}

    def inner_learning_rate(self) -> float | dict[str, Tensor]:
        """alpha of eq. (1): a fixed scalar here; Meta-SGD learns one per parameter."""
        return self.inner_lr

    def step_learning_rate(self, step: int) -> float | dict[str, Tensor]:
        """alpha for inner step ``step`` (0-based): per parameter tensor and step with LSLR."""
        if not self.per_step_lr:
            return self.inner_learning_rate()
        row = min(step, self.inner_steps - 1)
        return {name: self.step_lrs[parameter_key(name)][row] for name in self.theta()}

    def fold_problem(self) -> str | None:
        """Why ``strategy="fold"`` cannot run this learner's network (fastadapt.folding); None where it can."""
        if self._folded is None:
            try:
                self._folded = FoldedNetwork(self.model)
            except NotFoldable as error:
                self._folded = str(error)
        return self._folded if isinstance(self._folded, str) else None

    def folded_network(self) -> FoldedNetwork:
        """The network for ``strategy="fold"``; a ConfigError that says why where it cannot fold."""
        problem = self.fold_problem()
        if problem is not None:
            raise ConfigError(f"--strategy fold cannot run this network: {problem}. Use loop, vmap or auto.")
        assert isinstance(self._folded, FoldedNetwork)
        return self._folded

    def network(self, params: Params, x: Tensor, step: int, folded: bool = False) -> Tensor:
        """The network with weights ``params`` on ``x`` in inner step ``step`` (0-based; with BNWB, the
        step picks the batch-norm weights: the last set for steps beyond the training steps). ``folded``: a chunk
        of tasks at once, ``x`` (tasks, examples, ...) and each task's weights stacked (fastadapt.folding)."""
        if self.per_step_bn:
            row = min(step, self.inner_steps - 1)
            params = {**params, **{n: self.step_bn_params[parameter_key(n)][row] for n in self.step_bn_names}}
        if folded:
            return self.folded_network()(params, x, channels_last=bool(self.channels_last))
        return call(self.model, params, x)

    def adapt_trajectory(
        self,
        support_x: Tensor,
        support_y: Tensor,
        steps: int,
        first_order: bool,
        vectorised: bool = False,
        folded: bool = False,
    ) -> list[Params]:
        """[theta, theta_i^(1), ..., theta_i^(steps)]: the weights after every inner step (eq. 1). ``folded``: of
        every task of the chunk at once, stacked; the gradient of the sum of the tasks' losses is each task's own."""
        if folded:
            support_loss = lambda params, step: per_task_losses(
                self.network(params, support_x, step, folded=True), support_y
            ).sum()
        else:
            support_loss = lambda params, step: task_loss(self.network(params, support_x, step), support_y)
        with torch.enable_grad():  # the stacked views too: evaluation, under no_grad, adapts as well
            start = fold_params(self.theta(), support_x.shape[0]) if folded else self.theta()
        return inner_sgd_trajectory(
            support_loss,
            start,
            steps,
            self.step_learning_rate,
            first_order=first_order,
            vectorised=vectorised,
        )

    def adapt(
        self, support_x: Tensor, support_y: Tensor, steps: int, first_order: bool, vectorised: bool = False
    ) -> Params:
        """theta'_i: ``steps`` gradient steps on one task's support loss (eq. 1)."""
        return self.adapt_trajectory(support_x, support_y, steps, first_order, vectorised)[-1]

    def _query_pass(self, params: Params, query_x: Tensor, steps_done: int, folded: bool = False) -> Tensor:
        # MAML++'s code scores the query set after step j's update with step j's batch-norm weights.
        return self.network(params, query_x, max(steps_done - 1, 0), folded)

    def _adapted_query(
        self, batch: TaskBatch, steps: int, first_order: bool, strategy: Strategy
    ) -> tuple[Tensor, Tensor]:
        if strategy == "fold":
            fast = self.adapt_trajectory(batch.support_x, batch.support_y, steps, first_order, folded=True)[-1]
            predictions = self._query_pass(fast, batch.query_x, steps, folded=True)
            return per_task_losses(predictions, batch.query_y), predictions

        def one_task(support_x, support_y, query_x, query_y, vectorised):
            fast = self.adapt(support_x, support_y, steps, first_order, vectorised)
            predictions = self._query_pass(fast, query_x, steps)
            return task_loss(predictions, query_y), predictions

        return map_tasks(one_task, (batch.support_x, batch.support_y, batch.query_x, batch.query_y), strategy)

    def _multi_step_query(
        self, batch: TaskBatch, steps: int, first_order: bool, weights: Sequence[float] | Tensor, strategy: Strategy
    ) -> tuple[Tensor, Tensor]:
        """MSL: sum_j v_j L^query(theta_i^(j)) per task, and the query predictions after the last step."""
        if strategy == "fold":
            trajectory = self.adapt_trajectory(batch.support_x, batch.support_y, steps, first_order, folded=True)
            losses = 0.0
            for done, (weight, fast) in enumerate(zip(weights, trajectory[1:]), start=1):
                predictions = self._query_pass(fast, batch.query_x, done, folded=True)
                losses = losses + weight * per_task_losses(predictions, batch.query_y)
            return losses, predictions

        def one_task(support_x, support_y, query_x, query_y, vectorised):
            trajectory = self.adapt_trajectory(support_x, support_y, steps, first_order, vectorised)
            loss = 0.0
            for done, (weight, fast) in enumerate(zip(weights, trajectory[1:]), start=1):
                predictions = self._query_pass(fast, query_x, done)
                loss = loss + weight * task_loss(predictions, query_y)
            return loss, predictions

        return map_tasks(one_task, (batch.support_x, batch.support_y, batch.query_x, batch.query_y), strategy)

    def step_loss_weights(self) -> list[float] | None:
        """MSL's importance weights at the current training step, or None once only the last step counts."""
        if not self.multi_step_loss or self.training_step >= self.multi_step_loss_steps:
            return None
        return multi_step_loss_weights(self.inner_steps, self.training_step / self.multi_step_loss_steps)

    def schedule_phases(self) -> list[int]:
        """Step 0, and where DOA turns to second order and where MSL's annealing ends."""
        return sorted({0, self.first_order_steps, self.multi_step_loss_steps})

    def gradient_probe(self) -> MAML:
        compiled, self._compiled_gradient = self._compiled_gradient, None  # a compiled program is not copied
        try:
            probe = super().gradient_probe()
        finally:
            self._compiled_gradient = compiled
        probe.compile, probe.workers = False, 1  # the compiled program computes eager vmap's gradient
        return probe

    def uses_first_order(self) -> bool:
        """FOMAML, or DOA's first-order phase."""
        return self.first_order or self.training_step < self.first_order_steps

    def laid_out(self, batch: TaskBatch) -> TaskBatch:
        """``batch`` in the layout the inner loops run in: channels-last images with ``channels_last``."""
        return batch.channels_last() if self.channels_last else batch

    def meta_loss(self, batch: TaskBatch) -> MetaOutput:
        return self(self.laid_out(batch), self.strategy, self.uses_first_order(), self.step_loss_weights())

    def forward(
        self,
        batch: TaskBatch,
        strategy: Strategy,
        first_order: bool,
        step_weights: Sequence[float] | Tensor | None = None,
    ) -> MetaOutput:
        """The meta-loss with the schedules' values passed in (so a compiled trace depends on them, not on
        the step counter): the first-order switch and MSL's weights (None: the last step's loss only)."""
        if step_weights is None:
            query_losses, predictions = self._adapted_query(batch, self.inner_steps, first_order, strategy)
        else:
            query_losses, predictions = self._multi_step_query(
                batch, self.inner_steps, first_order, step_weights, strategy
            )
        return MetaOutput(query_losses.mean(), predictions)  # eq. (3): mean over the meta-batch

    def tasks_per_call(self) -> int:
        """Tasks per network pass (0: all): one for the loop; with vmap or fold, ``vmap_chunk`` if given, else 8
        tasks in flight, or 4 for second order over several inner steps, whose graph grows with the steps, or 16
        for one first-order step, shared by the workers, so that the tasks in flight, and the memory they hold, stay
        the same. Measured on Omniglot (docs/RESULTS.md, speed section). vmap: 8 was as fast as the whole meta-batch
        of 32 at 0.66x its memory; at 5 second-order steps 8 took 1.75x the memory of a per-task loop, 4 took 1.37x
        and was 5% slower; at one first-order step 16 on two workers was about 10% faster than 8 for 30-45 MiB
        more. Fold, two workers: 8 tasks per worker were 7-9% faster than 4, for 27-58 MiB more, which put the
        benchmark's peak memory at up to 1.51x learn2learn's (one step, second order); at 5 second-order steps, 4
        per worker were 1.26x faster than 2, and 1.68x learn2learn's peak memory."""
        if self.strategy not in ("vmap", "fold"):
            return 1
        if self.vmap_chunk is not None:
            return self.vmap_chunk
        first_order = self.uses_first_order()
        in_flight = (
            16 if first_order and self.inner_steps == 1 else 4 if self.inner_steps > 1 and not first_order else 8
        )
        return max(1, in_flight // self.task_workers())

    def task_workers(self) -> int:
        """How many chunks of tasks run at once: ``workers``; one until :func:`fastadapt.strategy.choose_strategy`
        has measured one against :meth:`most_workers` (``workers=None``)."""
        return 1 if self.workers is None else self.workers

    def most_workers(self) -> int:
        """The workers worth measuring: one per CPU thread, but one on a GPU, for the compiled program, and for a
        network with dropout or running batch-norm statistics, whose random draws or buffer updates would
        otherwise follow thread timing (runs must repeat exactly)."""
        if self.compile or timing_dependent_modules(self.model):
            return 1
        return available_workers(next(self.parameters()).device)

    def meta_backward(self, batch: TaskBatch) -> MetaOutput:
        batch = self.laid_out(batch)  # once for the whole batch: its parts are views
        chunk = self.tasks_per_call() or batch.num_tasks
        if chunk >= batch.num_tasks and not self.compile:
            return super().meta_backward(batch)
        # The meta-loss is a mean over tasks, so each chunk's graph (its inner loops and second-order
        # terms) can be freed after its own backward pass: peak memory of one chunk (one task for loop).
        parts = batch.chunks(chunk)
        if self.task_workers() > 1 and not self.compile:
            return self._concurrent_backward(parts, batch.num_tasks)
        backward = self._compiled_backward if self.compile else self._eager_backward
        total, predictions = 0.0, []
        for part in parts:
            weight = part.num_tasks / batch.num_tasks
            loss, part_predictions = backward(part, weight)
            total = total + loss * weight
            predictions.append(part_predictions)
        return MetaOutput(total, torch.cat(predictions))

    def _eager_backward(self, part: TaskBatch, weight: float) -> tuple[Tensor, Tensor]:
        """Adds ``weight`` x the meta-gradient of ``part`` to ``.grad``; returns its loss and predictions."""
        output = self.meta_loss(part)
        (output.loss * weight).backward()
        return output.loss.detach(), output.predictions.detach()

    def _concurrent_backward(self, parts: list[TaskBatch], num_tasks: int) -> MetaOutput:
        """:meth:`_eager_backward` of every part, the parts spread over :meth:`task_workers` threads."""
        trainable = parameters_of(self)

        def weighted_loss(learner: MAML, part: TaskBatch) -> tuple[Tensor, tuple[Tensor, Tensor]]:
            output = learner.meta_loss(part)
            weighted = output.loss * (part.num_tasks / num_tasks)
            return weighted, (weighted.detach(), output.predictions.detach())

        grads, outputs = concurrent_gradients(self, list(trainable.values()), parts, weighted_loss, self.task_workers())
        _add_to_grads(trainable.values(), grads)
        losses, predictions = zip(*outputs)
        return MetaOutput(sum(losses), torch.cat(predictions))

    def _compiled_backward(self, part: TaskBatch, weight: float) -> tuple[Tensor, Tensor]:
        """:meth:`_eager_backward` through ``torch.compile``: the chunk's meta-gradient is one functional
        program, ``torch.func.grad`` of the meta-loss whose inner loops are ``torch.func.grad`` too, vectorised
        over the chunk's tasks (one task with the loop strategy). Inductor then fuses the elementwise work
        around the convolutions (batch norm, ReLU, pooling, the SGD updates) that eager mode runs pass by pass.
        The first call compiles (tens of seconds to minutes); so does a new shape, first-order switch or
        MSL phase. Gradients are the eager ones to float32 rounding (tested)."""
        if self._compiled_gradient is None:

            def chunk_gradient(params, part, first_order, step_weights):
                def loss(params):
                    output = functional_call(self, params, (part, "vmap", first_order, step_weights))
                    return output.loss, (output.loss, output.predictions)

                return torch.func.grad(loss, has_aux=True)(params)

            self._compiled_gradient = torch.compile(chunk_gradient, dynamic=False)
        trainable = parameters_of(self)
        weights = self.step_loss_weights()
        weights = None if weights is None else torch.tensor(weights)
        self._theta_names = tuple(parameters_of(self.model))
        try:
            params = {name: p.detach() for name, p in trainable.items()}
            grads, (loss, predictions) = self._compiled_gradient(params, part, self.uses_first_order(), weights)
        finally:
            self._theta_names = None
        _add_to_grads(trainable.values(), [grads[name] * weight for name in trainable])
        return loss.detach(), predictions.detach()

    def predict(self, batch: TaskBatch, steps: int | None = None) -> Tensor:
        steps = self.eval_inner_steps if steps is None else steps
        batch = self.laid_out(batch)
        workers = self.task_workers()
        if workers > 1 and batch.num_tasks > 1:
            chunk = -(-batch.num_tasks // workers)  # one share per worker: vmap keeps its batching
            parts = batch.chunks(chunk)
            return torch.cat(map_parts(self, parts, lambda learner, part: learner._predict(part, steps), workers))
        return self._predict(batch, steps)

    def _predict(self, batch: TaskBatch, steps: int) -> Tensor:
        # No meta-gradient is needed at test time, so the inner loop need not be differentiable.
        _, predictions = self._adapted_query(batch, steps, first_order=True, strategy=self.strategy)
        return predictions.detach()

    def extra_repr(self) -> str:
        text = (
            f"inner_lr={self.inner_lr}, inner_steps={self.inner_steps}, first_order={self.first_order}, "
            f"eval_inner_steps={self.eval_inner_steps}, strategy={self.strategy!r}"
        )
        if self.multi_step_loss:
            text += f", multi_step_loss_steps={self.multi_step_loss_steps}"
        switches = [name for name in ("per_step_lr", "per_step_bn") if getattr(self, name)]
        if self.first_order_steps:
            switches.append(f"first_order_steps={self.first_order_steps}")
        if self.compile:
            switches.append("compile")
        if self.workers is not None:
            switches.append(f"workers={self.workers}")
        if self.channels_last is not None:
            switches.append(f"channels_last={self.channels_last}")
        return ", ".join([text, *switches])
