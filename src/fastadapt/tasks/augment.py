"""Data augmentation of training episodes, as the mini-ImageNet literature uses it, on whole batches with torch
operations (torchvision does not import beside the CPU torch wheel fastadapt is developed with, and batched
ops avoid a Python loop over images).

The three operations and their defaults are those of the training transform used by MetaOptNet (Lee et al.
2019, ``data/mini_imagenet.py``) and by the many codebases derived from it -- ``RandomCrop(84, padding=8)``,
``ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4)``, ``RandomHorizontalFlip()`` -- applied in that
order, each image drawing its own parameters:

- random crop with padding: the image is padded with ``crop_padding`` black pixels on every side and a window of
  its original size is cut out at a uniformly drawn offset;
- colour jitter, with the semantics of torchvision's tensor ``ColorJitter``: factors drawn uniformly from
  ``[max(0, 1 - s), 1 + s]`` for brightness (``x * b``), contrast (blend with the mean grey level of the image)
  and saturation (blend with the image's grey version, grey = 0.2989 R + 0.587 G + 0.114 B; nothing on
  one-channel images), applied in a random order drawn per image, each result clamped to [0, 1];
- horizontal flip with probability ``flip_probability``.

A fourth operation, ``affine``, is for characters rather than photographs and is chosen by name only (``all`` stays
the three above): each image rotated by an angle drawn uniformly from ``[-rotation, rotation]`` degrees and shifted
by up to ``shift`` of its size on each axis, zeros filling what moves into view (Omniglot's background). Santoro et
al. (2016, section 4.1) augment MANN's training characters with random translations and rotations; ``affine`` takes
the rotation of the public re-implementation tristandeleu/ntm-one-shot (up to 30 degrees) and, as the shift, the
10 of 105 pixels that code draws (about 10%; it never applies it). It runs first, so a crop or a flip acts on the
moved image.

Only training episodes are augmented: :class:`AugmentedTasks` wraps the training task source, so validation and
test episodes cannot be touched by construction. Its random state is saved with the source's, so a resumed run
draws the same augmentations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from fastadapt.errors import ConfigError
from fastadapt.tasks.episodes import TaskBatch
from fastadapt.tasks.samplers import TaskSource

GREY_WEIGHTS = (0.2989, 0.587, 0.114)
OPERATIONS = ("affine", "crop", "flip", "jitter")
#: What ``--augment affine`` turns on: the rotation (degrees) and shift (fraction of the image) of MANN's reference
#: re-implementation (see the module docstring).
AFFINE_STRENGTHS = {"rotation": 30.0, "shift": 0.1}


@dataclass(frozen=True)
class AugmentOptions:
    """Which augmentations run on training episodes; zero / False turns one off."""

    crop_padding: int = field(default=8, metadata={"help": "pixels of black padding before a random crop (0: none)"})
    flip_probability: float = field(default=0.5, metadata={"help": "probability of a horizontal flip (0: none)"})
    brightness: float = field(default=0.4, metadata={"help": "brightness factor drawn from [1-b, 1+b] (0: none)"})
    contrast: float = field(default=0.4, metadata={"help": "contrast factor drawn from [1-c, 1+c] (0: none)"})
    saturation: float = field(default=0.4, metadata={"help": "saturation factor drawn from [1-s, 1+s] (0: none)"})
    rotation: float = field(default=0.0, metadata={"help": "largest random rotation in degrees (0: none)"})
    shift: float = field(default=0.0, metadata={"help": "largest random shift, a fraction of the image (0: none)"})

    def validate(self) -> None:
        if self.crop_padding < 0:
            raise ConfigError(f"augmentation crop padding must be >= 0 pixels (got {self.crop_padding}).")
        if not 0 <= self.flip_probability <= 1:
            raise ConfigError(f"augmentation flip probability must be in [0, 1] (got {self.flip_probability}).")
        for name in ("brightness", "contrast", "saturation", "rotation", "shift"):
            if getattr(self, name) < 0:
                raise ConfigError(f"augmentation {name} must be >= 0 (got {getattr(self, name)}).")

    @property
    def active(self) -> bool:
        return bool(self.crop_padding or self.flip_probability or self.jitter or self.affine)

    @property
    def affine(self) -> bool:
        return bool(self.rotation or self.shift)

    @property
    def jitter(self) -> bool:
        return bool(self.brightness or self.contrast or self.saturation)

    @classmethod
    def from_flag(cls, value: str) -> AugmentOptions:
        """``--augment`` values: "all" (crop, flip and jitter at the literature's defaults), "none", or a comma list
        of affine, crop, flip, jitter."""
        value = value.strip().lower()
        if value == "all":
            return cls()
        if value == "none":
            return cls(**{f.name: 0 for f in fields(cls)})
        chosen = {part.strip() for part in value.split(",") if part.strip()}
        unknown = chosen - set(OPERATIONS)
        if unknown or not chosen:
            raise ConfigError(
                f"unknown --augment {value!r}; use all, none, or a comma list of {', '.join(OPERATIONS)} "
                f"(e.g. crop,flip)."
            )
        off = {f.name: 0 for f in fields(cls)}
        on: dict[str, float] = dict(AFFINE_STRENGTHS) if "affine" in chosen else {}
        if "crop" in chosen:
            on["crop_padding"] = cls.crop_padding
        if "flip" in chosen:
            on["flip_probability"] = cls.flip_probability
        if "jitter" in chosen:
            on.update(brightness=cls.brightness, contrast=cls.contrast, saturation=cls.saturation)
        return cls(**{**off, **on})


def random_affine(
    images: Tensor, generator: torch.Generator, degrees: float = 10.0, scale: float = 0.1, shift: float = 0.1
) -> Tensor:
    """Each image of ``images`` (N, C, H, W) rotated by up to ``degrees``, scaled by a factor in ``1 +- scale`` and
    shifted by up to ``shift`` of its size on each axis, all drawn uniformly per image (one ``grid_sample`` for
    the batch); zeros fill what moves into view (Omniglot's background; border copies would smear strokes that
    touch the edge)."""
    n = images.shape[0]

    def uniform() -> Tensor:  # n draws from U(-1, 1)
        return torch.rand(n, generator=generator) * 2 - 1

    angle = uniform() * math.radians(degrees)
    factor = 1 + uniform() * scale
    cos, sin = torch.cos(angle) / factor, torch.sin(angle) / factor
    # affine_grid's coordinates span [-1, 1], so a shift of s of the image is 2 s there
    theta = torch.stack(
        [torch.stack([cos, -sin, uniform() * 2 * shift], 1), torch.stack([sin, cos, uniform() * 2 * shift], 1)], 1
    ).to(images)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, padding_mode="zeros", align_corners=False)


def random_crop(images: Tensor, padding: int, offsets: Tensor) -> Tensor:
    """Pad every image of ``images`` (N, C, H, W) by ``padding`` zeros and cut out an H x W window at its own
    ``offsets[n] = (top, left)``, each in ``[0, 2 * padding]``."""
    n, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (padding,) * 4)
    rows = offsets[:, 0, None] + torch.arange(h, device=images.device)  # (N, H)
    cols = offsets[:, 1, None] + torch.arange(w, device=images.device)  # (N, W)
    batch = torch.arange(n, device=images.device)[:, None, None]
    # advanced indexing over (batch, rows, cols) puts the channel dimension last: (N, H, W, C)
    return padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def grey(images: Tensor) -> Tensor:
    """(N, 1, H, W) luminance of RGB images (N, 3, H, W); one-channel images as they are."""
    if images.shape[1] == 1:
        return images
    weights = torch.tensor(GREY_WEIGHTS, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images * weights).sum(1, keepdim=True)


def _blend(images: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    return (factor * images + (1 - factor) * other).clamp_(0, 1)


def adjust_brightness(images: Tensor, factor: Tensor) -> Tensor:
    """``factor`` (N,) per image: x * b, clamped."""
    return (images * factor.view(-1, 1, 1, 1)).clamp(0, 1)


def adjust_contrast(images: Tensor, factor: Tensor) -> Tensor:
    """Blend each image with its mean grey level."""
    mean = grey(images).mean(dim=(1, 2, 3), keepdim=True)
    return _blend(images, mean, factor.view(-1, 1, 1, 1))


def adjust_saturation(images: Tensor, factor: Tensor) -> Tensor:
    """Blend each image with its grey version (no change for one channel)."""
    if images.shape[1] == 1:
        return images
    return _blend(images, grey(images), factor.view(-1, 1, 1, 1))


def _factors(strength: float, n: int, generator: torch.Generator) -> Tensor:
    low = max(0.0, 1.0 - strength)
    return low + (1.0 + strength - low) * torch.rand(n, generator=generator)


def augment_images(images: Tensor, options: AugmentOptions, generator: torch.Generator) -> Tensor:
    """``images`` (..., C, H, W) in [0, 1] with each image augmented independently (affine, crop, jitter, flip,
    in that order; see the module docstring). Parameters are drawn on the CPU from ``generator``."""
    if images.dim() < 4:
        raise ConfigError(
            f"augmentation applies to image episodes (..., C, H, W); these inputs have shape {tuple(images.shape)}."
        )
    lead, (c, h, w) = images.shape[:-3], images.shape[-3:]
    x = images.reshape(-1, c, h, w)
    n, device = x.shape[0], x.device
    if options.affine:
        x = random_affine(x, generator, degrees=options.rotation, scale=0.0, shift=options.shift)
    if options.crop_padding:
        offsets = torch.randint(0, 2 * options.crop_padding + 1, (n, 2), generator=generator)
        x = random_crop(x, options.crop_padding, offsets.to(device))
    if options.jitter:
        adjust = (adjust_brightness, adjust_contrast, adjust_saturation)
        strengths = (options.brightness, options.contrast, options.saturation)
        factors = [_factors(s, n, generator).to(device=device, dtype=x.dtype) for s in strengths]
        order = torch.argsort(torch.rand(n, 3, generator=generator), dim=1).to(device)  # a random order per image
        for position in range(3):
            out = x
            for op in range(3):
                if strengths[op]:
                    chosen = (order[:, position] == op).view(-1, 1, 1, 1)
                    out = torch.where(chosen, adjust[op](x, factors[op]), out)
            x = out
    if options.flip_probability:
        flip = (torch.rand(n, generator=generator) < options.flip_probability).to(device).view(-1, 1, 1, 1)
        x = torch.where(flip, x.flip(-1), x)
    return x.reshape(*lead, c, h, w)


def augment_batch(batch: TaskBatch, options: AugmentOptions, generator: torch.Generator) -> TaskBatch:
    """The batch with its support and query images augmented (labels unchanged)."""
    return TaskBatch(
        augment_images(batch.support_x, options, generator),
        batch.support_y,
        augment_images(batch.query_x, options, generator),
        batch.query_y,
        batch.ways,
    )


class AugmentedTasks:
    """A training :class:`~fastadapt.tasks.samplers.TaskSource` whose episodes come augmented; wrap only the
    training source with it. Saves and restores the wrapped source's state and its own."""

    def __init__(self, source: TaskSource, options: AugmentOptions, seed: int = 0) -> None:
        options.validate()
        self.source, self.options = source, options
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self, num_tasks: int) -> TaskBatch:
        batch = self.source.sample(num_tasks)
        return augment_batch(batch, self.options, self.generator) if self.options.active else batch

    def state_dict(self) -> dict[str, Any]:
        return {"source": self.source.state_dict(), "augment_rng": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.source.load_state_dict(state["source"])
        self.generator.set_state(state["augment_rng"])

    def __getattr__(self, name: str) -> Any:  # ways, shots, query, split, ... of the wrapped source
        if name == "source":
            raise AttributeError(name)
        return getattr(self.source, name)
