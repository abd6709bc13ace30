"""Running the tasks of a meta-batch side by side on a CPU's cores.

A task's inner loop and query pass are small operations (a few to a few dozen images), which torch's intra-op
threads split poorly. Giving each core whole tasks instead, one torch thread each, was faster on the 2-core
machine of docs/performance.md for the Omniglot-shaped MAML workloads, and slower for a small sinusoid MLP (speed
section). So the number of workers is measured (fastadapt.engine.strategy.choose_strategy) unless it is set.

``torch.func.functional_call`` swaps tensors into a module while it runs, so two threads cannot run one module
at the same time. Each worker therefore runs its own :func:`replica` of the meta-learner: a copy of the module
tree that shares every parameter and buffer.

Worker ``w`` takes chunks ``w, w + workers, ...`` in order and sums their gradients; the workers' sums are
then added in worker order. So the result depends on the number of workers but not on thread timing, and a
run repeats exactly.
"""

from __future__ import annotations

import copy
import ctypes
import ctypes.util
import functools
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

import torch
from torch import Tensor, nn

Part = TypeVar("Part")
Result = TypeVar("Result")
#: What a chunk's loss function returns: the loss to differentiate, and anything to hand back (its output).
LossOf = Callable[[nn.Module, Part], tuple[Tensor, object]]


def shallow_replica(module: nn.Module) -> nn.Module:
    """A copy of ``module`` alone that shares its parameters, buffers, submodules and other attributes, with
    dictionaries of its own (parameters, buffers, submodules, hooks)."""
    clone = copy.copy(module)
    for name, value in vars(module).items():
        if isinstance(value, (dict, set)):
            clone.__dict__[name] = value.copy()
    return clone


def replica(module: nn.Module) -> nn.Module:
    """A copy of ``module``'s tree of submodules that shares its parameters, buffers and other attributes,
    with dictionaries of its own (parameters, buffers, submodules, hooks), so that ``functional_call`` or a
    hook on the copy leaves the original untouched."""
    clone = shallow_replica(module)
    clone._modules = {name: None if child is None else replica(child) for name, child in module._modules.items()}
    return clone


def timing_dependent_modules(module: nn.Module) -> list[str]:
    """Submodules whose forward pass draws random numbers (dropout) or writes to buffers (batch norm's running
    statistics). Run by several workers, the order of those draws or writes would follow thread timing, and
    a run would no longer repeat exactly."""
    return [
        name
        for name, sub in module.named_modules()
        if isinstance(sub, nn.modules.dropout._DropoutNd)
        or (isinstance(sub, nn.modules.batchnorm._NormBase) and sub.track_running_stats)
    ]


def available_workers(device: torch.device | str = "cpu") -> int:
    """One worker per torch thread on a CPU; on a GPU one (its kernels already fill the device)."""
    return torch.get_num_threads() if torch.device(device).type == "cpu" else 1


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Each worker's operations run single-threaded: the workers already occupy the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


#: glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8


