"""What one trial trains: ResNets, data sets, batch augmentations, optimizers, the loop."""

from model.augment import AUGMENTATIONS, build_augmentation
from model.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_atomic
from model.data import DATASETS, DataError, DataSplits, load_cifar10, load_dataset, load_digits
from model.optim import OPTIMIZERS, SCHEDULES, build_optimizer, build_schedule
from model.resnet import SUPPORTED_DEPTHS, ResNet, build_resnet
from model.train import NonFiniteMetricError, TrialConfig, fit, resolve_device

__all__ = [
    "AUGMENTATIONS",
    "CHECKPOINT_NAME",
    "DATASETS",
    "OPTIMIZERS",
    "SCHEDULES",
    "SUPPORTED_DEPTHS",
    "DataError",
    "DataSplits",
    "NonFiniteMetricError",
    "ResNet",
    "TrialConfig",
    "build_augmentation",
    "build_optimizer",
    "build_resnet",
    "build_schedule",
    "fit",
    "load_checkpoint",
    "load_cifar10",
    "load_dataset",
    "load_digits",
    "resolve_device",
    "save_atomic",
]
