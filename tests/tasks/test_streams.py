import numpy as np
import pytest
import torch

from fastadapt.errors import ConfigError
from fastadapt.tasks.streams import (
    Task,
    TaskStream,
    class_sorted_stream,
    omniglot_alphabet_tasks,
    rotate_images,
)


def numbered_images(classes=12, per_class=20):
    """Image (c, i) holds the value 100 * c + i everywhere, so every image says where it came from."""
    values = (100 * torch.arange(classes)[:, None] + torch.arange(per_class)[None]).float()
    return values[:, :, None, None, None].expand(classes, per_class, 1, 3, 3).clone()


def test_stream_is_sorted_by_class_with_batch_size_one():
    images = numbered_images()
    stream = class_sorted_stream(images, 5, np.random.default_rng(0))
    steps = list(stream)
    assert len(steps) == 5 * 15
    assert all(x.shape == (1, 1, 3, 3) and y.shape == (1,) for x, y in steps)
    labels = [int(y) for _, y in steps]
    assert labels == sorted(labels) == [c for c in range(5) for _ in range(15)]  # class after class, no return
    # every step is the class's own image: the source class and the drawings 0..14, in order
    for (x, y), step in zip(steps, range(len(steps))):
        source, drawing = divmod(int(x[0, 0, 0, 0]), 100)
        assert source == stream.class_ids[int(y)] and drawing == step % 15
    held_out = stream.test_x[:, 0, 0, 0].long() % 100
    assert set(held_out.tolist()) == {15, 16, 17, 18, 19}  # the last 5 drawings, never in the stream
    assert len(set(stream.class_ids)) == 5


def test_more_classes_than_the_evaluation_set_is_refused_in_one_line():
    with pytest.raises(ConfigError) as err:
        class_sorted_stream(numbered_images(classes=12), 13, np.random.default_rng(0))
    assert "has only 12" in str(err.value) and "\n" not in str(err.value)


def test_a_stream_with_one_task_is_refused():
    task = Task("only", torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), torch.zeros(1, 3), torch.zeros(1).long())
    with pytest.raises(ConfigError, match="at least 2"):
        TaskStream("single", [task], 2)


def test_rotation_by_a_quarter_turn_is_exact():
    images = torch.arange(2 * 8 * 8, dtype=torch.float32).view(2, 8, 8)
    assert torch.allclose(rotate_images(images, 0.0), images, atol=1e-5)
    assert torch.allclose(rotate_images(images, 90.0), torch.rot90(images, 1, dims=(1, 2)), atol=1e-4)


def test_digit_streams():
    pytest.importorskip("sklearn")
    from fastadapt.tasks.streams import permuted_digits, rotated_digits

    with pytest.raises(ConfigError, match="at least 2 tasks"):
        permuted_digits(1)
    stream = permuted_digits(3, seed=0)
    first, third = stream.tasks[0], stream.tasks[2]
    assert stream.num_classes == 10 and stream.num_tasks == 3
    # the same test digits, permuted by one fixed permutation of the 64 pixels (found from the first image)
    assert torch.equal(first.test_y, third.test_y)
    assert torch.equal(first.test_x.sum(1), third.test_x.sum(1))
    rotated = rotated_digits(4)
    assert [t.name for t in rotated.tasks] == ["0 degrees", "60 degrees", "120 degrees", "180 degrees"]
    assert torch.allclose(
        rotated.tasks[3].test_x.view(-1, 8, 8), torch.rot90(first.test_x.view(-1, 8, 8), 2, (1, 2)), atol=1e-5
    )
    batches = list(stream.batches(1, 10))
    assert all(len(y) == 10 for _, y in batches[:-1]) and sum(len(y) for _, y in batches) == len(
        stream.tasks[1].train_y
    )


def test_omniglot_alphabets_are_successive_tasks_of_new_classes():
    images = numbered_images(classes=7)
    alphabets = ["b", "a", "b", "c", "a", "c", "c"]
    stream = omniglot_alphabet_tasks(images, alphabets)
    assert [t.name for t in stream.tasks] == ["a", "b", "c"] and stream.num_classes == 7
    seen = set()
    for task, name in zip(stream.tasks, "abc"):
        sources = {int(v) // 100 for v in task.train_x[:, 0, 0, 0]}
        assert sources == {i for i, a in enumerate(alphabets) if a == name}
        labels = set(task.train_y.tolist())
        assert labels == set(task.test_y.tolist()) and not labels & seen
        seen |= labels
    with pytest.raises(ConfigError):
        omniglot_alphabet_tasks(images, alphabets, num_tasks=4)
