"""Batched augmentation against per-image references written out by hand."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from fastadapt.datasets.sinusoid import SinusoidTasks
from fastadapt.errors import ConfigError
from fastadapt.tasks.augment import (
    AugmentedTasks,
    AugmentOptions,
    adjust_brightness,
    adjust_contrast,
    adjust_saturation,
    augment_images,
    random_crop,
)
from fastadapt.tasks.samplers import ClassSplit, EpisodeSampler

NONE = AugmentOptions.from_flag("none")


def _images(n=6, c=3, h=7, w=9, seed=0) -> torch.Tensor:
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_random_crop_matches_a_shifted_window() -> None:
    x = _images()
    pad = 3
    offsets = torch.tensor([[0, 0], [6, 6], [3, 3], [1, 5], [6, 0], [2, 4]])
    out = random_crop(x, pad, offsets)
    for n, (top, left) in enumerate(offsets.tolist()):
        padded = np.zeros((3, 7 + 2 * pad, 9 + 2 * pad))
        padded[:, pad : pad + 7, pad : pad + 9] = x[n].numpy()
        np.testing.assert_array_equal(out[n].numpy(), padded[:, top : top + 7, left : left + 9])
    assert torch.equal(out[2], x[2])  # the centred window is the image itself


def test_jitter_operations_by_hand() -> None:
    x = _images(n=2)
    b = torch.tensor([0.6, 1.4], dtype=torch.float64)
    np.testing.assert_allclose(adjust_brightness(x, b)[1].numpy(), np.clip(x[1].numpy() * 1.4, 0, 1))
    r, g, bl = x[0].numpy()
    grey = 0.2989 * r + 0.587 * g + 0.114 * bl
    np.testing.assert_allclose(adjust_contrast(x, b)[0].numpy(), np.clip(0.6 * x[0].numpy() + 0.4 * grey.mean(), 0, 1))
    np.testing.assert_allclose(adjust_saturation(x, b)[0].numpy(), np.clip(0.6 * x[0].numpy() + 0.4 * grey, 0, 1))
    one = x[:, :1]
    assert torch.equal(adjust_saturation(one, b), one)  # no colour to change
    np.testing.assert_allclose(
        adjust_contrast(one, b)[0].numpy(), np.clip(0.6 * one[0].numpy() + 0.4 * one[0].numpy().mean(), 0, 1)
    )


def test_each_operation_alone_against_reference() -> None:
    """Replaying the generator's draws per image reproduces the batched result."""
    x = _images(n=5)
    crop = AugmentOptions(crop_padding=2, flip_probability=0, brightness=0, contrast=0, saturation=0)
    g = torch.Generator().manual_seed(3)
    out = augment_images(x, crop, g)
    offsets = torch.randint(0, 5, (5, 2), generator=torch.Generator().manual_seed(3))
    assert torch.equal(out, random_crop(x, 2, offsets))

    flip = AugmentOptions(crop_padding=0, flip_probability=0.5, brightness=0, contrast=0, saturation=0)
    out = augment_images(x, flip, torch.Generator().manual_seed(4))
    flipped = torch.rand(5, generator=torch.Generator().manual_seed(4)) < 0.5
    assert 0 < flipped.sum() < 5
    for n in range(5):
        assert torch.equal(out[n], x[n].flip(-1) if flipped[n] else x[n])


