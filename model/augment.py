"""Augmentations applied to whole uint8 batches on the training device.

No PIL and no per-image Python: each augmentation is a few tensor operations over the batch
(random offsets, masks and gathers drawn from one ``torch.Generator``), so the same code runs on
the CPU in tests and on the GPU, where per-image CPU pipelines cap throughput (DESIGN.md).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

BatchAugment = Callable[[Tensor, torch.Generator], Tensor]
AUGMENTATIONS: tuple[str, ...] = ("none", "flip", "crop_flip", "crop_flip_cutout")


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
    return cropped.permute(0, 3, 1, 2).contiguous(memory_format=torch.contiguous_format)


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


def build_augmentation(name: str, image_size: int, fill: Tensor) -> BatchAugment:
    """The batch augmentation called ``name``, scaled to ``image_size``.

    Crop padding is image_size/8 (4 px at 32 px, as in He et al. 2015) and cutout covers
    half the side (16 px at 32 px).
    """
    padding = max(1, image_size // 8)
    cutout = max(1, image_size // 2)

    def none(images: Tensor, generator: torch.Generator) -> Tensor:
        return images

    def crop_flip(images: Tensor, generator: torch.Generator) -> Tensor:
        return random_flip(random_crop(images, generator, padding), generator)

    def crop_flip_cutout(images: Tensor, generator: torch.Generator) -> Tensor:
        return random_cutout(crop_flip(images, generator), generator, cutout, fill)

    table: dict[str, BatchAugment] = {
        "none": none,
        "flip": random_flip,
        "crop_flip": crop_flip,
        "crop_flip_cutout": crop_flip_cutout,
    }
    if name not in table:
        raise ValueError(f"augmentation must be one of {list(AUGMENTATIONS)}, got {name!r}")
    return table[name]
