"""Device selection and refusal, GPU copies and timing through mocks (no GPU here), and the bf16 check for real on
the CPU."""

from __future__ import annotations

import pytest
import torch
from helpers import image_batch

from fastadapt import device as dev
from fastadapt.algorithms import MAML, ProtoNet
from fastadapt.errors import ConfigError
from fastadapt.nets import Conv4


@pytest.fixture
def fake_gpus(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """torch reports two CUDA devices; calls that would touch one are recorded instead."""
    calls: list[tuple] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(("synchronize", device)))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)

    class Props:
        name, total_memory, major, minor = "Fake GPU", 80 * 2**30, 9, 0

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: Props())
    return calls


def test_auto_and_cpu_without_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert dev.resolve_device("auto") == torch.device("cpu")
    assert dev.resolve_device(None) == torch.device("cpu")
    assert dev.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(
        ConfigError, match=r"--device cuda asked for a GPU but torch .* sees no CUDA device.*--device cpu"
    ):
        dev.resolve_device("cuda")
    with pytest.raises(ConfigError, match="unknown --device 'gpu0'"):
        dev.resolve_device("gpu0")
    with pytest.raises(ConfigError, match="runs on cpu or cuda"):
        dev.resolve_device("meta")


def test_gpu_selection(fake_gpus: list) -> None:
    assert dev.resolve_device("auto") == torch.device("cuda", 0)
    assert dev.resolve_device("cuda") == torch.device("cuda", 0)
    assert dev.resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match=r"--device cuda:2: only 2 CUDA device\(s\) here \(cuda:0 to cuda:1\)"):
        dev.resolve_device("cuda:2")
    assert dev.describe_device(torch.device("cuda", 1)) == "cuda:1 (Fake GPU, 80.0 GiB, compute capability 9.0)"
    assert dev.describe_device(torch.device("cpu")).startswith("cpu (")
    assert dev.rng_devices(torch.device("cuda", 1)) == [1] and dev.rng_devices(torch.device("cpu")) == []


def test_timing_waits_for_the_gpu(fake_gpus: list) -> None:
    gpu = torch.device("cuda", 1)
    result, seconds = dev.timed(lambda: fake_gpus.append(("work", None)) or 7, gpu)
    assert result == 7 and seconds >= 0
    assert fake_gpus == [("synchronize", gpu), ("work", None), ("synchronize", gpu)]
    fake_gpus.clear()
    dev.timed(lambda: None, torch.device("cpu"))
    assert fake_gpus == []


def test_batch_moves_pinned_and_non_blocking(monkeypatch: pytest.MonkeyPatch) -> None:
    """A GPU copy goes through pinned memory with non_blocking=True and lands on the requested device (the
    copy itself is recorded and stood in for by a tensor on the meta device)."""
    moves: list[tuple] = []

    def pin_memory(self):
        moves.append(("pin", tuple(self.shape)))
        return self

    def to(self, device, non_blocking=False):
        moves.append(("to", torch.device(device), non_blocking))
        return torch.empty(self.shape, dtype=self.dtype, device="meta")

    monkeypatch.setattr(torch.Tensor, "pin_memory", pin_memory)
    monkeypatch.setattr(torch.Tensor, "to", to)
    batch = image_batch(tasks=2, ways=3, shots=1, query=2, size=8)
    moved = dev.move_batch(batch, torch.device("cuda", 0))
    assert moved.ways == 3
    assert all(getattr(moved, name).device.type == "meta" for name in ("support_x", "support_y", "query_x", "query_y"))
    assert [m[0] for m in moves] == ["pin", "to"] * 4
    assert all(m == ("to", torch.device("cuda", 0), True) for m in moves if m[0] == "to")


def test_batch_to_cpu_is_a_plain_move() -> None:
    batch = image_batch()
    moved = dev.move_batch(batch, torch.device("cpu"))
    assert torch.equal(moved.support_x, batch.support_x) and moved.support_x.device.type == "cpu"


def test_precision_checks(fake_gpus: list) -> None:
    with pytest.raises(ConfigError, match="unknown --precision 'fp16'"):
        dev.check_precision("fp16", torch.device("cpu"))
    with pytest.raises(ConfigError, match="Fake GPU.*has no bfloat16 support"):
        dev.check_precision("bf16", torch.device("cuda", 0))
    dev.check_precision("bf16", torch.device("cpu"))


def test_autocast_runs_matmuls_in_bf16_on_cpu() -> None:
    a, b = torch.randn(4, 5), torch.randn(5, 3)
    with dev.autocast(torch.device("cpu"), "bf16"):
        assert (a @ b).dtype == torch.bfloat16
    with dev.autocast(torch.device("cpu"), "fp32"):
        assert (a @ b).dtype == torch.float32


def test_bf16_check_passes_where_bf16_is_close() -> None:
    """MAML on sinusoids (an MLP): bf16 autocast changes the meta-loss by ~1e-4 and keeps the meta-gradient's
    direction (cosine ~0.9999 on the CPU this was written on)."""
    from fastadapt.datasets.sinusoid import SinusoidTasks
    from fastadapt.nets import MLP

    torch.manual_seed(0)
    learner = MAML(MLP(1, (40, 40), 1), inner_lr=0.01, inner_steps=1)
    batch = SinusoidTasks(10, 10, seed=0).sample(25)
    before = [p.detach().clone() for p in learner.parameters()]
    result = dev.check_bf16(learner, batch, torch.device("cpu"))
    assert result.passed, result.describe()
    assert 0 < result.loss_relative_error < 1e-3  # bf16 really ran: the losses differ, a little
    assert result.gradient_cosine > 0.999
    assert all(torch.equal(p, q) for p, q in zip(before, learner.parameters()))  # nothing changed
    assert all(p.grad is None for p in learner.parameters())
    strict = dev.check_bf16(learner, batch, torch.device("cpu"), loss_tolerance=1e-9)
    assert not strict.passed and "outside the limits" in strict.describe()


def test_bf16_check_refuses_where_bf16_is_not_close() -> None:
    """MAML with a small Conv-4 (16 filters, 16x16 images, two inner steps): bf16 turns the meta-gradient's
    direction (cosine ~0.6 on the CPU this was written on), so bf16 is refused with one line."""
    torch.manual_seed(0)
    learner = MAML(Conv4(1, 16, 3, norm="episode", image_size=16), inner_lr=0.1, inner_steps=2)
    batch = image_batch(tasks=2, ways=3, shots=2, query=3, size=16, dtype=torch.float32, uniform=True)
    result = dev.check_bf16(learner, batch, torch.device("cpu"))
    assert result.gradient_cosine < 0.95 and not result.passed
    with pytest.raises(
        ConfigError, match=r"--precision bf16 is not exact enough.*meta-gradient cosine.*use --precision fp32"
    ):
        dev.require_bf16_exact_enough(learner, batch, torch.device("cpu"))
    assert dev.require_bf16_exact_enough(learner, batch, torch.device("cpu"), min_gradient_cosine=-1.0).passed


def test_bf16_check_protonet_runs() -> None:
    torch.manual_seed(0)
    learner = ProtoNet(Conv4(1, 16, None, image_size=16))
    batch = image_batch(tasks=2, ways=3, shots=2, query=3, size=16, dtype=torch.float32, uniform=True)
    result = dev.check_bf16(learner, batch, torch.device("cpu"))
    assert result.loss_relative_error > 0 and -1 <= result.gradient_cosine <= 1 + 1e-6
