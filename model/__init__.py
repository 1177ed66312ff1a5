"""What one trial trains: ResNets, data sets, batch augmentations, optimizers, the loop."""

from model.augment import AUGMENTATIONS, Augmentation, build_augmentation
from model.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_atomic
from model.data import DATASETS, DataError, DataSplits, load_cifar10, load_dataset, load_digits
from model.device_data import DeviceData, on_device
from model.optim import OPTIMIZERS, SCHEDULES, build_optimizer, build_schedule
from model.pretrained import (
    IMAGENET,
    PretrainedError,
    imagenet_cache_path,
    imagenet_state_dict,
    load_backbone,
)
from model.resnet import SUPPORTED_DEPTHS, ResNet, build_resnet
from model.train import NonFiniteMetricError, TrialConfig, build_model, fit, resolve_device

__all__ = [
    "AUGMENTATIONS",
    "CHECKPOINT_NAME",
    "DATASETS",
    "IMAGENET",
    "OPTIMIZERS",
    "SCHEDULES",
    "SUPPORTED_DEPTHS",
    "Augmentation",
    "DataError",
    "DataSplits",
    "DeviceData",
    "NonFiniteMetricError",
    "PretrainedError",
    "ResNet",
    "TrialConfig",
    "build_augmentation",
    "build_model",
    "build_optimizer",
    "build_resnet",
    "build_schedule",
    "fit",
    "imagenet_cache_path",
    "imagenet_state_dict",
    "load_backbone",
    "load_checkpoint",
    "load_cifar10",
    "load_dataset",
    "load_digits",
    "on_device",
    "resolve_device",
    "save_atomic",
]
