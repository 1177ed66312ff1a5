"""Fine-tuning: freezing, ImageNet weights from the hub cache, checkpoints of other studies."""

from __future__ import annotations

import socket
from pathlib import Path

import optuna
import pytest
import torch
import torchvision
from optuna.trial import TrialState

from model import (
    PretrainedError,
    TrialConfig,
    build_model,
    build_resnet,
    fit,
    imagenet_cache_path,
    load_checkpoint,
    load_digits,
    on_device,
)
from search import ConfigError, parse_study, run_study
from search.cli import main
from search.report import build_report
from tests import db
from tests.studies import tiny_study

TINY = {"depth": 8, "width": 0.25, "batch_size": 64, "device": "cpu", "augmentation": "none"}


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("freeze_depth", [1, 2, 3, 4, 5])
def test_freezing_really_freezes(freeze_depth: int) -> None:
    model = build_resnet(18, num_classes=10, width=0.125)
    frozen_units = model.freeze(freeze_depth)
    frozen_names = {
        name
        for name, _ in model.named_parameters()
        if not _.requires_grad  # noqa: B023
    }
    before = _params(model)
    optimizer = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=0.5, momentum=0.9, weight_decay=0.1
    )
    model.train()
    assert all(not m.training for unit in frozen_units for m in unit.modules())
    for _ in range(2):
        loss = torch.nn.functional.cross_entropy(
            model(torch.randn(8, 3, 16, 16)), torch.arange(8) % 10
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = model.state_dict()
    stage_prefixes = ["conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4."]
    frozen_prefixes = tuple(stage_prefixes[: freeze_depth + 1])  # the stem is two modules
    for key, value in after.items():
        if key.startswith(frozen_prefixes):
            # Weights and BatchNorm running statistics: bit-identical.
            assert torch.equal(value, before[key]), key
    assert not torch.equal(after["fc.weight"], before["fc.weight"])
    for name, parameter in model.named_parameters():
        assert (parameter.grad is None) == (name in frozen_names)
    assert frozen_names and all(n.startswith(frozen_prefixes) for n in frozen_names)


def test_freeze_depth_needs_pretrained_weights() -> None:
    with pytest.raises(ValueError, match="freeze_depth > 0 needs pretrained"):
        TrialConfig(freeze_depth=2)
    with pytest.raises(ValueError, match="stem: imagenet"):
        TrialConfig(pretrained="imagenet", depth=20)


def test_checkpoint_fine_tunes_with_frozen_stages(tmp_path: Path) -> None:
    data = load_digits()
    fit({**TINY, "epochs": 1, "lr": 0.05}, data, lambda m: None, tmp_path / "source")
    source = load_checkpoint(tmp_path / "source" / "last.pt")["model"]
    config = {**TINY, "epochs": 1, "lr": 0.05, "pretrained": str(tmp_path / "source" / "last.pt")}
    reports: list[dict] = []
    fit({**config, "freeze_depth": 3}, data, reports.append, tmp_path / "tuned")
    tuned = load_checkpoint(tmp_path / "tuned" / "last.pt")["model"]
    for key, value in tuned.items():
        if key.startswith(("conv1.", "bn1.", "layer1.", "layer2.")):
            assert torch.equal(value, source[key]), key
        elif key.startswith("layer3.") and key.endswith("weight"):
            assert not torch.equal(value, source[key]), key
    assert reports[0]["val_acc"] > 0


def test_checkpoint_of_another_architecture_is_refused(tmp_path: Path) -> None:
    data = load_digits()
    fit({**TINY, "epochs": 1}, data, lambda m: None, tmp_path / "source")
    config = TrialConfig(**{**TINY, "depth": 14, "pretrained": str(tmp_path / "source/last.pt")})
    with pytest.raises(ValueError, match="trained with depth=8"):
        build_model(config, 10)


def test_torchvision_weights_load_from_the_hub_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    reference = torchvision.models.resnet18(weights=None)
    path = imagenet_cache_path(18)
    assert path == tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    path.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), path)

    config = TrialConfig(
        depth=18, stem="imagenet", pretrained="imagenet", freeze_depth=4, resolution=32,
        batch_size=128, epochs=1, device="cpu", augmentation="crop_flip", lr=0.01,
    )  # fmt: skip
    model = build_model(config, num_classes=10)
    ours = model.state_dict()
    for key, value in reference.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(ours[key], value), key
    assert ours["fc.weight"].shape == (10, 512)
    # One real epoch at 32 px (digits are 16 px: resized on the device).
    reports: list[dict] = []
    fit(config, load_digits(), reports.append)
    assert reports[0]["epoch"] == 1 and reports[0]["train_loss"] > 0


def _resolves(host: str) -> bool:
    try:
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False


