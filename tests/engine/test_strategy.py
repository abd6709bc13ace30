import pytest
import torch

from fastadapt.algorithms import MAML, ProtoNet, Reptile
from fastadapt.config import make_config
from fastadapt.datasets.sinusoid import SinusoidTasks
from fastadapt.engine.strategy import choose_strategy, saved_activation_mib
from fastadapt.nets import MLP
from fastadapt.train import train


def test_choose_strategy_measures_both_and_changes_no_parameter():
    torch.manual_seed(0)
    learner = MAML(MLP(1, (8,), 1), inner_lr=0.01, strategy="auto")
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    rng = torch.get_rng_state()
    measured = choose_strategy(learner, SinusoidTasks(5, 5, seed=0).sample(4), trials=1)
    assert set(measured["seconds"]) == {"loop", "fold"}  # the MLP folds: fold is timed in vmap's place
    assert learner.strategy == measured["strategy"] == min(measured["seconds"], key=measured["seconds"].get)
    assert all(torch.equal(before[k], v) for k, v in learner.state_dict().items())
    assert all(p.grad is None for p in learner.parameters())
    assert torch.equal(rng, torch.get_rng_state())


def test_choose_strategy_leaves_buffers_a_meta_loss_updates():
    """Reptile's carried Adam moments change on every meta-loss; timing must not advance them."""
    torch.manual_seed(0)
    learner = Reptile(MLP(1, (8,), 1), inner_lr=0.01, adam_state="carried", strategy="auto")
    learner.meta_loss(SinusoidTasks(5, 5, seed=1).sample(2))  # moments that are not all zero
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    choose_strategy(learner, SinusoidTasks(5, 5, seed=0).sample(4), trials=1)
    assert int(learner.adam_moments.steps) == learner.inner_steps
    assert all(torch.equal(before[k], v) for k, v in learner.state_dict().items())


def test_arithmetic_bound_tasks_keep_the_loop_without_a_vmap_trial(monkeypatch):
    """Above the per-task activation limit, vmap is not timed (its trial alone would multiply peak memory)."""
    from fastadapt.tasks.episodes import TaskBatch

    def omniglot_like(queries: int) -> TaskBatch:
        g = torch.Generator().manual_seed(0)
        labels = torch.arange(5)
        support = torch.randn(2, 5, 1, 28, 28, generator=g)
        query = torch.randn(2, 5 * queries, 1, 28, 28, generator=g)
        return TaskBatch(support, labels.repeat(2, 1), query, labels.repeat_interleave(queries).repeat(2, 1), 5)

    from fastadapt.nets import Conv4

    learner = MAML(Conv4(1, 16, 5, norm="episode"), inner_lr=0.4, strategy="auto", channels_last=False)
    one, fifteen = saved_activation_mib(learner, omniglot_like(1)), saved_activation_mib(learner, omniglot_like(15))
    assert 0 < one < fifteen  # the query pass dominates what a task keeps for backward
    assert all(p.grad is None for p in learner.parameters())

    def no_timing(*args, **kwargs):
        raise AssertionError("vmap must not be tried")

    monkeypatch.setattr("fastadapt.engine.strategy.time_strategies", no_timing)
    monkeypatch.setattr("fastadapt.engine.strategy.VMAP_TRIAL_LIMIT_MIB", (one + fifteen) / 2)
    measured = choose_strategy(learner, omniglot_like(15))
    assert learner.strategy == "loop" and measured["vmap_tried"] is False
    assert measured["saved_mib_per_task"] == fifteen
    learner.strategy = "auto"
    monkeypatch.setattr("fastadapt.engine.strategy.time_strategies", lambda *a, **k: {"loop": 2.0, "fold": 1.0})
    assert choose_strategy(learner, omniglot_like(1))["strategy"] == "fold" == learner.strategy


