"""The gradient guard: a vectorised strategy runs only where it gives the per-task loop's meta-gradient.

``vmap`` and ``fold`` compute the meta-gradient of a chunk of tasks at once. They are tested exact for fastadapt's
networks, but a user's network may hold a layer whose batched second derivative torch gets wrong: with torch 2.13,
``nn.LayerNorm`` under ``vmap`` gave a second-order MAML meta-gradient 1e-3 (relative, float64) away from the loop's
(bench/vmap_double_backward.py). fastadapt swaps such layers for exact ones (fastadapt.engine.fastlayers), and this
module catches whatever else: before a vectorised strategy trains, the meta-gradient of a few tasks of the first
meta-batch is computed with it and with the per-task loop, in float64 on a copy of the learner, and compared.

float64, because there the two agree to about 1e-15 wherever both are right, while the errors seen were 1e-4 to
4e-3: a tolerance of 1e-8 separates them with room on both sides. In float32 the loop's own rounding (1e-7 to
1e-5 on deep networks) would come close to the smallest of those errors.

``auto`` (fastadapt.engine.strategy.choose_strategy) does not time a candidate that disagrees; an explicit ``--strategy
vmap|fold`` that disagrees stops with an error naming the layer types at fault, found by the same comparison on
each layer alone (:func:`disagreeing_layer_types`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from fastadapt.engine.execution import Learner
from fastadapt.errors import ConfigError
from fastadapt.tasks.episodes import TaskBatch

#: Tasks of the first meta-batch whose meta-gradient is compared: two, so that vmap and fold really batch.
CHECKED_TASKS = 2
#: Largest relative difference (per parameter tensor, float64) that still counts as the same meta-gradient.
TOLERANCE = 1e-8


@dataclass
class GradientCheck:
    """How a strategy's meta-gradient compared with the per-task loop's."""

    strategy: str
    #: ||g - g_loop|| / ||g_loop|| over the whole meta-gradient (the largest over schedule phases); None if it failed
    relative_error: float | None
    #: the same per parameter tensor, the largest (each tensor's norm floored at 1e-6 of the whole gradient's, since a
    #: bias before batch norm has a zero gradient in exact arithmetic): what must stay within :data:`TOLERANCE`
    max_relative_error: float | None
    #: the parameter tensor where that is largest
    parameter: str | None
    #: why the strategy could not run at all (its exception, one line), or None
    error: str | None = None
    #: layer types whose meta-gradient disagrees when each is checked alone (filled in on disagreement)
    layers: tuple[str, ...] = ()
    seconds: float = 0.0

    @property
    def agrees(self) -> bool:
        return self.error is None and self.max_relative_error is not None and self.max_relative_error <= TOLERANCE

    def describe(self) -> str:
        """One phrase for logs and errors: why the strategy was excluded (or that it agreed)."""
        if self.error is not None:
            return f"{self.strategy} failed on this network ({self.error})"
        if self.agrees:
            return f"{self.strategy} agrees with the loop (relative difference {self.relative_error:.1e})"
        layers = f"; layers that disagree alone: {', '.join(self.layers)}" if self.layers else ""
        return (
            f"{self.strategy}'s meta-gradient is {self.relative_error:.1e} (relative) away from the per-task loop's, "
            f"most at {self.parameter!r}{layers}"
        )

    def record(self) -> dict:
        """The check as a JSON-ready dict, for the log and the checkpoint."""
        return {**asdict(self), "layers": list(self.layers), "agrees": self.agrees, "reason": self.describe()}


def _first_tasks(batch: TaskBatch) -> TaskBatch:
    return batch.tasks(0, min(CHECKED_TASKS, batch.num_tasks)).with_dtype(torch.float64)


def _meta_gradient(probe: Learner, batch: TaskBatch, strategy: str, step: int) -> dict[str, Tensor]:
    probe.strategy = strategy
    probe.training_step = step
    probe.zero_grad(set_to_none=True)
    probe.meta_backward(batch)
    return {
        name: torch.zeros_like(p) if p.grad is None else p.grad.clone()
        for name, p in probe.named_parameters()
        if p.requires_grad
    }


def _differences(gradients: dict[str, Tensor], reference: dict[str, Tensor]) -> tuple[float, float, str | None]:
    """||g - g_ref|| / ||g_ref|| over all tensors; the largest of the same per tensor, each norm floored at 1e-6 of
    the whole gradient's (GradientCheck.max_relative_error); and the tensor where that is. NaN counts as largest."""
    total = torch.sqrt(sum(g.square().sum() for g in reference.values())).item()
    floor = max(1e-6 * total, torch.finfo(torch.float64).tiny)
    difference = torch.sqrt(sum((gradients[n] - g).square().sum() for n, g in reference.items())).item()
    overall = difference / max(total, floor)
    worst, where = 0.0, None
    for name, ref in reference.items():
        error = (gradients[name] - ref).norm().item() / max(ref.norm().item(), floor)
        if not error <= worst:
            worst, where = error, name
    return overall, worst, where


