"""The trial loop: ``fit(config, data, report, checkpoint_dir) -> final metrics``.

Pure by design: everything it needs comes in as arguments, it knows
nothing of studies, Ray or databases, and it talks to the outside only through ``report``
(called once per epoch) and the checkpoint folder.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from model.augment import build_augmentation
from model.checkpoint import CHECKPOINT_NAME, load_latest_good, save_atomic
from model.data import DataSplits
from model.device_data import on_device
from model.errors import NonFiniteMetricError
from model.optim import build_optimizer, build_schedule
from model.pretrained import (
    checkpoint_state_dict,
    imagenet_state_dict,
    imagenet_weights,
    load_backbone,
)
from model.resnet import ResNet, build_resnet
from model.settings import IMAGENET, TrialConfig

Report = Callable[[dict[str, Any]], None]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class _Normalizer:
    """uint8 batch -> normalised, resized network input.

    The result is channels_last everywhere (measured on this project's 2-core CPU: ResNet-20
    trains 25-35% faster than with NCHW; on GPUs it is what the tensor cores want), bf16 on
    CUDA and fp32 on the CPU. ImageNet-pretrained models get ImageNet's statistics, others
    the training split's.
    """

    def __init__(
        self, mean: Tensor, std: Tensor, device: torch.device, resolution: int | None
    ) -> None:
        self.dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        self.mean = mean.view(1, -1, 1, 1).to(device=device, dtype=self.dtype)
        self.std = std.clamp_min(1e-3).view(1, -1, 1, 1).to(device=device, dtype=self.dtype)
        self.resolution = resolution

    def __call__(self, images: Tensor) -> Tensor:
        x = (images.to(self.dtype) - self.mean) / self.std
        if self.resolution is not None and x.shape[-1] != self.resolution:
            x = nn.functional.interpolate(
                x, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False
            )
        return x.contiguous(memory_format=torch.channels_last)


def _statistics(cfg: TrialConfig, mean: Tensor, std: Tensor) -> tuple[Tensor, Tensor]:
    if cfg.pretrained != IMAGENET:
        return mean, std
    transforms = imagenet_weights(cfg.depth).transforms()
    scale = 255.0  # torchvision's statistics are for 0..1 pixels; ours are 0..255
    return (
        torch.tensor(transforms.mean, device=mean.device) * scale,
        torch.tensor(transforms.std, device=mean.device) * scale,
    )


def build_model(
    cfg: TrialConfig, num_classes: int, pretrained_file: str | Path | None = None
) -> ResNet:
    """The trial's network: initialised (or pretrained, with a new head) and frozen.
    ``pretrained_file`` is where ``cfg.pretrained``'s checkpoint is on this machine, where
    the setting names it elsewhere (a URL the caller fetched)."""
    model = build_resnet(cfg.depth, num_classes, stem=cfg.stem, width=cfg.width)
    if cfg.pretrained == IMAGENET:
        load_backbone(model, imagenet_state_dict(cfg.depth), f"torchvision resnet{cfg.depth}")
    elif cfg.pretrained:
        state, trained_with = checkpoint_state_dict(pretrained_file or cfg.pretrained)
        for key in ("depth", "stem", "width"):
            if key in trained_with and trained_with[key] != getattr(cfg, key):
                raise ValueError(
                    f"pretrained checkpoint {cfg.pretrained} was trained with {key}="
                    f"{trained_with[key]!r}, this trial has {key}={getattr(cfg, key)!r}"
                )
        load_backbone(model, state, cfg.pretrained)
    model.freeze(cfg.freeze_depth)
    return model


def _autocast(device: torch.device) -> torch.autocast:
    # bf16 on CUDA needs no loss scaler; the CPU stays in fp32 (bf16 there is slower and noisier).
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def _evaluate(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    normalize: _Normalizer,
    batch_size: int,
    device: torch.device,
) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) without label smoothing, so values compare across trials."""
    model.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    with torch.inference_mode(), _autocast(device):
        for start in range(0, len(labels), batch_size):
            x = normalize(images[start : start + batch_size])
            y = labels[start : start + batch_size]
            logits = model(x).float()
            loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum")
            correct += (logits.argmax(dim=1) == y).sum()
    count = max(1, len(labels))
    return correct.item() / count, loss_sum.item() / count


