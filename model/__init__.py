"""What one trial trains: ResNets, data sets, batch augmentations, optimizers, the loop.

Names are imported on first use: ``model.settings`` (what a study file is validated against)
needs no torch, and importing it must not pay for torch's ~2 s import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, tuple[str, ...]] = {
    "model.augment": ("Augmentation", "build_augmentation"),
    "model.checkpoint": ("CHECKPOINT_NAME", "PREVIOUS_NAME", "load_checkpoint", "save_atomic"),
    "model.data": ("DataSplits", "load_cifar10", "load_dataset", "load_digits"),
    "model.device_data": ("DeviceData", "on_device"),
    "model.optim": ("build_optimizer", "build_schedule"),
    "model.errors": ("DataError", "NonFiniteMetricError", "PretrainedError"),
    "model.pretrained": (
        "imagenet_cache_path",
        "imagenet_state_dict",
        "load_backbone",
    ),
    "model.resnet": ("ResNet", "build_resnet"),
    "model.settings": (
        "AUGMENTATIONS",
        "DATASETS",
        "IMAGENET",
        "OPTIMIZERS",
        "SCHEDULES",
        "STEMS",
        "SUPPORTED_DEPTHS",
        "TrialConfig",
        "TrialSettings",
    ),
    "model.train": ("build_model", "fit", "resolve_device"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)

if TYPE_CHECKING:
    from model.augment import Augmentation, build_augmentation
    from model.checkpoint import CHECKPOINT_NAME, PREVIOUS_NAME, load_checkpoint, save_atomic
    from model.data import DataSplits, load_cifar10, load_dataset, load_digits
    from model.device_data import DeviceData, on_device
    from model.errors import DataError, NonFiniteMetricError, PretrainedError
    from model.optim import build_optimizer, build_schedule
    from model.pretrained import (
        imagenet_cache_path,
        imagenet_state_dict,
        load_backbone,
    )
    from model.resnet import ResNet, build_resnet
    from model.settings import (
        AUGMENTATIONS,
        DATASETS,
        IMAGENET,
        OPTIMIZERS,
        SCHEDULES,
        STEMS,
        SUPPORTED_DEPTHS,
        TrialConfig,
        TrialSettings,
    )
    from model.train import build_model, fit, resolve_device


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'model' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
