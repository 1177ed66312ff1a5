from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from model import (
    AUGMENTATIONS,
    SCHEDULES,
    SUPPORTED_DEPTHS,
    NonFiniteMetricError,
    TrialConfig,
    build_augmentation,
    build_optimizer,
    build_resnet,
    build_schedule,
    fit,
    load_checkpoint,
    load_digits,
)
from model.augment import random_crop, random_cutout

TINY = {"width": 0.25, "batch_size": 64, "device": "cpu", "eval_batch_size": 512}


@pytest.mark.parametrize("depth", SUPPORTED_DEPTHS)
@pytest.mark.parametrize("stem", ["cifar", "imagenet"])
def test_output_shape_for_every_depth_and_stem(depth: int, stem: str) -> None:
    model = build_resnet(depth, num_classes=7, stem=stem, width=0.125).eval()
    size = 64 if stem == "imagenet" else 16
    with torch.no_grad():
        assert model(torch.randn(2, 3, size, size)).shape == (2, 7)


@pytest.mark.parametrize("depth", [18, 34, 50])
def test_imagenet_stem_is_torchvision_exactly(depth: int) -> None:
    ours = build_resnet(depth, num_classes=1000, stem="imagenet")
    reference = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    ours_shapes = {k: v.shape for k, v in ours.state_dict().items()}
    reference_shapes = {k: v.shape for k, v in reference.state_dict().items()}
    assert ours_shapes == reference_shapes
    assert sum(p.numel() for p in ours.parameters()) == sum(
        p.numel() for p in reference.parameters()
    )
    ours.load_state_dict(reference.state_dict())  # torchvision weights load unchanged
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(ours.eval()(x), reference.eval()(x), atol=1e-5)


@pytest.mark.parametrize(("depth", "millions"), [(20, 0.27), (56, 0.85), (110, 1.7)])
def test_cifar_resnets_have_the_papers_parameter_counts(depth: int, millions: float) -> None:
    count = sum(p.numel() for p in build_resnet(depth, 10).parameters())
    assert count / 1e6 == pytest.approx(millions, rel=0.02)  # the paper rounds


def test_build_rejects_unknown_depth_and_stem() -> None:
    with pytest.raises(ValueError, match="depth must be one of"):
        build_resnet(19, 10)
    with pytest.raises(ValueError, match="stem must be one of"):
        build_resnet(20, 10, stem="vit")


def test_one_epoch_lowers_the_loss() -> None:
    data = load_digits()
    reports: list[dict] = []
    fit({**TINY, "depth": 8, "epochs": 2, "lr": 0.05, "schedule": "constant"}, data, reports.append)
    assert [r["epoch"] for r in reports] == [1, 2]
    assert reports[1]["train_loss"] < reports[0]["train_loss"] < 2.31
    for key in ("val_acc", "val_loss", "train_loss", "epoch_seconds", "images_per_s"):
        assert reports[-1][key] > 0
    assert reports[-1]["device"] == "cpu"