def test_vmap_is_timed_where_the_network_does_not_fold():
    """A softmax over the features would mix the folded tasks' channels: vmap is the candidate."""
    learner = MAML(torch.nn.Sequential(torch.nn.Linear(1, 8), torch.nn.Softmax(dim=-1), torch.nn.Linear(8, 1)))
    assert "Softmax" in learner.fold_problem()
    measured = choose_strategy(MAML(learner.model, strategy="auto"), SinusoidTasks(5, 5, seed=0).sample(4), trials=1)
    assert set(measured["seconds"]) == {"loop", "vmap"} and measured["vectorised"] == "vmap"


def test_fixed_strategies_and_methods_without_one_are_left_alone():
    learner = MAML(MLP(1, (8,), 1), strategy="vmap", workers=1)
    assert choose_strategy(learner, SinusoidTasks(5, 5).sample(2)) == {}
    assert learner.strategy == "vmap"
    assert choose_strategy(ProtoNet(torch.nn.Identity()), None) == {}


def test_open_workers_are_measured_one_against_one_per_thread(monkeypatch):
    """workers=None: one worker is timed against one per thread, with the strategy fixed or not; the real
    timing runs threads and changes nothing."""
    batch = SinusoidTasks(5, 5, seed=0).sample(4)
    learner = MAML(MLP(1, (8,), 1), inner_lr=0.01, strategy="loop")
    monkeypatch.setattr(learner, "most_workers", lambda: 2)
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    measured = choose_strategy(learner, batch, trials=1)
    assert set(measured["seconds"]) == {"loop", "loop, 2 workers"} and learner.workers in (1, 2)
    assert all(torch.equal(before[k], v) for k, v in learner.state_dict().items())
    assert all(p.grad is None for p in learner.parameters())

    seen = []

    def timing(learner, batch, trials, candidates):
        seen.append(candidates)
        return {"loop": 2.0, "loop, 2 workers": 1.5, "fold": 1.2, "fold, 2 workers": 1.8}

    monkeypatch.setattr("fastadapt.engine.strategy.time_strategies", timing)
    learner.strategy, learner.workers = "auto", None
    measured = choose_strategy(learner, batch)
    assert seen == [[("loop", 1, None), ("loop", 2, None), ("fold", 1, None), ("fold", 2, None)]]
    assert (learner.strategy, learner.workers) == ("fold", 1) == (measured["strategy"], measured["workers"])


def test_auto_training_records_its_choice_in_the_checkpoint(tmp_path):
    config = make_config(
        "maml", "sinusoid", steps=3, val_every=3, val_episodes=2, meta_batch_size=2, strategy="auto", out=str(tmp_path)
    )
    result = train(config, progress=False)
    assert result.learner.strategy in ("loop", "fold")
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["strategy"] == result.learner.strategy
    assert state["workers"] == result.learner.workers == 1  # the tests run one torch thread


def test_resume_keeps_the_measured_choice(tmp_path, monkeypatch):
    config = make_config(
        "maml", "sinusoid", steps=2, val_every=2, val_episodes=2, meta_batch_size=2, strategy="auto", out=str(tmp_path)
    )
    first = train(config, progress=False).learner.strategy
    other = {"loop": "fold", "fold": "loop"}[first]
    # Were it measured again, the other strategy would win; the resumed run must keep the saved one.
    monkeypatch.setattr("fastadapt.engine.strategy.time_strategies", lambda *a, **k: {first: 9.0, other: 1.0})
    resumed = train(make_config(**{**config.to_dict(), "steps": 4}), resume=True, progress=False)
    assert resumed.learner.strategy == first


