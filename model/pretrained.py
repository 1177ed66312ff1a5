"""Starting weights for fine-tuning: torchvision's ImageNet weights or one of our checkpoints.

ImageNet weights go through torchvision's weights API, which reads the torch hub cache
(``$TORCH_HOME/hub/checkpoints``) and downloads only when the file is missing. The
classifier head (``fc``) is never loaded: it is rebuilt for the data set's classes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.error import URLError

import torch
from torch import nn

from model.checkpoint import load_checkpoint
from model.errors import PretrainedError
from model.settings import IMAGENET_DEPTHS

if TYPE_CHECKING:
    import torchvision

HEAD_PREFIX = "fc."


def imagenet_weights(depth: int) -> torchvision.models.WeightsEnum:
    # torchvision's import (~1 s) is paid only by studies that load ImageNet weights.
    import torchvision

    if depth not in IMAGENET_DEPTHS:
        raise PretrainedError(
            f"pretrained: imagenet needs depth in {list(IMAGENET_DEPTHS)}, got {depth}"
        )
    return torchvision.models.get_model_weights(f"resnet{depth}").IMAGENET1K_V1


def imagenet_cache_path(depth: int) -> Path:
    weights = imagenet_weights(depth)
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


def imagenet_state_dict(depth: int) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet-1k weights for ``resnet{depth}``, from the hub cache."""
    weights = imagenet_weights(depth)
    cached = imagenet_cache_path(depth)
    try:
        return weights.get_state_dict(progress=False)
    except (URLError, OSError, RuntimeError) as error:
        raise PretrainedError(
            f"ImageNet weights for resnet{depth} are not in the torch hub cache ({cached}) and "
            f"downloading {weights.url} failed ({error}). Download that file on a machine with "
            f"internet access and put it at {cached} (or set TORCH_HOME to a folder holding "
            f"hub/checkpoints/{cached.name})."
        ) from error


def checkpoint_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Model weights and trial settings from one of our checkpoints (or a bare state dict)."""
    path = Path(path)
    if not path.is_file():
        raise PretrainedError(f"pretrained: no checkpoint file at {path}")
    try:
        state = load_checkpoint(path)
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same message
        raise PretrainedError(f"pretrained: cannot read checkpoint {path}: {error}") from error
    if isinstance(state, dict) and "model" in state:
        return state["model"], state.get("config", {})
    if isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values()):
        return state, {}
    raise PretrainedError(f"pretrained: {path} holds neither a checkpoint nor a state dict")


def load_backbone(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy every weight but the head; any other missing or misshapen key is an error."""
    own = model.state_dict()
    backbone = {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIX)}
    missing = sorted(k for k in own if not k.startswith(HEAD_PREFIX) and k not in backbone)
    unexpected = sorted(k for k in backbone if k not in own)
    misshapen = sorted(
        k for k, v in backbone.items() if k in own and tuple(v.shape) != tuple(own[k].shape)
    )
    if missing or unexpected or misshapen:
        raise PretrainedError(
            f"pretrained weights from {source} do not fit this architecture: "
            f"missing {missing[:3]}, unexpected {unexpected[:3]}, different shapes "
            f"{misshapen[:3]}. Use the depth, stem and width they were trained with."
        )
    model.load_state_dict(backbone, strict=False)