@contextmanager
def _same_start(probe: Learner, batch: TaskBatch) -> Iterator[Callable[[], None]]:
    """Within it, a function that puts back the random streams (the CPU's, and the batch's GPU's) and the probe's
    buffers as they were on entry, so that each strategy's meta-gradient starts from the same draws and state: a
    meta-loss may draw random numbers (Reptile's support mini-batches) or update buffers (Reptile's carried Adam
    moments). On exit the random streams are as on entry, so checking changes nothing that training draws."""
    devices = [batch.support_x.device.index or 0] if batch.support_x.is_cuda else []
    with torch.random.fork_rng(devices=devices):
        cpu = torch.random.get_rng_state()
        gpu = [torch.cuda.get_rng_state(device) for device in devices]
        buffers = {name: b.detach().clone() for name, b in probe.named_buffers()}

        def restore() -> None:
            torch.random.set_rng_state(cpu)
            for device, state in zip(devices, gpu):
                torch.cuda.set_rng_state(state, device)
            with torch.no_grad():
                for name, b in probe.named_buffers():
                    b.copy_(buffers[name])

        yield restore


def check_meta_gradient(learner: Learner, batch: TaskBatch, strategy: str) -> GradientCheck:
    """Compare ``strategy``'s meta-gradient with the per-task loop's on the first tasks of ``batch``, in float64 on a
    copy of ``learner`` (which is left unchanged), at every phase of its schedule (MAML++'s first-order phase, say),
    each from the same random draws and buffers (:func:`_same_start`)."""
    started = time.perf_counter()
    probe = learner.gradient_probe()
    tasks = _first_tasks(batch)
    overall, worst, where = 0.0, 0.0, None
    with _same_start(probe, tasks) as restore:
        for step in probe.schedule_phases():
            restore()
            reference = _meta_gradient(probe, tasks, "loop", step)
            restore()
            try:
                gradients = _meta_gradient(probe, tasks, strategy, step)
            except (RuntimeError, ValueError, NotImplementedError, ConfigError) as error:
                message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                return GradientCheck(strategy, None, None, None, message[:300], seconds=time.perf_counter() - started)
            phase_overall, phase_worst, name = _differences(gradients, reference)
            if not phase_overall <= overall:  # the largest, NaN included
                overall = phase_overall
            if not phase_worst <= worst:
                worst, where = phase_worst, name
    check = GradientCheck(strategy, overall, worst, where)
    if not check.agrees and strategy == "vmap":
        check.layers = disagreeing_layer_types(probe.model, tasks)
    check.seconds = time.perf_counter() - started
    return check