def test_open_layout_is_measured_on_image_batches():
    """channels_last=None: both layouts are timed on image batches (really, here) and the faster is kept; nothing
    else changes. Batches without images keep the standard layout, untimed."""
    from helpers import image_batch

    from fastadapt.nets import Conv4Stride

    torch.manual_seed(0)
    learner = MAML(Conv4Stride(1, 8, 3), inner_lr=0.4, strategy="loop", workers=1)
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    measured = choose_strategy(learner, image_batch(tasks=2, ways=3, shots=1, query=2, dtype=torch.float32), trials=1)
    assert set(measured["seconds"]) == {"loop", "loop, channels-last"}
    fastest = min(measured["seconds"], key=measured["seconds"].get)
    assert learner.channels_last == measured["channels_last"] == (fastest == "loop, channels-last")
    assert all(torch.equal(before[k], v) for k, v in learner.state_dict().items())
    assert all(p.grad is None for p in learner.parameters())

    learner = MAML(MLP(1, (8,), 1), inner_lr=0.01, strategy="loop", workers=1)
    assert choose_strategy(learner, SinusoidTasks(5, 5, seed=0).sample(2)) == {}
    assert learner.channels_last is False


def test_a_network_that_fails_on_channels_last_images_keeps_the_standard_layout(monkeypatch):
    from helpers import random_batch

    from fastadapt.engine.strategy import describe_choice

    class FlattenByView(torch.nn.Module):  # .view needs the standard layout of 3-channel images
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(3 * 4 * 4, 3)

        def forward(self, x):
            return self.linear(x.view(len(x), -1))

    seen = []
    monkeypatch.setattr(
        "fastadapt.engine.strategy.time_strategies", lambda learner, batch, trials, c: seen.append(c) or {}
    )
    learner = MAML(FlattenByView(), inner_lr=0.1, strategy="loop", workers=None)
    monkeypatch.setattr(learner, "most_workers", lambda: 2)
    measured = choose_strategy(learner, random_batch(tasks=2, shape=(3, 4, 4), dtype=torch.float32))
    assert seen == [[("loop", 1, False), ("loop", 2, False)]]
    assert learner.channels_last is False and measured["channels_last_failed"]
    assert "channels-last not tried" in describe_choice(measured)


def test_the_measured_layout_is_checkpointed_resumed_and_evaluated_with(tmp_path, monkeypatch):
    from helpers import make_image_folder

    from fastadapt.evaluate import load_learner

    folder = make_image_folder(tmp_path / "images", size=16)
    settings = dict(data_dir=str(folder), image_size=16, ways=3, shots=1, query=2, eval_query=2, meta_batch_size=2)
    config = make_config(
        "maml", "folder", steps=2, val_every=2, val_episodes=2, test_episodes=2, strategy="loop", workers=1,
        network="conv4-stride", out=str(tmp_path / "run"), **settings,
    )  # fmt: skip
    monkeypatch.setattr(
        "fastadapt.engine.strategy.time_strategies", lambda *a, **k: {"loop": 2.0, "loop, channels-last": 1.0}
    )
    assert train(config, progress=False).learner.channels_last is True
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["channels_last"] is True
    # Were it measured again, the standard layout would win; the resumed run and evaluation keep the saved one.
    monkeypatch.setattr(
        "fastadapt.engine.strategy.time_strategies", lambda *a, **k: {"loop": 1.0, "loop, channels-last": 2.0}
    )
    resumed = train(make_config(**{**config.to_dict(), "steps": 4}), resume=True, progress=False)
    assert resumed.learner.channels_last is True
    assert load_learner(tmp_path / "run" / "last.pt")[0].channels_last is True


def test_short_steps_are_timed_more_often(monkeypatch):
    """At least ``trials`` timed runs per candidate after a warm-up; more, up to MAX_TRIALS, until each candidate
    has run SECONDS_PER_CANDIDATE: three runs of a short step were too few to rank two close candidates."""
    from fastadapt.engine.strategy import MAX_TRIALS, time_strategies

    learner = MAML(MLP(1, (8,), 1), inner_lr=0.01, strategy="loop", workers=1)
    batch = SinusoidTasks(5, 5, seed=0).sample(2)
    runs = []
    real = learner.meta_backward
    monkeypatch.setattr(learner, "meta_backward", lambda b: runs.append(learner.strategy) or real(b))
    monkeypatch.setattr("fastadapt.engine.strategy.SECONDS_PER_CANDIDATE", 0.0)
    monkeypatch.setattr("fastadapt.engine.strategy.CLOSE_MARGIN", 0.0)  # close candidates: the next test
    time_strategies(learner, batch, trials=2)
    assert runs == ["loop", "vmap"] * 3
    runs.clear()
    monkeypatch.setattr("fastadapt.engine.strategy.SECONDS_PER_CANDIDATE", 3600.0)
    assert set(time_strategies(learner, batch, trials=2)) == {"loop", "vmap"}
    assert runs == ["loop", "vmap"] * (MAX_TRIALS + 1)