@functools.cache  # find_library runs subprocesses; release_freed_memory is called after every trial
def _c_library_function(name: str) -> Callable[..., int] | None:
    """A function of the process's C library (glibc's ``mallopt``, ``malloc_trim``), or None where it has none."""
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> None:
    """Give back to the system the memory that malloc keeps for reuse, in every thread's heap (glibc's
    ``malloc_trim``; nothing elsewhere). :func:`fastadapt.engine.strategy.time_strategies` calls it between trials:
    trials of different configurations otherwise pile their freed blocks up in each thread's heap, and the measurement,
    not the training, set the process's peak memory (533 against 492-497 MiB, MAML's Omniglot setting at 5
    second-order steps, docs/performance.md)."""
    trim = _c_library_function("malloc_trim")
    if trim is not None:
        trim(0)


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for reuse instead of giving it back to the system at once.

    By default large blocks (an activation of a few MB, here) are mapped fresh from the system, page by page, and
    unmapped or trimmed when freed. Six MAML steps of 32 tasks with 15 queries per class then took 2.0-2.5 million
    page faults (0.1 million with this), and with two threads in one process each unmapping stalls the other.
    One heap serves every thread, so that a block one worker frees is reused by the other: with a heap per
    thread, each kept its own peak, and the process's peak memory grew by 5-12%; with one, it was 517-541 MiB
    against 572 MiB without this call. A 2-worker step took 16-17% less time (with a heap per thread, 21%).
    Since then the fused batch-norm kernel and one-thread vmap chunks changed that: in CLI training runs
    (docs/performance.md) the one shared heap made two workers contend: training steps were 3-11% slower
    with this call, and a scratch 2-worker vmap step at 5 second-order steps took 1.68-1.72 s against 1.02-1.05 s.
    So the CLI no longer calls it. An option for a user whose own workload faults pages heavily: call it once at start.
    Process-wide and permanent. Returns False where the C library has no ``mallopt`` (not glibc), which changes
    nothing."""
    mallopt = _c_library_function("mallopt")
    if mallopt is None:
        return False
    # Blocks up to 1 GiB come from the heap (32 MiB where glibc refuses that), which is never trimmed.
    mapped = mallopt(_M_MMAP_THRESHOLD, 1 << 30) or mallopt(_M_MMAP_THRESHOLD, 32 << 20)
    return bool(mapped) and bool(mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1)) and bool(mallopt(_M_ARENA_MAX, 1))


def _add(total: list[Tensor | None], grads: Sequence[Tensor | None]) -> list[Tensor | None]:
    return [t if g is None else g if t is None else t + g for t, g in zip(total, grads)]


def _share_out(
    learner: nn.Module, parts: Sequence[Part], workers: int, work: Callable[[nn.Module, Sequence[Part]], Result]
) -> list[Result]:
    """``work(replica, parts[w::n])`` for each worker ``w`` of ``n = min(workers, len(parts))``: worker 0 on the
    calling thread, the others on threads of their own, all at once. Returns the ``n`` results."""
    workers = max(1, min(workers, len(parts)))
    grad_enabled = torch.is_grad_enabled()  # thread-local: an evaluation's no_grad must reach the workers
    results: list[Result] = [None] * workers  # type: ignore[list-item]
    errors: list[BaseException] = []

    def run(worker: int) -> None:
        try:
            with torch.set_grad_enabled(grad_enabled):
                results[worker] = work(replica(learner), parts[worker::workers])
        except BaseException as error:  # re-raised on the calling thread
            errors.append(error)

    with one_torch_thread():
        threads = [threading.Thread(target=run, args=(w,), name=f"fastadapt-task-{w}") for w in range(1, workers)]
        for thread in threads:
            thread.start()
        run(0)
        for thread in threads:
            thread.join()
    if errors:
        raise errors[0]
    return results


def _in_part_order(per_worker: Sequence[Sequence[Result]], parts: int) -> list[Result]:
    """Worker ``w``'s outputs belong to parts ``w, w + n, ...``: put them back in part order."""
    outputs: list[Result] = [None] * parts  # type: ignore[list-item]
    for worker, results in enumerate(per_worker):
        outputs[worker :: len(per_worker)] = results
    return outputs


def map_parts(
    learner: nn.Module, parts: Sequence[Part], fn: Callable[[nn.Module, Part], Result], workers: int
) -> list[Result]:
    """``[fn(learner, part) for part in parts]``, on ``workers`` threads."""
    per_worker = _share_out(learner, parts, workers, lambda own, share: [fn(own, part) for part in share])
    return _in_part_order(per_worker, len(parts))


def concurrent_gradients(
    learner: nn.Module, params: Sequence[Tensor], parts: Sequence[Part], loss_of: LossOf, workers: int
) -> tuple[list[Tensor | None], list[object]]:
    """The gradient of ``sum(loss_of(learner, part)[0] for part in parts)`` with respect to ``params``
    (None where a parameter was not used), computed on ``workers`` threads, and each part's output in order.

    A worker holds one part's graph at a time, so peak memory grows with the number of workers, not parts."""

    def work(own: nn.Module, share: Sequence[Part]) -> tuple[list[Tensor | None], list[object]]:
        total: list[Tensor | None] = [None] * len(params)
        outputs = []
        for part in share:
            loss, output = loss_of(own, part)
            total = _add(total, torch.autograd.grad(loss, params, allow_unused=True))
            outputs.append(output)
        return total, outputs

    per_worker = _share_out(learner, parts, workers, work)
    total: list[Tensor | None] = [None] * len(params)
    for grads, _ in per_worker:  # in worker order: the same sums every run
        total = _add(total, grads)
    return total, _in_part_order([outputs for _, outputs in per_worker], len(parts))