def require_agreement(learner: Learner, batch: TaskBatch) -> GradientCheck | None:
    """For an explicitly chosen ``vmap`` or ``fold``: check it once, and stop with one line naming the cause and the
    way out where it disagrees. Returns the check (None for other strategies)."""
    if learner.strategy not in ("vmap", "fold"):
        return None
    check = check_meta_gradient(learner, batch, learner.strategy)
    if not check.agrees:
        raise ConfigError(
            f"--strategy {learner.strategy} would train on a wrong meta-gradient: {check.describe()}. Use --strategy "
            f"loop, or auto (which checks and keeps the strategies that agree); --no-gradient-check skips this check."
        )
    return check


def _second_order_meta_gradient(layer: nn.Module, params: dict[str, Tensor], inputs: Tensor, vectorised: bool):
    """d/d params of sum_t L_q(params - 0.1 grad L_s(params; x_t); x_t) for the layer alone, on each task's input
    x_t plus a shift that is adapted too (so that the input's path is checked as well as the weights')."""
    g = torch.Generator().manual_seed(0)
    sample = layer(inputs[0])
    direction = torch.randn(sample.shape, generator=g, dtype=sample.dtype)
    curvature = torch.rand(sample.shape, generator=g, dtype=sample.dtype)

    def loss(p: dict[str, Tensor], x: Tensor) -> Tensor:
        shift = p["input shift"]
        out = functional_call(layer, {k: v for k, v in p.items() if k != "input shift"}, (x + shift,))
        return (out * direction).sum() + 0.5 * (out.square() * curvature).sum()

    def query_loss(x: Tensor, grad_fn) -> Tensor:
        grads = grad_fn(x)
        fast = {k: v - 0.1 * grads[k] for k, v in params.items()}
        return loss(fast, x).square()

    if vectorised:
        total = vmap(lambda x: query_loss(x, lambda x: torch.func.grad(loss)(params, x)))(inputs).sum()
    else:
        total = 0.0
        for x in inputs:
            values = torch.autograd.grad(loss(params, x), list(params.values()), create_graph=True)
            total = total + query_loss(x, lambda x, values=values: dict(zip(params, values)))
    return torch.autograd.grad(total, list(params.values()))


def disagreeing_layer_types(model: nn.Module, batch: TaskBatch) -> tuple[str, ...]:
    """The types of the model's layers whose second-order meta-gradient under ``vmap`` differs from the loop's when
    each layer is run alone on the inputs it receives from the tasks of ``batch`` (leaf modules with one tensor
    input; layers that cannot be run alone are skipped)."""
    inputs: dict[str, list[Tensor]] = {}
    leaves = {name: m for name, m in model.named_modules() if not list(m.children())}

    def recorder(name: str):
        def hook(module, args, output):
            if len(args) == 1 and isinstance(args[0], Tensor) and args[0].is_floating_point():
                inputs.setdefault(name, []).append(args[0].detach())

        return hook

    handles = [m.register_forward_hook(recorder(name)) for name, m in leaves.items()]
    try:
        with torch.no_grad():
            for task in range(batch.num_tasks):
                model(batch.support_x[task])
    finally:
        for handle in handles:
            handle.remove()
    found: list[str] = []
    for name, recorded in inputs.items():
        layer = leaves[name]
        kind = type(layer).__name__
        if kind in found or len(recorded) < 2 or len({x.shape for x in recorded}) > 1:
            continue
        stacked = torch.stack(recorded)
        params = {k: p.detach().requires_grad_() for k, p in layer.named_parameters()}
        params["input shift"] = torch.zeros(stacked.shape[2:], dtype=stacked.dtype, requires_grad=True)
        try:
            looped = _second_order_meta_gradient(layer, params, stacked, vectorised=False)
            batched = _second_order_meta_gradient(layer, params, stacked, vectorised=True)
        except (RuntimeError, ValueError, NotImplementedError):
            continue
        _, difference, _ = _differences(dict(zip(params, batched)), dict(zip(params, looped)))
        if not difference <= TOLERANCE:
            found.append(kind)
    return tuple(found)
