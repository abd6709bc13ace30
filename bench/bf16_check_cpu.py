"""fastadapt.device.check_bf16 on the CPU: how far bfloat16 autocast moves the meta-loss and the meta-gradient of
one meta-batch, for a few methods and networks at initialisation (seed 0), against the limits --precision bf16
would apply (meta-loss within 1% relative, meta-gradient cosine >= 0.99).

These are CPU numbers (torch's CPU autocast); no GPU was available. bfloat16 has the same 8-bit mantissa on
both, but GPU kernels round and accumulate differently, so a GPU run must make its own check, as
require_bf16_exact_enough does on the first meta-batch.

    python bench/bf16_check_cpu.py

Writes bench/results/bf16_check_cpu.json.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone

import torch
from common import RESULTS, machine, write_json

from fastadapt.algorithms import MAML, ProtoNet
from fastadapt.datasets.sinusoid import SinusoidTasks
from fastadapt.device import check_bf16
from fastadapt.nets import MLP, Conv4
from fastadapt.tasks.episodes import TaskBatch


def images(tasks: int, ways: int, shots: int, query: int, size: int, channels: int = 1) -> TaskBatch:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(ways)
    return TaskBatch(
        torch.rand(tasks, ways * shots, channels, size, size, generator=g),
        labels.repeat_interleave(shots).repeat(tasks, 1),
        torch.rand(tasks, ways * query, channels, size, size, generator=g),
        labels.repeat_interleave(query).repeat(tasks, 1),
        ways,
    )


CASES = {
    "maml, sinusoid MLP 1-40-40-1, 25 tasks, 1 step": (
        lambda: MAML(MLP(1, (40, 40), 1), inner_lr=0.01, inner_steps=1),
        lambda: SinusoidTasks(10, 10, seed=0).sample(25),
    ),
    "maml, Conv-4 32 filters, 28x28, 5-way 1-shot, 4 tasks, 1 step of 0.4": (
        lambda: MAML(Conv4(1, 32, 5, norm="episode", image_size=28), inner_lr=0.4, inner_steps=1),
        lambda: images(4, 5, 1, 15, 28),
    ),
    "maml, Conv-4 32 filters, 84x84 RGB, 5-way 1-shot, 2 tasks, 5 steps of 0.01": (
        lambda: MAML(Conv4(3, 32, 5, norm="episode", image_size=84), inner_lr=0.01, inner_steps=5),
        lambda: images(2, 5, 1, 15, 84, channels=3),
    ),
    "maml, Conv-4 16 filters, 16x16, 3-way 2-shot, 2 tasks, 2 steps of 0.1": (
        lambda: MAML(Conv4(1, 16, 3, norm="episode", image_size=16), inner_lr=0.1, inner_steps=2),
        lambda: images(2, 3, 2, 3, 16),
    ),
    "protonet, Conv-4 64 filters, 28x28, 5-way 1-shot, 15 queries": (
        lambda: ProtoNet(Conv4(1, 64, None, image_size=28)),
        lambda: images(1, 5, 1, 15, 28),
    ),
    "protonet, Conv-4 64 filters, 84x84 RGB, 5-way 1-shot, 15 queries": (
        lambda: ProtoNet(Conv4(3, 64, None, image_size=84)),
        lambda: images(1, 5, 1, 15, 84, channels=3),
    ),
}


def main() -> None:
    rows = {}
    started = time.time()
    for name, (learner, batch) in CASES.items():
        torch.manual_seed(0)
        result = check_bf16(learner(), batch(), torch.device("cpu"))
        rows[name] = {
            "loss_fp32": result.loss_fp32,
            "loss_bf16": result.loss_bf16,
            "loss_relative_error": result.loss_relative_error,
            "gradient_cosine": result.gradient_cosine,
            "passed": result.passed,
        }
        print(f"{name}: {result.describe()}")
    record = {
        "name": "bf16_check_cpu",
        "command": "python bench/bf16_check_cpu.py",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "device": "cpu (no GPU available)",
        "limits": {"loss_relative_error": 1e-2, "gradient_cosine": 0.99},
        "wall_s": round(time.time() - started, 1),
        "cases": rows,
    }
    write_json(RESULTS / "bf16_check_cpu.json", record)
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