@pytest.mark.skipif(_resolves("download.pytorch.org"), reason="needs an offline machine")
def test_missing_imagenet_weights_name_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    config = TrialConfig(depth=34, stem="imagenet", pretrained="imagenet")
    with pytest.raises(PretrainedError) as error:
        build_model(config, 10)
    message = str(error.value)
    assert str(tmp_path / "empty" / "hub" / "checkpoints" / "resnet34-b627a593.pth") in message
    assert "https://download.pytorch.org/models/resnet34-b627a593.pth" in message


def test_resolution_resizes_on_the_device() -> None:
    data = load_digits()
    seen: list[tuple[int, ...]] = []
    model_config = TrialConfig(**{**TINY, "epochs": 1, "resolution": 24, "eval_batch_size": 4096})
    original = torch.nn.Conv2d.forward

    def spy(self: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        if self.in_channels == 3:
            seen.append(tuple(x.shape[-2:]))
        return original(self, x)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.nn.Conv2d, "forward", spy)
        fit(model_config, data, lambda m: None)
    assert set(seen) == {(24, 24)}


def test_data_moves_to_the_device_once_per_process() -> None:
    data = load_digits()
    first = on_device(data, torch.device("cpu"))
    assert on_device(load_digits(), torch.device("cpu")) is first  # same data, new object
    assert on_device(load_digits(split_seed=1), torch.device("cpu")) is not first


@pytest.mark.usefixtures("ray_session")
def test_study_checkpoint_fine_tunes_in_another_study(
    storage_url: str, study_name: str, tmp_path: Path
) -> None:
    source = parse_study(tiny_study(f"{study_name}-src", storage_url, tmp_path, n_trials=2))
    run_study(source)
    best = db.load(storage_url, source.name).best_trial
    best_weights = load_checkpoint(Path(best.user_attrs["checkpoint"]) / "last.pt")["model"]

    tuned = parse_study(
        tiny_study(
            f"{study_name}-ft",
            storage_url,
            tmp_path,
            n_trials=6,
            space={
                "depth": 8,
                "pretrained": f"study:{source.name}",
                "freeze_depth": {"type": "int", "low": 0, "high": 4},
                "augmentation": {"type": "categorical", "choices": ["none", "flip", "crop_flip"]},
                "lr": {"type": "float", "low": 0.01, "high": 0.1, "log": True},
            },
            fixed={"width": 0.25, "batch_size": 64, "device": "cpu"},
            checkpoints={"keep_all": True},  # every trial's weights are inspected below
        )
    )
    run_study(tuned)
    study = db.load(storage_url, tuned.name)
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 6
    for trial in finished:
        assert trial.user_attrs["pretrained_from"] == f"study:{source.name}"
        assert trial.user_attrs["config"]["pretrained"].endswith("last.pt")
        weights = load_checkpoint(Path(trial.user_attrs["checkpoint"]) / "last.pt")["model"]
        depth = trial.params["freeze_depth"]
        # Unit 1 is the stem (conv1 + bn1), units 2.. are layer1..: depth + 1 prefixes.
        frozen = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.")[: depth + 1] if depth else ()
        # The first unit past the frozen ones trained (fc, if every stage is frozen).
        units = [u for u in ("conv1.", "layer1.", "layer2.", "layer3.", "layer4.")
                 if any(key.startswith(u) for key in best_weights)]  # fmt: skip
        trained = units[depth] if depth < len(units) else "fc."
        for key in best_weights:
            if frozen and key.startswith(frozen):
                assert torch.equal(weights[key], best_weights[key]), key
        assert any(
            not torch.equal(weights[key], best_weights[key])
            for key in best_weights
            if key.startswith(trained) and key.endswith("weight")
        )

    # Freeze depth and augmentation are searched, so the importance plot ranks them.
    report = build_report(storage_url, tuned.name)
    assert "freeze_depth" in report and "augmentation" in report


def test_unknown_source_study_is_refused_before_any_write(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = f"sqlite:///{tmp_path / 's.db'}"
    optuna.create_study(study_name="other", storage=storage)
    study = tiny_study("ft", storage, tmp_path)
    study["fixed"]["pretrained"] = "study:absent"
    path = tmp_path / "ft.yaml"
    import yaml

    path.write_text(yaml.safe_dump(study))
    assert main(["run", str(path)]) == 2
    assert "no study named 'absent'" in capsys.readouterr().err
    assert db.study_names(storage) == ["other"]


def test_contradictory_settings_fail_at_validation() -> None:
    study = tiny_study("bad", "sqlite:///x.db", Path("x"))
    study["space"]["freeze_depth"] = {"type": "int", "low": 0, "high": 3}
    with pytest.raises(ConfigError, match="freeze_depth > 0 needs pretrained"):
        parse_study(study)
