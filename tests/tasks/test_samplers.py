"""Episode sampling: shapes, label layout, distinctness, seeding, state, errors, batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastadapt.errors import DataError
from fastadapt.tasks.episodes import TaskBatch, stack_episodes
from fastadapt.tasks.samplers import ClassSplit, EpisodeSampler

NUM_CLASSES = 10
PER_CLASS = 7


def make_split(num_classes: int = NUM_CLASSES, per_class: int | list[int] = PER_CLASS) -> ClassSplit:
    """A split whose float 'images' (1x2x2) are filled with their own row number, so that every sampled
    example can be traced back to its row and hence to its class."""
    counts = per_class if isinstance(per_class, list) else [per_class] * num_classes
    total = sum(counts)
    images = torch.arange(total, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 1, 2, 2).contiguous()
    starts = np.cumsum([0, *counts[:-1]])
    indices = [np.arange(s, s + n) for s, n in zip(starts, counts, strict=True)]
    return ClassSplit("train", images, indices, [f"class{c}" for c in range(len(counts))])


def _rows(x: torch.Tensor) -> np.ndarray:
    """(tasks, n, 1, 2, 2) images of make_split -> (tasks, n) row numbers."""
    assert torch.equal(x, x[..., :1, :1].expand_as(x)), "an image was mixed up with another"
    return x[..., 0, 0, 0].long().numpy()


def _row_class(split: ClassSplit) -> np.ndarray:
    out = np.empty(len(split.images), dtype=np.int64)
    for c, ix in enumerate(split.class_indices):
        out[ix] = c
    return out


@pytest.mark.parametrize("ways,shots,query,tasks", [(5, 1, 3, 1), (3, 2, 5, 4), (10, 3, 4, 2)])
def test_shapes_and_labels_laid_out_class_by_class(ways: int, shots: int, query: int, tasks: int) -> None:
    split = make_split()
    batch = EpisodeSampler(split, ways, shots, query, seed=3).sample(tasks)
    assert batch.num_tasks == tasks and batch.ways == ways and batch.is_classification
    assert batch.support_x.shape == (tasks, ways * shots, 1, 2, 2)
    assert batch.query_x.shape == (tasks, ways * query, 1, 2, 2)
    assert batch.support_x.dtype == torch.float32
    assert batch.support_y.dtype == torch.int64
    expected_support = torch.arange(ways).repeat_interleave(shots).expand(tasks, -1)
    expected_query = torch.arange(ways).repeat_interleave(query).expand(tasks, -1)
    assert torch.equal(batch.support_y, expected_support)
    assert torch.equal(batch.query_y, expected_query)

    row_class = _row_class(split)
    support_cls = row_class[_rows(batch.support_x)].reshape(tasks, ways, shots)
    query_cls = row_class[_rows(batch.query_x)].reshape(tasks, ways, query)
    for t in range(tasks):
        # Label c is one class, the same for its support and query examples.
        per_label = support_cls[t, :, 0]
        assert (support_cls[t] == per_label[:, None]).all()
        assert (query_cls[t] == per_label[:, None]).all()
        # The ways classes are distinct, and no example appears twice in an episode.
        assert len(set(per_label.tolist())) == ways
        rows = np.concatenate([_rows(batch.support_x)[t], _rows(batch.query_x)[t]])
        assert len(set(rows.tolist())) == ways * (shots + query)


def test_every_class_and_example_is_eventually_drawn() -> None:
    split = make_split()
    sampler = EpisodeSampler(split, 3, 1, 1, seed=0)
    seen_rows: set[int] = set()
    for _ in range(200):
        b = sampler.sample(1)
        seen_rows |= set(_rows(b.support_x).ravel().tolist()) | set(_rows(b.query_x).ravel().tolist())
    assert seen_rows == set(range(NUM_CLASSES * PER_CLASS))


def test_label_order_is_random_across_episodes() -> None:
    """Labels follow the (random) order classes were drawn, so label 0 is not always the same class."""
    split = make_split()
    sampler = EpisodeSampler(split, 5, 1, 1, seed=0)
    row_class = _row_class(split)
    first = {int(row_class[_rows(sampler.sample(1).support_x)[0, 0]]) for _ in range(30)}
    assert len(first) > 3


def test_uint8_images_become_floats_in_unit_interval() -> None:
    images = torch.arange(4 * 5, dtype=torch.uint8).mul(12).view(20, 1, 1, 1)
    split = ClassSplit("val", images, [np.arange(i * 5, i * 5 + 5) for i in range(4)], list("abcd"))
    batch = EpisodeSampler(split, 4, 2, 3, seed=1).sample(2)
    assert batch.support_x.dtype == torch.float32
    assert 0.0 <= batch.support_x.min() and batch.query_x.max() <= 1.0
    # Every value is one of the stored bytes divided by 255.
    allowed = images.float().div(255.0).view(-1)
    assert torch.isin(batch.query_x.view(-1), allowed).all()
    assert split.images.dtype == torch.uint8  # the stored split is not converted in place


def test_same_seed_same_episodes_different_seed_different() -> None:
    split = make_split()
    a = [EpisodeSampler(split, 5, 2, 2, seed=7).sample(3) for _ in range(2)]
    assert torch.equal(a[0].support_x, a[1].support_x) and torch.equal(a[0].query_x, a[1].query_x)
    s1, s2 = EpisodeSampler(split, 5, 2, 2, seed=7), EpisodeSampler(split, 5, 2, 2, seed=7)
    for _ in range(5):
        b1, b2 = s1.sample(2), s2.sample(2)
        assert torch.equal(b1.support_x, b2.support_x) and torch.equal(b1.query_x, b2.query_x)
    other = EpisodeSampler(split, 5, 2, 2, seed=8).sample(3)
    assert not torch.equal(a[0].support_x, other.support_x)
    # Successive batches of one sampler differ too.
    s = EpisodeSampler(split, 5, 2, 2, seed=7)
    assert not torch.equal(s.sample(3).support_x, s.sample(3).support_x)


def test_state_dict_continues_the_identical_sequence() -> None:
    split = make_split()
    reference = EpisodeSampler(split, 4, 1, 2, seed=11)
    for _ in range(3):
        reference.sample(2)
    state = reference.state_dict()
    expected = [reference.sample(2) for _ in range(4)]

    # A fresh sampler with another seed, restored from the saved state, continues identically.
    restored = EpisodeSampler(split, 4, 1, 2, seed=999)
    restored.load_state_dict(state)
    for want in expected:
        got = restored.sample(2)
        assert torch.equal(got.support_x, want.support_x) and torch.equal(got.query_x, want.query_x)

    # The saved state is a snapshot, not a live view: sampling after state_dict() does not change it.
    again = EpisodeSampler(split, 4, 1, 2, seed=0)
    again.load_state_dict(state)
    assert torch.equal(again.sample(2).support_x, expected[0].support_x)


def test_state_dict_round_trips_through_torch_save(tmp_path) -> None:
    split = make_split()
    s = EpisodeSampler(split, 3, 1, 1, seed=2)
    s.sample(5)
    torch.save({"sampler": s.state_dict()}, tmp_path / "s.pt")
    state = torch.load(tmp_path / "s.pt", weights_only=True)["sampler"]
    t = EpisodeSampler(split, 3, 1, 1, seed=0)
    t.load_state_dict(state)
    assert torch.equal(s.sample(4).query_x, t.sample(4).query_x)


def test_more_ways_than_classes_is_a_data_error_naming_the_fix() -> None:
    split = make_split(num_classes=4)
    with pytest.raises(DataError) as info:
        EpisodeSampler(split, 5, 1, 1)
    msg = str(info.value)
    assert "--ways" in msg and "4" in msg and "train" in msg
    EpisodeSampler(split, 4, 1, 1)  # exactly as many classes is fine


def test_more_shots_plus_query_than_examples_is_a_data_error_naming_the_fix() -> None:
    split = make_split(num_classes=5, per_class=[7, 7, 3, 7, 7])
    with pytest.raises(DataError) as info:
        EpisodeSampler(split, 3, 2, 2)
    msg = str(info.value)
    assert "--shots" in msg and "--query" in msg
    assert "'class2'" in msg and "at most 3" in msg
    EpisodeSampler(split, 3, 1, 2)  # 3 per class fits


@pytest.mark.parametrize("ways,shots,query", [(1, 1, 1), (3, 0, 1), (3, 1, 0)])
def test_degenerate_episode_shapes_are_data_errors(ways: int, shots: int, query: int) -> None:
    with pytest.raises(DataError, match="at least"):
        EpisodeSampler(make_split(), ways, shots, query)


def test_stack_episodes_concatenates_tasks_in_order() -> None:
    sampler = EpisodeSampler(make_split(), 3, 2, 1, seed=0)
    a, b = sampler.sample(2), sampler.sample(3)
    stacked = stack_episodes([a, b])
    assert stacked.num_tasks == 5 and stacked.ways == 3
    assert torch.equal(stacked.support_x[:2], a.support_x) and torch.equal(stacked.support_x[2:], b.support_x)
    assert torch.equal(stacked.query_y[2:], b.query_y)
    # task(i) picks one episode back out, keeping a task dimension of 1.
    t = stacked.task(3)
    assert t.num_tasks == 1 and t.ways == 3
    for name in ("support_x", "support_y", "query_x", "query_y"):
        assert torch.equal(getattr(t, name), getattr(b, name)[1:2])
    # Re-stacking all single tasks gives the batch back.
    rebuilt = stack_episodes([stacked.task(i) for i in range(stacked.num_tasks)])
    assert torch.equal(rebuilt.query_x, stacked.query_x) and torch.equal(rebuilt.support_y, stacked.support_y)


def test_stack_episodes_rejects_empty_and_mixed_ways() -> None:
    with pytest.raises(ValueError, match="at least one"):
        stack_episodes([])
    split = make_split()
    three = EpisodeSampler(split, 3, 1, 1).sample(1)
    four = EpisodeSampler(split, 4, 1, 1).sample(1)
    with pytest.raises(ValueError, match="different numbers of ways"):
        stack_episodes([three, four])


def test_to_moves_every_tensor_and_keeps_ways() -> None:
    batch = EpisodeSampler(make_split(), 3, 1, 2, seed=0).sample(2)
    moved = batch.to("meta")
    assert moved is not batch and moved.ways == 3
    for name in ("support_x", "support_y", "query_x", "query_y"):
        assert getattr(moved, name).device.type == "meta"
        assert getattr(moved, name).shape == getattr(batch, name).shape
        assert getattr(batch, name).device.type == "cpu"  # the original batch is untouched
    same = batch.to("cpu")
    assert torch.equal(same.support_x, batch.support_x) and same.ways == 3


def test_regression_batch_has_no_ways() -> None:
    x = torch.zeros(2, 5, 1)
    batch = TaskBatch(x, x, x, x)
    assert not batch.is_classification and batch.to("cpu").ways is None and batch.task(1).num_tasks == 1


@pytest.mark.parametrize("channels", [1, 3])
def test_channels_last_lays_out_each_episodes_images_channels_last(channels: int) -> None:
    """Each task's (examples, C, H, W) slice is channels-last, one-channel images included (their C stride is 1,
    which torch's own conversion leaves at H * W); the values are unchanged, and a second call copies nothing."""
    from fastadapt.tasks.episodes import TaskBatch

    labels = torch.arange(2).repeat(3, 1)
    batch = TaskBatch(torch.randn(3, 2, channels, 5, 4), labels, torch.randn(3, 2, channels, 5, 4), labels, 2)
    laid_out = batch.channels_last()
    for original, copy in ((batch.support_x, laid_out.support_x), (batch.query_x, laid_out.query_x)):
        assert torch.equal(original, copy)
        assert copy[1].stride() == (5 * 4 * channels, 1, 4 * channels, channels)
        assert copy[1].is_contiguous(memory_format=torch.channels_last)
    assert laid_out.channels_last() is laid_out
    assert laid_out.support_y is batch.support_y and laid_out.ways == 2


def test_channels_last_leaves_batches_without_images_alone() -> None:
    from fastadapt.datasets.sinusoid import SinusoidTasks

    batch = SinusoidTasks(5, 5, seed=0).sample(2)
    assert not batch.has_images and batch.channels_last() is batch