def test_close_candidates_take_more_turns_and_are_ranked_on_all_their_trials(monkeypatch):
    """On a clock that each candidate's step advances by a fixed cost: after the first pass (a warm-up and two timed
    trials of a 1 s step), the two within CLOSE_MARGIN of each other run CLOSE_SECONDS more each, the third does not."""
    import fastadapt.engine.strategy as strategy

    learner = MAML(MLP(1, (8,), 1), inner_lr=0.01, strategy="loop", workers=1)
    clock, runs = [0.0], []
    cost = {("loop", 1): 1.0, ("vmap", 1): 1.05, ("loop", 2): 2.0}

    def step(batch):
        runs.append((learner.strategy, learner.workers))
        clock[0] += cost[runs[-1]]

    monkeypatch.setattr(learner, "meta_backward", step)
    monkeypatch.setattr(strategy.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(strategy, "release_freed_memory", lambda: None)
    monkeypatch.setattr(strategy, "CLOSE_SECONDS", 2.0)
    candidates = [("loop", 1, None), ("vmap", 1, None), ("loop", 2, None)]
    seconds = strategy.time_strategies(learner, SinusoidTasks(5, 5, seed=0).sample(2), 2, candidates)
    assert runs == [("loop", 1), ("vmap", 1), ("loop", 2)] * 3 + [("loop", 1), ("vmap", 1)] * 2
    assert seconds == pytest.approx({"loop": 1.0, "vmap": 1.05, "loop, 2 workers": 2.0})


def test_freed_memory_is_given_back_after_every_trial(monkeypatch):
    """Each trial's freed blocks go back to the system before the next candidate runs, so that the measurement's
    peak memory is one candidate's (fastadapt.engine.taskpool.release_freed_memory)."""
    from fastadapt.engine.strategy import time_strategies
    from fastadapt.engine.taskpool import release_freed_memory

    release_freed_memory()  # callable here, whatever the C library
    learner = MAML(MLP(1, (8,), 1), inner_lr=0.01, strategy="loop", workers=1)
    events = []
    real = learner.meta_backward
    monkeypatch.setattr(learner, "meta_backward", lambda b: events.append(learner.strategy) or real(b))
    monkeypatch.setattr("fastadapt.engine.strategy.release_freed_memory", lambda: events.append("released"))
    monkeypatch.setattr("fastadapt.engine.strategy.SECONDS_PER_CANDIDATE", 0.0)
    monkeypatch.setattr("fastadapt.engine.strategy.CLOSE_MARGIN", 0.0)
    time_strategies(learner, SinusoidTasks(5, 5, seed=0).sample(2), trials=1)
    assert events == ["loop", "released", "vmap", "released"] * 2


def test_timings_wait_for_the_gpu_and_measuring_forks_its_random_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU the clock is read after the queued kernels finish, and fork_rng is given the GPU (mocked: no GPU
    here); on the CPU neither happens."""
    from types import SimpleNamespace

    from fastadapt.engine.strategy import generators_of, synchronize

    waited = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: waited.append(device))
    on_gpu = SimpleNamespace(support_x=SimpleNamespace(is_cuda=True, device=torch.device("cuda", 1)))
    synchronize(on_gpu)
    assert waited == [torch.device("cuda", 1)] and generators_of(on_gpu) == [1]
    on_cpu = SimpleNamespace(support_x=torch.zeros(1))
    synchronize(on_cpu)
    assert waited == [torch.device("cuda", 1)] and generators_of(on_cpu) == []