def test_jitter_in_a_random_order_per_image() -> None:
    x = _images(n=8)
    options = AugmentOptions(crop_padding=0, flip_probability=0, brightness=0.4, contrast=0.3, saturation=0.2)
    out = augment_images(x, options, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    factors = [0.6 + 0.8 * torch.rand(8, generator=g), 0.7 + 0.6 * torch.rand(8, generator=g),
               0.8 + 0.4 * torch.rand(8, generator=g)]  # fmt: skip
    order = torch.argsort(torch.rand(8, 3, generator=g), dim=1)
    adjust = (adjust_brightness, adjust_contrast, adjust_saturation)
    orders = set()
    for n in range(8):
        expected = x[n : n + 1]
        for op in order[n].tolist():
            expected = adjust[op](expected, factors[op][n : n + 1].double())
        orders.add(tuple(order[n].tolist()))
        torch.testing.assert_close(out[n : n + 1], expected)
    assert len(orders) > 1  # the images did not all share one order


def test_shapes_ranges_and_determinism() -> None:
    x = _images(n=12).reshape(2, 6, 3, 7, 9).float()  # (tasks, examples, C, H, W)
    options = AugmentOptions(crop_padding=2)
    a = augment_images(x, options, torch.Generator().manual_seed(0))
    b = augment_images(x, options, torch.Generator().manual_seed(0))
    c = augment_images(x, options, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(augment_images(x, NONE, torch.Generator()), x)


def test_training_source_augmented_and_resumable() -> None:
    images = (torch.rand(40, 3, 10, 10, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    split = ClassSplit("train", images, [np.arange(i * 8, (i + 1) * 8) for i in range(5)], [f"c{i}" for i in range(5)])
    plain = EpisodeSampler(split, ways=3, shots=2, query=2, seed=7)
    tasks = AugmentedTasks(EpisodeSampler(split, ways=3, shots=2, query=2, seed=7), AugmentOptions(), seed=1)
    reference, batch = plain.sample(2), tasks.sample(2)
    assert torch.equal(batch.support_y, reference.support_y) and torch.equal(batch.query_y, reference.query_y)
    assert batch.support_x.shape == reference.support_x.shape and not torch.equal(batch.support_x, reference.support_x)
    assert tasks.ways == 3  # the wrapped source's attributes
    state = tasks.state_dict()
    after = tasks.sample(3)
    tasks.load_state_dict(state)
    again = tasks.sample(3)
    assert torch.equal(after.support_x, again.support_x) and torch.equal(after.query_x, again.query_x)
    untouched = AugmentedTasks(EpisodeSampler(split, 3, 2, 2, seed=7), NONE).sample(2)
    assert torch.equal(untouched.support_x, reference.support_x)


def test_flag_values() -> None:
    assert AugmentOptions.from_flag("all") == AugmentOptions()
    assert not NONE.active
    only = AugmentOptions.from_flag("crop, flip")
    assert only.crop_padding == 8 and only.flip_probability == 0.5 and not only.jitter
    assert AugmentOptions.from_flag("jitter").brightness == 0.4 and AugmentOptions.from_flag("jitter").crop_padding == 0
    with pytest.raises(ConfigError, match="unknown --augment 'rotate'"):
        AugmentOptions.from_flag("rotate")
    with pytest.raises(ConfigError, match="crop padding"):
        AugmentOptions(crop_padding=-1).validate()
    with pytest.raises(ConfigError, match="flip probability"):
        AugmentedTasks(SinusoidTasks(), AugmentOptions(flip_probability=2))


def test_refuses_non_image_episodes() -> None:
    with pytest.raises(ConfigError, match="augmentation applies to image episodes"):
        AugmentedTasks(SinusoidTasks(), AugmentOptions()).sample(2)


def _dot_image(n: int, size: int, row: float, col: float) -> torch.Tensor:
    """n copies of a small Gaussian dot at (row, col) pixels, as (n, 1, size, size)."""
    grid = torch.arange(size, dtype=torch.float64)
    dot = torch.exp(-((grid[:, None] - row) ** 2 + (grid[None, :] - col) ** 2) / 2.0)
    return dot.expand(n, 1, size, size).clone()


def _centroids(images: torch.Tensor) -> torch.Tensor:
    """(n, 2) centre of mass (row, col) of each image, in pixels."""
    size = images.shape[-1]
    grid = torch.arange(size, dtype=images.dtype)
    mass = images.sum(dim=(1, 2, 3))
    rows = (images.sum(dim=(1, 3)) * grid).sum(1) / mass
    cols = (images.sum(dim=(1, 2)) * grid).sum(1) / mass
    return torch.stack([rows, cols], 1)


def test_affine_rotates_within_its_angle_about_the_centre_and_shifts_within_its_fraction() -> None:
    size, centre = 41, 20.0
    options = AugmentOptions.from_flag("affine")
    assert (options.rotation, options.shift) == (30.0, 0.1) and options.affine and not options.crop_padding
    assert not options.flip_probability and not options.jitter

    # rotation alone: a dot 12 pixels right of the centre stays 12 pixels from it, at an angle within 30 degrees
    rotate = dataclasses.replace(NONE, rotation=30.0)
    moved = augment_images(_dot_image(200, size, centre, centre + 12), rotate, torch.Generator().manual_seed(0))
    offset = _centroids(moved) - centre
    torch.testing.assert_close(offset.norm(dim=1), torch.full((200,), 12.0, dtype=offset.dtype), atol=0.05, rtol=0)
    angles = torch.rad2deg(torch.atan2(offset[:, 0], offset[:, 1]))
    assert angles.abs().max() <= 30.0 + 0.3 and angles.abs().max() > 25.0  # the whole range is drawn, no more
    assert angles.min() < -10 and angles.max() > 10  # both senses

    # shift alone: the centroid of a centred dot moves by up to 10% of the image on each axis, mass kept
    shift = dataclasses.replace(NONE, shift=0.1)
    images = _dot_image(200, size, centre, centre)
    moved = augment_images(images, shift, torch.Generator().manual_seed(1))
    displacement = _centroids(moved) - centre
    assert displacement.abs().max() <= 0.1 * size + 0.05 and displacement.abs().max() > 0.08 * size
    torch.testing.assert_close(moved.sum(dim=(1, 2, 3)), images.sum(dim=(1, 2, 3)), rtol=1e-3, atol=0)
    with pytest.raises(ConfigError, match="rotation must be >= 0"):
        AugmentOptions(rotation=-1).validate()
