"""Augmentations applied to whole uint8 batches on the training device.

No PIL and no per-image Python: crops, flips and cutout are a few tensor operations over the batch
(random offsets, masks and gathers drawn from one ``torch.Generator``), so the same code runs on the
CPU in tests and on the GPU, where per-image CPU pipelines cap throughput at a few thousand images/s
(about 0.5 ms per image per CPU core). The learned policies come from torchvision's transforms v2,
which draw one operation per call; they are applied to a fixed number of groups per batch, so each
group of images gets its own operation at a cost of ``POLICY_GROUPS`` calls per batch, not one per
image. MixUp and CutMix (also transforms v2) mix the normalised batch and return soft targets.
torchvision is imported only when one of those is built: its import costs ~1 s on a 2-core machine,
on the critical path of every trial process's start.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from model.settings import AUGMENTATIONS

BatchAugment = Callable[[Tensor, torch.Generator], Tensor]
BatchMix = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
POLICY_GROUPS = 16
# Built from torchvision's transforms v2.
TORCHVISION_POLICIES = frozenset(
    {"autoaugment", "randaugment", "trivialaugment", "crop_flip_mixup", "crop_flip_cutmix"}
)


def random_flip(images: Tensor, generator: torch.Generator) -> Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = torch.rand(images.shape[0], generator=generator, device=images.device) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def random_crop(images: Tensor, generator: torch.Generator, padding: int) -> Tensor:
    """Zero-pad by ``padding`` and take one random same-size crop per image, by gathering."""
    if padding <= 0:
        return images
    n, _, height, width = images.shape
    padded = torch.nn.functional.pad(images, (padding,) * 4)
    device = images.device
    top = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator, device=device)
    left = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator, device=device)
    rows = top + torch.arange(height, device=device)  # n x H
    cols = left + torch.arange(width, device=device)  # n x W
    batch = torch.arange(n, device=device)[:, None, None]
    # Advanced indexing on dims 0, 2, 3 puts the channel dim last: n x H x W x C.
    cropped = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
    return cropped.permute(0, 3, 1, 2).contiguous()


def random_cutout(images: Tensor, generator: torch.Generator, size: int, fill: Tensor) -> Tensor:
    """Fill one ``size x size`` square per image (centre anywhere, clipped at the border).

    DeVries & Taylor (2017) used 16 px squares on 32 px CIFAR-10 images; ``fill`` is the
    data set's mean pixel, which is what their zero after normalisation amounts to.
    """
    n, _, height, width = images.shape
    device = images.device
    cy = torch.randint(0, height, (n, 1, 1), generator=generator, device=device)
    cx = torch.randint(0, width, (n, 1, 1), generator=generator, device=device)
    ys = torch.arange(height, device=device)[None, :, None]
    xs = torch.arange(width, device=device)[None, None, :]
    top, left = cy - size // 2, cx - size // 2
    inside = (ys >= top) & (ys < top + size) & (xs >= left) & (xs < left + size)
    return torch.where(inside[:, None], fill.to(images.dtype).view(1, -1, 1, 1), images)


def grouped_policy(policy: Callable[[Tensor], Tensor], groups: int = POLICY_GROUPS) -> BatchAugment:
    """Apply a transforms-v2 policy to ``groups`` slices of the batch, each its own draw.

    Which slice gets which operation is decided by the generator's shuffle of the batch.
    """

    def apply(images: Tensor, generator: torch.Generator) -> Tensor:
        order = torch.randperm(images.shape[0], generator=generator, device=images.device)
        shuffled = images[order]
        parts = [policy(chunk) for chunk in shuffled.chunk(groups)]
        out = torch.empty_like(images)
        out[order] = torch.cat(parts)
        return out

    return apply


@dataclass(frozen=True)
class Augmentation:
    """``pixels`` runs on uint8 batches; ``mix`` (optional) on normalised batches + labels."""

    name: str
    pixels: BatchAugment
    mix: BatchMix | None = None


def _chain(*steps: BatchAugment) -> BatchAugment:
    def apply(images: Tensor, generator: torch.Generator) -> Tensor:
        for step in steps:
            images = step(images, generator)
        return images

    return apply


def build_augmentation(
    name: str, image_size: int, fill: Tensor, num_classes: int = 10
) -> Augmentation:
    """The augmentation called ``name``, scaled to ``image_size``.

    Crop padding is image_size/8 (4 px at 32 px, as in He et al. 2015) and cutout covers
    half the side (16 px at 32 px). The learned policies follow a crop and flip, as in their
    papers' CIFAR-10 set-ups.
    """
    padding = max(1, image_size // 8)
    cutout = max(1, image_size // 2)

    def crop(images: Tensor, generator: torch.Generator) -> Tensor:
        return random_crop(images, generator, padding)

    def cut(images: Tensor, generator: torch.Generator) -> Tensor:
        return random_cutout(images, generator, cutout, fill)

    def none(images: Tensor, generator: torch.Generator) -> Tensor:
        return images

    crop_flip = _chain(crop, random_flip)
    if name in TORCHVISION_POLICIES:
        from torchvision.transforms import v2
    table: dict[str, Callable[[], Augmentation]] = {
        "none": lambda: Augmentation(name, none),
        "flip": lambda: Augmentation(name, random_flip),
        "crop_flip": lambda: Augmentation(name, crop_flip),
        "crop_flip_cutout": lambda: Augmentation(name, _chain(crop, random_flip, cut)),
        "autoaugment": lambda: Augmentation(
            name,
            _chain(crop_flip, grouped_policy(v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10))),
        ),
        "randaugment": lambda: Augmentation(
            name, _chain(crop_flip, grouped_policy(v2.RandAugment()))
        ),
        "trivialaugment": lambda: Augmentation(
            name, _chain(crop_flip, grouped_policy(v2.TrivialAugmentWide()))
        ),
        "crop_flip_mixup": lambda: Augmentation(
            name, crop_flip, v2.MixUp(alpha=1.0, num_classes=num_classes)
        ),
        "crop_flip_cutmix": lambda: Augmentation(
            name, crop_flip, v2.CutMix(alpha=1.0, num_classes=num_classes)
        ),
    }
    if name not in table:
        raise ValueError(f"augmentation must be one of {list(AUGMENTATIONS)}, got {name!r}")
    return table[name]()
