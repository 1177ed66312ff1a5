"""The ResNet family: the CIFAR ResNets of He et al. (2015, Sec. 4.2) and the 4-stage ResNets.

Layered like torchvision's ``resnet.py`` (blocks declare ``expansion``, ``_make_layer``, one
private builder, thin public builders) and with the same module names, so that a 4-stage model
built with ``stem="imagenet"`` and ``width=1`` has exactly the parameter names and shapes of
``torchvision.models.resnet18/34/50/101/152`` and loads their weights unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from model.settings import CIFAR_DEPTHS, FOUR_STAGE_DEPTHS, STEMS, SUPPORTED_DEPTHS


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class PadShortcut(nn.Module):
    """Option A of He et al. 2015: subsample spatially, zero-pad the new channels.

    Parameter-free, which is why the paper's CIFAR models have 0.27M (ResNet-20) parameters.
    """

    def __init__(self, out_planes: int, stride: int) -> None:
        super().__init__()
        self.out_planes = out_planes
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        missing = self.out_planes - x.shape[1]
        if missing <= 0:
            return x
        return nn.functional.pad(x, (0, 0, 0, 0, missing // 2, missing - missing // 2))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """torchvision's ResNet v1.5 bottleneck: the stride sits on the 3x3 convolution."""

    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


Block = type[BasicBlock] | type[Bottleneck]
ShortcutFactory = Callable[[int, int, int], nn.Module]


def projection_shortcut(inplanes: int, outplanes: int, stride: int) -> nn.Module:
    """torchvision's downsample: 1x1 convolution + BatchNorm (option B)."""
    return nn.Sequential(conv1x1(inplanes, outplanes, stride), nn.BatchNorm2d(outplanes))


def pad_shortcut(inplanes: int, outplanes: int, stride: int) -> nn.Module:
    return PadShortcut(outplanes, stride)


class ResNet(nn.Module):
    """A stem, ``len(stage_widths)`` stages named ``layer1..layerK``, global pooling, ``fc``."""

    def __init__(
        self,
        block: Block,
        layers: list[int],
        stage_widths: list[int],
        num_classes: int,
        stem: str,
        shortcut: ShortcutFactory,
    ) -> None:
        super().__init__()
        self.inplanes = stage_widths[0]
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        else:
            # The seeds' and the paper's CIFAR stem: 3x3, stride 1, no pooling (32 px inputs).
            self.conv1 = conv3x3(3, self.inplanes)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self._shortcut = shortcut
        self.num_stages = len(layers)
        for index, (width, blocks) in enumerate(zip(stage_widths, layers, strict=True)):
            stride = 1 if index == 0 else 2
            self.add_module(f"layer{index + 1}", self._make_layer(block, width, blocks, stride))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(stage_widths[-1] * block.expansion, num_classes)
        self._frozen: list[nn.Module] = []
        self._init_weights()

    def _make_layer(self, block: Block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = self._shortcut(self.inplanes, planes * block.expansion, stride)
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        # torchvision's initialisation, so that from-scratch runs match the reference numbers.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)

    def stages(self) -> list[nn.Module]:
        """``[stem, layer1, ..., layerK]``: the units that freeze depth counts."""
        stem = nn.ModuleList([self.conv1, self.bn1])
        return [stem, *(getattr(self, f"layer{i + 1}") for i in range(self.num_stages))]

    def freeze(self, depth: int) -> list[nn.Module]:
        """Freeze the first ``depth`` units of ``[stem, layer1, ...]``: 0 trains everything,
        1 freezes the stem, 2.. also layer1..; past the last stage only ``fc`` trains.

        Frozen parameters get ``requires_grad=False``; as the frozen units form a prefix of the
        network, autograd records nothing for them, so no backward pass runs through them.
        Their BatchNorm layers stay in eval mode (see :meth:`train`).
        """
        if depth < 0:
            raise ValueError(f"freeze depth must be >= 0, got {depth}")
        self._frozen = self.stages()[:depth]
        for unit in self._frozen:
            unit.requires_grad_(False)
        return self._frozen

    def train(self, mode: bool = True) -> ResNet:
        super().train(mode)
        for unit in self._frozen:
            unit.eval()  # frozen BatchNorm keeps its running statistics
        return self

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for index in range(self.num_stages):
            x = getattr(self, f"layer{index + 1}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


def _resnet(depth: int, num_classes: int, stem: str, width: float) -> ResNet:
    if stem not in STEMS:
        raise ValueError(f"stem must be one of {list(STEMS)}, got {stem!r}")
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width}")
    if depth in CIFAR_DEPTHS:
        blocks = CIFAR_DEPTHS[depth]
        widths = [_scaled(c, width) for c in (16, 32, 64)]
        return ResNet(BasicBlock, [blocks] * 3, widths, num_classes, stem, pad_shortcut)
    if depth in FOUR_STAGE_DEPTHS:
        kind, layers = FOUR_STAGE_DEPTHS[depth]
        block: Block = BasicBlock if kind == "basic" else Bottleneck
        widths = [_scaled(c, width) for c in (64, 128, 256, 512)]
        return ResNet(block, layers, widths, num_classes, stem, projection_shortcut)
    raise ValueError(f"depth must be one of {list(SUPPORTED_DEPTHS)}, got {depth}")


def build_resnet(depth: int, num_classes: int, stem: str = "cifar", width: float = 1.0) -> ResNet:
    """Build a ResNet.

    depth 8..110 (6n+2): 3 stages of 16/32/64 channels with parameter-free shortcuts (paper).
    depth 18..152: 4 stages of 64..512 channels; ``stem="imagenet"`` is torchvision's exact
    architecture. ``width`` scales every channel count (``0.25`` makes CPU-test-sized models).
    """
    return _resnet(depth, num_classes, stem, width)
