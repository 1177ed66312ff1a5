"""Optimizers and per-step learning-rate schedules."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR

from model.settings import OPTIMIZERS, SCHEDULES


def build_optimizer(
    name: str,
    params: Iterable[torch.nn.Parameter],
    *,
    lr: float,
    weight_decay: float,
    momentum: float,
) -> torch.optim.Optimizer:
    if name in ("sgd", "nesterov"):
        return torch.optim.SGD(
            params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=name == "nesterov"
        )
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be one of {list(OPTIMIZERS)}, got {name!r}")


class _StepShape:
    """Multiplier for step decay: x0.1 at 50% and again at 75% of training (He et al. 2015
    decay at 32k and 48k of 64k iterations)."""

    def __init__(self, total_steps: int) -> None:
        self.milestones = (total_steps // 2, (3 * total_steps) // 4)

    def __call__(self, step: int) -> float:
        return 0.1 ** sum(step >= m for m in self.milestones)


class _WarmupCosineShape:
    """Linear warm-up from ~0 over ``warmup_steps``, then cosine decay to 0."""

    def __init__(self, total_steps: int, warmup_steps: int) -> None:
        self.total_steps = max(1, total_steps)
        self.warmup_steps = max(0, min(warmup_steps, self.total_steps - 1))

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _constant(step: int) -> float:
    return 1.0


def build_schedule(
    name: str,
    optimizer: torch.optim.Optimizer,
    *,
    total_steps: int,
    warmup_steps: int,
) -> LRScheduler:
    """A scheduler stepped once per optimizer step (so short runs still get the full shape)."""
    if name == "constant":
        return LambdaLR(optimizer, _constant)
    if name == "step":
        return LambdaLR(optimizer, _StepShape(total_steps))
    if name == "cosine":
        return LambdaLR(optimizer, _WarmupCosineShape(total_steps, 0))
    if name == "warmup_cosine":
        return LambdaLR(optimizer, _WarmupCosineShape(total_steps, warmup_steps))
    if name == "onecycle":
        max_lrs = [group["lr"] for group in optimizer.param_groups]
        return OneCycleLR(optimizer, max_lr=max_lrs, total_steps=max(2, total_steps))
    raise ValueError(f"schedule must be one of {list(SCHEDULES)}, got {name!r}")
