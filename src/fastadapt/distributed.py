"""Data-parallel meta-training over torch.distributed: one process per core, GPU or machine, started by
``torchrun`` (which sets ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...).

A meta-batch of B tasks is split into B / world_size tasks per process. Each process draws its own tasks
(its own seed), computes the meta-gradient of its share, and the gradients are averaged with one
all-reduce before the identical ``optimizer.step()`` on every process, so the update equals that of one
process holding all B tasks. Only rank 0 validates, writes metrics and checkpoints; a checkpoint keeps
every rank's sampler and random state, so a run resumes exactly with the same number of processes.

One exception to "equals one process": a network whose batch norm pools statistics over the whole
meta-batch (the metric methods' Conv-4 embeds every task in one pass) pools over each process's share.
MAML's networks normalise each task on its own, so for them the update is the same.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from fastadapt.errors import ConfigError

#: Seed offset between ranks' task samplers and random streams (rank 0 keeps the configured seed).
RANK_SEED_OFFSET = 100_003
#: How long a process may wait in a collective; the others wait while rank 0 validates, which can be long.
TIMEOUT = timedelta(hours=2)


@dataclass(frozen=True)
class Replicas:
    """Where this process stands among the data-parallel training processes."""

    rank: int = 0
    world_size: int = 1
    #: whether :func:`setup` created the process group (and so :func:`teardown` should destroy it)
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str) -> tuple[Replicas, str]:
    """Join the process group torchrun describes (nothing to do for a single process). Returns this
    process's place and its device: under CUDA each process takes the GPU of its local rank."""
    joined = dist.is_available() and dist.is_initialized()  # a user's script set the group up
    if not joined and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Replicas(), device
    if device.startswith("cuda"):
        device = _local_gpu(device)
    if not joined:
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo", timeout=TIMEOUT)
    return Replicas(dist.get_rank(), dist.get_world_size(), owns_group=not joined), device


def _local_gpu(device: str) -> str:
    """Each process takes the GPU of its local rank; a fixed ``cuda:N`` would put them all on one."""
    if device != "cuda":
        raise ConfigError(
            f"--device {device} under torchrun would put every process on the same GPU; pass --device cuda "
            f"and each process takes the GPU of its local rank (limit them with CUDA_VISIBLE_DEVICES)."
        )
    device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    torch.cuda.set_device(device)
    return device


def teardown(replicas: Replicas) -> None:
    if replicas.owns_group and dist.is_initialized():
        # Every rank done first: a rank that tore gloo down while another still exchanged with it aborted
        # ("terminate called without an active exception") in 2 of 6 runs of a test that had no barrier.
        dist.barrier()
        dist.destroy_process_group()


def average_gradients(parameters: list[torch.nn.Parameter], world_size: int) -> None:
    """Replace every ``.grad`` by its mean over the processes, in a single all-reduce. A trainable
    parameter without a gradient counts as a zero one, so every process reduces tensors of one size."""
    for p in parameters:
        if p.requires_grad and p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def average_values(values: list[float], world_size: int, device: torch.device) -> list[float]:
    """The mean over the processes of a few numbers (training loss and score for the metrics file)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return (tensor / world_size).tolist()


def average_buffers(module: torch.nn.Module, world_size: int) -> None:
    """Average floating-point buffers (batch-norm running statistics), which each process updated on its
    own tasks, so that validation and checkpoints see the statistics of all of them."""
    for buffer in module.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer)
            buffer /= world_size


def broadcast_module(module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every process (identical starting points)."""
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor, src=0)


def broadcast_object(obj: Any) -> Any:
    """Rank 0's value of a picklable object, on every process."""
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def gather_objects(obj: Any, world_size: int) -> list[Any]:
    """Every process's value of a picklable object, in rank order, on every process."""
    gathered: list[Any] = [None] * world_size
    dist.all_gather_object(gathered, obj)
    return gathered