@pytest.mark.parametrize("name", AUGMENTATIONS)
def test_augmentations_keep_shape_and_dtype(name: str) -> None:
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    augment = build_augmentation(name, 16, fill=torch.tensor([10, 20, 30]), num_classes=10)
    out = augment.pixels(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert torch.equal(out, images) == (name == "none")
    assert (augment.mix is not None) == name.endswith(("mixup", "cutmix"))
    if augment.mix is not None:
        mixed, targets = augment.mix(out.float(), torch.arange(8) % 10)
        assert mixed.shape == images.shape and targets.shape == (8, 10)
        assert torch.allclose(targets.sum(dim=1), torch.ones(8))


def test_random_crop_is_a_shifted_window_of_the_padded_image() -> None:
    images = torch.arange(2 * 3 * 6 * 6, dtype=torch.int64).view(2, 3, 6, 6).to(torch.uint8)
    out = random_crop(images, torch.Generator().manual_seed(1), padding=2)
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for index in range(2):
        windows = [padded[index, :, y : y + 6, x : x + 6] for y in range(5) for x in range(5)]
        assert any(torch.equal(out[index], w) for w in windows)


def test_cutout_fills_one_clipped_square_per_image() -> None:
    images = torch.full((16, 3, 8, 8), 200, dtype=torch.uint8)
    out = random_cutout(images, torch.Generator().manual_seed(0), 4, torch.tensor([1, 2, 3]))
    filled = (out[:, 0] == 1).sum(dim=(1, 2))
    assert ((filled > 0) & (filled <= 16)).all()
    assert (out[:, 1][out[:, 0] == 1] == 2).all()


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_schedules_start_and_end_where_they_should(schedule: str) -> None:
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = build_optimizer("sgd", [parameter], lr=0.1, weight_decay=0, momentum=0.9)
    scheduler = build_schedule(schedule, optimizer, total_steps=100, warmup_steps=10)
    lrs = []
    for _ in range(100):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert max(lrs) <= 0.1 + 1e-9
    if schedule == "constant":
        assert lrs == [0.1] * 100
    else:
        assert lrs[-1] < 0.02
    if schedule in ("warmup_cosine", "onecycle"):
        assert lrs[0] < 0.05


def test_non_finite_loss_raises_with_the_epoch() -> None:
    data = load_digits()
    config = {**TINY, "depth": 8, "epochs": 3, "lr": 1e9, "optimizer": "sgd"}
    with pytest.raises(NonFiniteMetricError) as error:
        fit(config, data, lambda metrics: None)
    assert error.value.reason == "nan@epoch 1"


def test_checkpoint_resume_is_bit_exact(tmp_path: Path) -> None:
    """4 epochs straight == 2 epochs, a crash, and a resume from the checkpoint."""
    data = load_digits()
    config = TrialConfig(
        **TINY, depth=8, epochs=4, lr=0.05, augmentation="crop_flip", optimizer="nesterov"
    )
    straight: list[dict] = []
    fit(config, data, straight.append, tmp_path / "straight")

    class Crash(Exception):
        pass

    def crash_after_two(metrics: dict) -> None:
        if metrics["epoch"] == 2:
            raise Crash

    with pytest.raises(Crash):
        fit(config, data, crash_after_two, tmp_path / "resumed")
    assert load_checkpoint(tmp_path / "resumed" / "last.pt")["epoch"] == 2
    resumed: list[dict] = []
    fit(config, data, resumed.append, tmp_path / "resumed")
    assert [r["epoch"] for r in resumed] == [1, 2, 3, 4]
    assert [r.get("restored", False) for r in resumed] == [True, True, False, False]
    for key in ("val_acc", "val_loss", "train_loss"):
        assert resumed[-1][key] == straight[-1][key]
    a = load_checkpoint(tmp_path / "straight" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "resumed" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_trial_config_rejects_unknown_keys_and_bad_values() -> None:
    with pytest.raises(ValueError, match="lrr"):
        TrialConfig.model_validate({"lrr": 0.1})
    with pytest.raises(ValueError, match="depth must be one of"):
        TrialConfig.model_validate({"depth": 21})
    with pytest.raises(ValueError, match="augmentation"):
        TrialConfig.model_validate({"augmentation": "mosaic"})


def test_corrupt_checkpoint_falls_back_to_the_previous_one(tmp_path: Path) -> None:
    data = load_digits()
    config = TrialConfig(**TINY, depth=8, epochs=3, lr=0.05)

    class Crash(Exception):
        pass

    def crash_after(epoch: int):
        def report(metrics: dict) -> None:
            if metrics["epoch"] == epoch and not metrics.get("restored"):
                raise Crash

        return report

    with pytest.raises(Crash):
        fit(config, data, crash_after(2), tmp_path)
    last = tmp_path / "last.pt"
    last.write_bytes(last.read_bytes()[:-100])  # truncated, as by a full disk
    resumed: list[dict] = []
    fit(config, data, resumed.append, tmp_path)
    assert [r["epoch"] for r in resumed] == [1, 2, 3]  # epoch 1 from prev.pt, then 2 and 3
    assert resumed[0]["restored"] and not resumed[1].get("restored")
    assert "checksum mismatch" in resumed[0]["checkpoint_warning"]

    # Both generations unusable: start again from epoch 1, and say so.
    for name in ("last.pt", "prev.pt"):
        (tmp_path / name).write_bytes(b"garbage")
    again: list[dict] = []
    fit(config, data, again.append, tmp_path)
    assert [r["epoch"] for r in again] == [1, 2, 3]
    assert "starts from epoch 1" in again[0]["checkpoint_warning"]


@pytest.mark.slow
def test_compiled_training_runs_and_learns() -> None:
    reports: list[dict] = []
    config = {**TINY, "depth": 8, "epochs": 2, "lr": 0.05, "compile": True}
    fit(config, load_digits(), reports.append)
    assert reports[-1]["train_loss"] < reports[0]["train_loss"]