def _rng_state(generator: torch.Generator) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "generator": generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _restore(
    checkpoint_dir: str | Path | None,
    cfg: TrialConfig,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    generator: torch.Generator,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Load the newest good checkpoint of these settings into the training state; return
    the metric history it holds and warnings about checkpoints that could not be used."""
    if checkpoint_dir is None:
        return [], []
    state, warnings = load_latest_good(checkpoint_dir)
    if state is not None and state.get("config") != cfg.model_dump():
        warnings.append("the checkpoint was made with other settings; starting afresh")
        state = None
    if state is None:
        if warnings:
            warnings.append("no usable checkpoint; the trial starts from epoch 1")
        return [], warnings
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    _restore_rng(state["rng"], generator)
    return list(state["history"]), warnings


def fit(
    config: TrialConfig | Mapping[str, Any],
    data: DataSplits,
    report: Report,
    checkpoint_dir: str | Path | None = None,
    *,
    final_test: bool = False,
    pretrained_file: str | Path | None = None,
) -> dict[str, Any]:
    """Train one configuration; return the last epoch's metrics.

    After every epoch it saves the whole training state to ``checkpoint_dir/last.pt`` (if
    given) and calls ``report(metrics)`` with ``epoch``, ``val_acc``, ``val_loss``,
    ``train_loss``, ``train_acc``, ``lr``, ``epoch_seconds``, ``images_per_s`` and ``device``.
    If ``checkpoint_dir`` already holds a checkpoint of the same configuration, training
    continues after its epoch: the saved epochs are reported again first (``restored``), and
    a corrupt latest checkpoint falls back to the previous one or to epoch 1, with a
    ``checkpoint_warning`` in the first report. A NaN/Inf loss raises
    :class:`NonFiniteMetricError`.

    With an empty validation split (a refit on training + validation) the reports carry no
    ``val_*`` metrics. ``final_test`` (final evaluation only; a search never sets it)
    evaluates the test split once, after the last epoch: the last report then also carries
    ``test_acc``, ``test_loss`` and ``test_images``. If the checkpoint already holds every
    epoch, that evaluation is the one report after the restored ones.
    """
    cfg = config if isinstance(config, TrialConfig) else TrialConfig.model_validate(dict(config))
    if final_test and not len(data.test_labels):  # before training, not after it
        raise ValueError("final_test: the data has no test split (a search's data never has)")
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    torch.manual_seed(cfg.seed)
    model = build_model(cfg, data.num_classes, pretrained_file).to(
        device, memory_format=torch.channels_last
    )
    # Dynamo caches compiled code per architecture in the process, so in a reused actor only
    # the first trial of each architecture pays for compilation.
    step_model = torch.compile(model) if cfg.compile else model

    resident = on_device(data, device)
    train_x, train_y = resident.train_images, resident.train_labels
    val_x, val_y = resident.val_images, resident.val_labels
    normalize = _Normalizer(*_statistics(cfg, resident.mean, resident.std), device, cfg.resolution)
    augment = build_augmentation(
        cfg.augmentation, data.image_size, resident.mean.round(), data.num_classes
    )

    n_train = len(train_y)
    batch_size = min(cfg.batch_size, n_train)
    steps_per_epoch = math.ceil(n_train / batch_size)
    optimizer = build_optimizer(
        cfg.optimizer,
        [p for p in model.parameters() if p.requires_grad],
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        momentum=cfg.momentum,
    )
    scheduler = build_schedule(
        cfg.schedule,
        optimizer,
        total_steps=cfg.epochs * steps_per_epoch,
        warmup_steps=round(cfg.warmup_epochs * steps_per_epoch),
    )
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    generator = torch.Generator(device=device)
    generator.manual_seed(cfg.seed)

    checkpoint_path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir else None
    history, warnings = _restore(checkpoint_dir, cfg, model, optimizer, scheduler, generator)
    start_epoch = len(history) + 1
    # Whoever runs us now (a retry, a resumed study) hears the epochs it missed first.
    for index, past in enumerate(history):
        restored = {**past, "restored": True}
        if warnings and index == 0:
            restored["checkpoint_warning"] = "; ".join(warnings)
        report(restored)

    metrics: dict[str, Any] = history[-1] if history else {}
    tested = False
    for epoch in range(start_epoch, cfg.epochs + 1):
        epoch_start = time.perf_counter()
        model.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        order = torch.randperm(n_train, device=device, generator=generator)
        for start in range(0, n_train, batch_size):
            index = order[start : start + batch_size]
            x = normalize(augment.pixels(train_x[index], generator))
            y = train_y[index]
            target: Tensor = y
            if augment.mix is not None:
                x, target = augment.mix(x, y)  # soft targets
                y = target.argmax(dim=1)
            with _autocast(device):
                logits = step_model(x)
                loss = criterion(logits.float(), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.detach() * len(y)
            correct += (logits.detach().argmax(dim=1) == y).sum()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_seconds = time.perf_counter() - epoch_start
        train_loss = loss_sum.item() / n_train
        if not math.isfinite(train_loss):
            raise NonFiniteMetricError(epoch, "train_loss")
        metrics = {"epoch": epoch}
        if len(val_y):
            val_acc, val_loss = _evaluate(
                step_model, val_x, val_y, normalize, cfg.eval_batch_size, device
            )
            if not math.isfinite(val_loss):
                raise NonFiniteMetricError(epoch, "val_loss")
            metrics.update(val_acc=val_acc, val_loss=val_loss)
        metrics |= {
            "train_loss": train_loss,
            "train_acc": correct.item() / n_train,
            "lr": optimizer.param_groups[0]["lr"],
            "epoch_seconds": time.perf_counter() - epoch_start,
            "images_per_s": n_train / max(train_seconds, 1e-9),
            "device": str(device),
        }
        history.append(dict(metrics))  # the warning below belongs to this run only
        if warnings and len(history) == 1:
            metrics["checkpoint_warning"] = "; ".join(warnings)
        if checkpoint_path is not None:
            save_atomic(
                {
                    "epoch": epoch,
                    "config": cfg.model_dump(),
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "rng": _rng_state(generator),
                    "history": history,
                },
                checkpoint_path,
            )
        if final_test and epoch == cfg.epochs:
            metrics |= _test_metrics(step_model, data, normalize, cfg, device)
            tested = True
        report(metrics)
    if final_test and not tested:
        # Every epoch came from the checkpoint (the process died after saving the last one).
        metrics = {**metrics, **_test_metrics(step_model, data, normalize, cfg, device)}
        metrics.pop("restored", None)
        report(metrics)
    return metrics


def _test_metrics(
    model: nn.Module,
    data: DataSplits,
    normalize: _Normalizer,
    cfg: TrialConfig,
    device: torch.device,
) -> dict[str, Any]:
    """The one evaluation of the test split, for final evaluation."""
    images, labels = data.test_images.to(device), data.test_labels.to(device)
    test_acc, test_loss = _evaluate(model, images, labels, normalize, cfg.eval_batch_size, device)
    if not math.isfinite(test_loss):
        raise NonFiniteMetricError(cfg.epochs, "test_loss")
    return {"test_acc": test_acc, "test_loss": test_loss, "test_images": len(labels)}
