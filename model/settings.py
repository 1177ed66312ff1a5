"""Trial settings: the contract between a search and what one trial trains.

This module imports no torch, so that validating a study file (and every command that does
not train) stays fast. The names of the optimizers, schedules, stems, augmentations, depths
and data sets are declared here once; the modules that build them import these lists.
"""

from __future__ import annotations

import re
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

OptimizerName = Literal["sgd", "nesterov", "adam", "adamw"]
ScheduleName = Literal["constant", "step", "cosine", "onecycle", "warmup_cosine"]
StemName = Literal["cifar", "imagenet"]
AugmentationName = Literal[
    "none",
    "flip",
    "crop_flip",
    "crop_flip_cutout",
    "autoaugment",
    "randaugment",
    "trivialaugment",
    "crop_flip_mixup",
    "crop_flip_cutmix",
]
DatasetName = Literal["digits", "cifar10"]

OPTIMIZERS: tuple[str, ...] = get_args(OptimizerName)
SCHEDULES: tuple[str, ...] = get_args(ScheduleName)
STEMS: tuple[str, ...] = get_args(StemName)
AUGMENTATIONS: tuple[str, ...] = get_args(AugmentationName)
DATASETS: tuple[str, ...] = get_args(DatasetName)

# Depth -> blocks per stage. CIFAR depths are 6n+2 with n blocks in each of 3 stages
# (He et al. 2015, section 4.2).
CIFAR_DEPTHS: dict[int, int] = {8: 1, 14: 2, 20: 3, 32: 5, 44: 7, 56: 9, 110: 18}
# Depth -> block kind and blocks per stage of the 4-stage (ImageNet) ResNets.
FOUR_STAGE_DEPTHS: dict[int, tuple[str, list[int]]] = {
    18: ("basic", [2, 2, 2, 2]),
    34: ("basic", [3, 4, 6, 3]),
    50: ("bottleneck", [3, 4, 6, 3]),
    101: ("bottleneck", [3, 4, 23, 3]),
    152: ("bottleneck", [3, 8, 36, 3]),
}
SUPPORTED_DEPTHS: tuple[int, ...] = tuple(sorted({*CIFAR_DEPTHS, *FOUR_STAGE_DEPTHS}))
# ``pretrained: imagenet`` loads torchvision's weights, which exist for these depths only.
IMAGENET = "imagenet"
IMAGENET_DEPTHS: tuple[int, ...] = tuple(FOUR_STAGE_DEPTHS)
# The devices a trial can train on (auto: CUDA when there is one).
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


class TrialSettings(BaseModel):
    """Every trial setting, each validated on its own (see :class:`TrialConfig`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    depth: int = 20
    stem: StemName = "cifar"
    width: float = Field(1.0, gt=0)
    optimizer: OptimizerName = "sgd"
    lr: float = Field(0.1, gt=0)
    weight_decay: float = Field(5e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    batch_size: int = Field(128, ge=1)
    schedule: ScheduleName = "cosine"
    warmup_epochs: float = Field(1.0, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    epochs: int = Field(10, ge=1)
    augmentation: str = "crop_flip"
    seed: int = 0
    device: str = "auto"
    eval_batch_size: int = Field(1024, ge=1)
    # Fine-tuning: "imagenet", a checkpoint path, or None for random initialisation.
    pretrained: str | None = None
    freeze_depth: int = Field(0, ge=0, le=5)
    # Input side length fed to the network (resized on the device); None keeps the data's.
    resolution: int | None = Field(None, ge=8, le=1024)
    compile: bool = False

    @field_validator("depth")
    @classmethod
    def _known_depth(cls, depth: int) -> int:
        if depth not in SUPPORTED_DEPTHS:
            raise ValueError(f"depth must be one of {list(SUPPORTED_DEPTHS)}")
        return depth

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str) -> str:
        if not DEVICE_PATTERN.fullmatch(device):
            raise ValueError("device must be auto, cpu, cuda, cuda:N or mps")
        return device

    @field_validator("augmentation")
    @classmethod
    def _known_augmentation(cls, name: str) -> str:
        # A str checked here rather than a Literal: the message lists the names in one line.
        if name not in AUGMENTATIONS:
            raise ValueError(f"augmentation must be one of {list(AUGMENTATIONS)}")
        return name


class TrialConfig(TrialSettings):
    """Everything one trial trains with. Unknown keys are rejected, so a typo never trains,
    and settings that only make sense together are checked together."""

    @model_validator(mode="after")
    def _fine_tuning_is_consistent(self) -> TrialConfig:
        if self.freeze_depth and not self.pretrained:
            raise ValueError("freeze_depth > 0 needs pretrained weights (pretrained: ...)")
        imagenet_shaped = (
            self.stem == "imagenet" and self.depth in IMAGENET_DEPTHS and self.width == 1
        )
        if self.pretrained == IMAGENET and not imagenet_shaped:
            raise ValueError(
                "pretrained: imagenet needs stem: imagenet, width: 1 and depth in "
                f"{list(IMAGENET_DEPTHS)}"
            )
        return self
