"""Where a run computes: choosing and checking the device, moving episodes there, timing that waits for the GPU,
and optional bfloat16 autocast with an exactness check.

- ``--device auto`` is the first GPU when torch sees one, else the CPU; ``cpu``, ``cuda`` and ``cuda:N`` are
  checked before any work starts (one line naming the problem and the fix).
- Episodes go to a GPU from pinned memory without blocking the host (:func:`move_batch`).
- Timings (``--strategy auto`` measures loop against vmap/fold) must wait for the GPU's queued kernels:
  :func:`timed` synchronises before reading the clock.
- ``--precision bf16`` runs the forward passes under ``torch.autocast(dtype=torch.bfloat16)``; parameters,
  optimiser state and the meta-gradient stay float32. It is used only where :func:`check_bf16` passes on the
  first meta-batch: the bf16 meta-loss within 1% (relative) of the float32 one, and the bf16 meta-gradient's
  cosine similarity to the float32 one at least 0.99 (both thresholds are arguments).

No GPU was available where this module was written: its CUDA branches are exercised by the tests through
mocks (device selection and refusal, pinned non-blocking copies, synchronisation), and the bf16 check runs for
real on the CPU, which also supports bfloat16 autocast. No GPU timing or accuracy has been measured with it.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from typing import Any, TypeVar

import torch

from fastadapt.errors import ConfigError
from fastadapt.tasks.episodes import TaskBatch

PRECISIONS = ("fp32", "bf16")
T = TypeVar("T")


def resolve_device(requested: str | torch.device | None = "auto") -> torch.device:
    """The device for ``--device`` (None or "auto": ``cuda:0`` when torch sees a GPU, else ``cpu``), refused
    with a :class:`ConfigError` when this torch cannot use it."""
    if requested is None or str(requested) == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(requested)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown --device {requested!r}; use auto, cpu, cuda or cuda:N.") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise ConfigError(f"--device {requested}: fastadapt runs on cpu or cuda; use auto, cpu, cuda or cuda:N.")
    if not torch.cuda.is_available():
        raise ConfigError(
            f"--device {requested} asked for a GPU but torch {torch.__version__} sees no CUDA device "
            f"(a CPU-only build, or no driver); use --device cpu or auto."
        )
    count = torch.cuda.device_count()
    index = 0 if device.index is None else device.index
    if index >= count:
        raise ConfigError(f"--device {requested}: only {count} CUDA device(s) here (cuda:0 to cuda:{count - 1}).")
    return torch.device("cuda", index)


def describe_device(device: torch.device) -> str:
    """One line for the log: the GPU's name and memory, or the CPU's thread count."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return (
            f"{device} ({props.name}, {props.total_memory / 2**30:.1f} GiB, compute capability "
            f"{props.major}.{props.minor})"
        )
    return f"cpu ({torch.get_num_threads()} threads of {os.cpu_count()} cores)"


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (a no-op on the CPU, whose operations finish when they return)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], T], device: torch.device) -> tuple[T, float]:
    """``fn()`` and its wall time in seconds, including the GPU work it queued."""
    synchronize(device)
    started = time.perf_counter()
    result = fn()
    synchronize(device)
    return result, time.perf_counter() - started


def rng_devices(device: torch.device) -> list[int]:
    """The ``devices`` argument of ``torch.random.fork_rng`` that also saves and restores ``device``'s generator
    (``[]`` only covers the CPU's, so measuring on a GPU would change what training then draws there)."""
    return [device.index or 0] if device.type == "cuda" else []


def move_batch(batch: TaskBatch, device: torch.device) -> TaskBatch:
    """``batch`` on ``device``; to a GPU via pinned memory, asynchronously (the copy overlaps the host's work)."""
    if device.type != "cuda":
        return batch.to(device)
    values = {}
    for f in fields(batch):
        value = getattr(batch, f.name)
        if isinstance(value, torch.Tensor):
            value = value.pin_memory().to(device, non_blocking=True)
        values[f.name] = value
    return TaskBatch(**values)


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse a ``--precision`` this device cannot run."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown --precision {precision!r}; choose one of {', '.join(PRECISIONS)}.")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"--precision bf16: {describe_device(device)} has no bfloat16 support; use --precision fp32.")


@contextlib.contextmanager
def autocast(device: torch.device, precision: str = "fp32") -> Iterator[None]:
    """Forward passes in bfloat16 where torch's autocast lists them safe (matmuls, convolutions), the rest and
    all parameters in float32; ``fp32`` does nothing."""
    check_precision(precision, device)
    if precision == "fp32":
        yield
        return
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
        yield


@dataclass(frozen=True)
class Bf16Check:
    """The float32 and bfloat16 meta-loss and meta-gradient of one meta-batch, compared."""

    loss_fp32: float
    loss_bf16: float
    loss_relative_error: float
    gradient_cosine: float
    loss_tolerance: float
    min_gradient_cosine: float

    @property
    def passed(self) -> bool:
        return self.loss_relative_error <= self.loss_tolerance and self.gradient_cosine >= self.min_gradient_cosine

    def describe(self) -> str:
        verdict = "within" if self.passed else "outside"
        return (
            f"bf16 check: meta-loss {self.loss_bf16:.5g} vs {self.loss_fp32:.5g} in float32 (relative error "
            f"{self.loss_relative_error:.2e}, limit {self.loss_tolerance:g}); meta-gradient cosine "
            f"{self.gradient_cosine:.5f} (limit {self.min_gradient_cosine:g}): {verdict} the limits"
        )


def _meta_loss_and_gradient(learner: torch.nn.Module, batch: TaskBatch) -> tuple[float, torch.Tensor]:
    params = [p for p in learner.parameters() if p.requires_grad]
    loss = learner.meta_loss(batch).loss
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    flat = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).float() for g, p in zip(grads, params)])
    return float(loss.detach()), flat


def check_bf16(
    learner: torch.nn.Module,
    batch: TaskBatch,
    device: torch.device,
    loss_tolerance: float = 1e-2,
    min_gradient_cosine: float = 0.99,
) -> Bf16Check:
    """Compare the meta-loss and meta-gradient of ``batch`` in float32 and under bf16 autocast, from the same
    random state (dropout and other draws match), without changing the learner's parameters or gradients."""
    devices = rng_devices(device)
    with torch.random.fork_rng(devices=devices):
        state = torch.random.get_rng_state()
        cuda_state = torch.cuda.get_rng_state(device) if devices else None
        loss32, grad32 = _meta_loss_and_gradient(learner, batch)
        torch.random.set_rng_state(state)
        if cuda_state is not None:
            torch.cuda.set_rng_state(cuda_state, device)
        with autocast(device, "bf16"):
            loss16, grad16 = _meta_loss_and_gradient(learner, batch)
    relative = abs(loss16 - loss32) / max(abs(loss32), 1e-12)
    cosine = float(torch.nn.functional.cosine_similarity(grad32, grad16, dim=0)) if grad32.norm() > 0 else 1.0
    return Bf16Check(loss32, loss16, relative, cosine, loss_tolerance, min_gradient_cosine)


def require_bf16_exact_enough(
    learner: torch.nn.Module, batch: TaskBatch, device: torch.device, **limits: Any
) -> Bf16Check:
    """:func:`check_bf16`, refusing ``--precision bf16`` with one line when it fails."""
    result = check_bf16(learner, batch, device, **limits)
    if not result.passed:
        raise ConfigError(
            f"--precision bf16 is not exact enough for this run ({result.describe()}); use --precision fp32."
        )
    return result
