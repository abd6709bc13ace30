"""Data-parallel training under torchrun: averaged gradients equal one process's meta-gradient over the
whole meta-batch; a two-process run resumes exactly; a checkpoint refuses another process count."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from killing import metrics_without_times

from fastadapt.algorithms import build_algorithm
from fastadapt.config import make_config
from fastadapt.datasets import task_source
from fastadapt.errors import ConfigError
from fastadapt.train import train

TINY = dict(
    meta_batch_size=4, shots=5, query=5, eval_query=5, inner_steps=2, strategy="loop", steps=4, val_every=2,
    val_episodes=4, test_episodes=4,
)  # fmt: skip


def _torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _cli_train(out: Path, steps: int, resume: bool = False) -> list[str]:
    settings = {**TINY, "steps": steps, "out": str(out)}
    args = ["-m", "fastadapt", "train", "--algorithm", "maml", "--dataset", "sinusoid", "--quiet"]
    for key, value in settings.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args + (["--resume"] if resume else [])


def test_averaged_gradients_equal_the_whole_meta_batch_gradient(tmp_path: Path) -> None:
    worker = tmp_path / "worker.py"
    worker.write_text(
        textwrap.dedent(
            f"""
            import torch, torch.distributed as dist
            from fastadapt import distributed
            from fastadapt.algorithms import build_algorithm
            from fastadapt.config import make_config
            from fastadapt.datasets import task_source

            replicas, _ = distributed.setup("cpu")
            config = make_config("maml", "sinusoid", **{TINY!r})
            torch.manual_seed(0)
            learner = build_algorithm(config)
            batch = task_source(config, None, "train", 0).sample(4)
            share = batch.tasks(2 * replicas.rank, 2 * replicas.rank + 2)
            learner.meta_backward(share)
            distributed.average_gradients(list(learner.parameters()), replicas.world_size)
            if replicas.is_main:
                torch.save([p.grad for p in learner.parameters()], {str(tmp_path / "grads.pt")!r})
            distributed.teardown(replicas)
            """
        )
    )
    _torchrun([str(worker)], tmp_path)
    config = make_config("maml", "sinusoid", **TINY)
    torch.manual_seed(0)
    learner = build_algorithm(config)
    learner.meta_backward(task_source(config, None, "train", 0).sample(4))
    averaged = torch.load(tmp_path / "grads.pt", weights_only=True)
    assert len(averaged) == len(list(learner.parameters()))
    for mine, theirs in zip(learner.parameters(), averaged, strict=True):
        torch.testing.assert_close(theirs, mine.grad, rtol=1e-5, atol=1e-6)


def test_processes_hold_the_same_model_after_training(tmp_path: Path) -> None:
    worker = tmp_path / "worker.py"
    worker.write_text(
        textwrap.dedent(
            f"""
            import torch, torch.distributed as dist
            from fastadapt.config import make_config
            from fastadapt.train import train

            dist.init_process_group("gloo")  # the user's own group: train() joins it and leaves it open
            config = make_config("maml", "sinusoid", **{{**{TINY!r}, "out": {str(tmp_path / "run")!r}}})
            learner = train(config, progress=False).learner
            state = torch.cat([t.detach().reshape(-1) for t in learner.state_dict().values()])
            gathered = [torch.empty_like(state) for _ in range(dist.get_world_size())]
            dist.all_gather(gathered, state)
            if dist.get_rank() == 0:
                same = all(torch.equal(gathered[0], other) for other in gathered[1:])
                moved = not torch.equal(state, torch.load({str(tmp_path / "initial.pt")!r}))
                open({str(tmp_path / "verdict.txt")!r}, "w").write(f"{{same}} {{moved}}")
            dist.barrier()  # without it, one rank could tear gloo down mid-exchange: "terminate called" (2 in 6 runs)
            dist.destroy_process_group()
            """
        )
    )
    config = make_config("maml", "sinusoid", **TINY)
    torch.manual_seed(config.seed)
    initial = build_algorithm(config).state_dict()
    torch.save(torch.cat([t.reshape(-1) for t in initial.values()]), tmp_path / "initial.pt")
    _torchrun([str(worker)], tmp_path)
    assert (tmp_path / "verdict.txt").read_text() == "True True"  # identical on both ranks, and trained


def test_two_process_run_resumes_exactly_and_refuses_another_process_count(tmp_path: Path) -> None:
    _torchrun(_cli_train(tmp_path / "whole", steps=4), tmp_path)
    _torchrun(_cli_train(tmp_path / "split", steps=2), tmp_path)
    _torchrun(_cli_train(tmp_path / "split", steps=4, resume=True), tmp_path)
    whole, split = (torch.load(tmp_path / d / "last.pt", weights_only=False) for d in ("whole", "split"))
    assert whole["world_size"] == 2 and len(whole["ranks"]) == 1 and split["step"] == 4
    for key in whole["model"]:
        assert torch.equal(whole["model"][key], split["model"][key]), key
    assert torch.equal(whole["ranks"][0]["torch_rng"], split["ranks"][0]["torch_rng"])

    def validations(out: Path) -> list[dict]:  # (a shorter run also logs training loss at its last step)
        return [r for r in metrics_without_times(out / "metrics.jsonl") if "val_mse" in r]  # the wall clock aside

    assert validations(tmp_path / "whole") == validations(tmp_path / "split")
    # The two processes drew different tasks: rank 1's sampler moved on from its own seed.
    assert whole["ranks"][0]["sampler"] != whole["sampler"]

    config = make_config("maml", "sinusoid", **{**TINY, "steps": 6, "out": str(tmp_path / "whole")})
    with pytest.raises(ConfigError, match="2 process"):
        train(config, resume=True, progress=False)
