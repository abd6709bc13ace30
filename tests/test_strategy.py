import torch

from fastadapt.algorithms import MAML, ProtoNet, Reptile
from fastadapt.config import make_config
from fastadapt.datasets.sinusoid import SinusoidTasks
from fastadapt.nets import MLP
from fastadapt.strategy import choose_strategy, saved_activation_mib
from fastadapt.train import train


def test_choose_strategy_measures_both_and_changes_no_parameter():
    torch.manual_seed(0)
    learner = MAML(MLP(1, (8,), 1), inner_lr=0.01, strategy="auto")
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    rng = torch.get_rng_state()
    measured = choose_strategy(learner, SinusoidTasks(5, 5, seed=0).sample(4), trials=1)
    assert set(measured["seconds"]) == {"loop", "vmap"}
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

    learner = MAML(Conv4(1, 16, 5, norm="episode"), inner_lr=0.4, strategy="auto")
    one, fifteen = saved_activation_mib(learner, omniglot_like(1)), saved_activation_mib(learner, omniglot_like(15))
    assert 0 < one < fifteen  # the query pass dominates what a task keeps for backward
    assert all(p.grad is None for p in learner.parameters())

    def no_timing(*args, **kwargs):
        raise AssertionError("vmap must not be tried")

    monkeypatch.setattr("fastadapt.strategy.time_strategies", no_timing)
    monkeypatch.setattr("fastadapt.strategy.VMAP_TRIAL_LIMIT_MIB", (one + fifteen) / 2)
    measured = choose_strategy(learner, omniglot_like(15))
    assert learner.strategy == "loop" and measured["vmap_tried"] is False
    assert measured["saved_mib_per_task"] == fifteen
    learner.strategy = "auto"
    monkeypatch.setattr("fastadapt.strategy.time_strategies", lambda *a, **k: {"loop": 2.0, "vmap": 1.0})
    assert choose_strategy(learner, omniglot_like(1))["strategy"] == "vmap" == learner.strategy


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
        return {"loop": 2.0, "loop, 2 workers": 1.5, "vmap": 1.2, "vmap, 2 workers": 1.8}

    monkeypatch.setattr("fastadapt.strategy.time_strategies", timing)
    learner.strategy, learner.workers = "auto", None
    measured = choose_strategy(learner, batch)
    assert seen == [[("loop", 1), ("loop", 2), ("vmap", 1), ("vmap", 2)]]
    assert (learner.strategy, learner.workers) == ("vmap", 1) == (measured["strategy"], measured["workers"])


def test_auto_training_records_its_choice_in_the_checkpoint(tmp_path):
    config = make_config(
        "maml", "sinusoid", steps=3, val_every=3, val_episodes=2, meta_batch_size=2, strategy="auto", out=str(tmp_path)
    )
    result = train(config, progress=False)
    assert result.learner.strategy in ("loop", "vmap")
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["strategy"] == result.learner.strategy
    assert state["workers"] == result.learner.workers == 1  # the tests run one torch thread


def test_resume_keeps_the_measured_choice(tmp_path, monkeypatch):
    config = make_config(
        "maml", "sinusoid", steps=2, val_every=2, val_episodes=2, meta_batch_size=2, strategy="auto", out=str(tmp_path)
    )
    first = train(config, progress=False).learner.strategy
    other = {"loop": "vmap", "vmap": "loop"}[first]
    # Were it measured again, the other strategy would win; the resumed run must keep the saved one.
    monkeypatch.setattr("fastadapt.strategy.time_strategies", lambda *a, **k: {first: 9.0, other: 1.0})
    resumed = train(make_config(**{**config.to_dict(), "steps": 4}), resume=True, progress=False)
    assert resumed.learner.strategy == first
