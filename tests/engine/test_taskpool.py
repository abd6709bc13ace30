import threading

import pytest
import torch
from torch import nn
from torch.func import functional_call

from fastadapt.engine.taskpool import concurrent_gradients, map_parts, one_torch_thread, replica


def test_a_replica_shares_tensors_but_functional_call_on_it_leaves_the_original_alone():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    copy = replica(model)
    assert copy is not model and copy[0] is not model[0]
    assert all(a is b for a, b in zip(copy.parameters(), model.parameters()))
    assert all(a is b for a, b in zip(copy.buffers(), model.buffers()))
    held_by_original = []
    copy[0].register_forward_pre_hook(lambda module, args: held_by_original.append(model[0].weight))
    zeros = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
    functional_call(copy, zeros, (torch.randn(5, 3),))  # mid-call, the copy holds the zeros
    assert held_by_original == [model[0]._parameters["weight"]] and held_by_original[0].abs().sum() > 0
    assert not model[0]._forward_pre_hooks  # the hook went on the copy only


def quadratic_parts(parts=7):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(4, 3, generator=g, dtype=torch.float64) for _ in range(parts)]


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_concurrent_gradients_equal_the_serial_sum_and_each_part_output_in_order(workers):
    model = nn.Linear(3, 2).double()
    parts = quadratic_parts()
    threads = set()

    def loss_of(learner, x):
        threads.add(threading.current_thread().name)
        out = learner(x)
        return out.square().sum(), out.detach()

    grads, outputs = concurrent_gradients(model, list(model.parameters()), parts, loss_of, workers)
    expected = torch.autograd.grad(sum(model(x).square().sum() for x in parts), list(model.parameters()))
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e)
    for x, out in zip(parts, outputs):
        torch.testing.assert_close(out, model(x).detach())
    assert len(threads) == workers  # the parts really ran on that many threads
    again, _ = concurrent_gradients(model, list(model.parameters()), parts, loss_of, workers)
    assert all(torch.equal(a, b) for a, b in zip(grads, again))  # the same sums in the same order: repeatable


def test_unused_parameters_get_none_and_worker_errors_reach_the_caller():
    model = nn.Linear(3, 2).double()
    unused = nn.Parameter(torch.zeros(2, dtype=torch.float64))
    grads, _ = concurrent_gradients(
        model, [model.weight, unused], quadratic_parts(), lambda m, x: (m(x).sum(), None), 2
    )
    assert grads[0] is not None and grads[1] is None

    def failing(learner, x):
        raise ValueError("bad part")

    with pytest.raises(ValueError, match="bad part"):
        concurrent_gradients(model, [model.weight], quadratic_parts(), failing, 2)


def test_workers_see_the_callers_grad_mode_and_torch_threads_come_back():
    threads = torch.get_num_threads()
    model = nn.Linear(3, 2)
    with torch.no_grad():
        outputs = map_parts(model, [torch.randn(2, 3) for _ in range(4)], lambda m, x: m(x), 2)
    assert not any(out.requires_grad for out in outputs)
    assert torch.get_num_threads() == threads
    with pytest.raises(RuntimeError), one_torch_thread():
        assert torch.get_num_threads() == 1
        raise RuntimeError
    assert torch.get_num_threads() == threads


def test_keep_freed_memory_reuses_freed_blocks():
    """After the call, malloc hands a freed 16 MiB block out again, instead of mapping fresh pages (4,096 faults)."""
    import ctypes
    import resource
    import sys

    from fastadapt.engine.taskpool import keep_freed_memory

    if not sys.platform.startswith("linux") or not keep_freed_memory():
        pytest.skip("glibc's mallopt is not available here")
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    size = 16 << 20

    def faults_of_a_block() -> int:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = libc.malloc(size)
        ctypes.memset(block, 1, size)
        libc.free(block)
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    faults_of_a_block()
    assert faults_of_a_block() < 100
