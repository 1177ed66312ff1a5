from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from search import ConfigError, load_study_file, parse_study
from tests.studies import tiny_study

REPO = Path(__file__).resolve().parent.parent


def _study(**overrides: object) -> dict:
    return tiny_study("cfg", "sqlite:///unused.db", Path("unused"), **overrides)


def test_shipped_studies_are_valid() -> None:
    for path in sorted((REPO / "studies").glob("*.yaml")):
        config = load_study_file(path)
        assert config.name
        if config.kind == "search":
            assert config.resolve_space().searched


def test_defaults_and_resolution() -> None:
    config = parse_study(_study())
    assert config.objective.metric == "val_acc"
    assert config.objective.resolved_direction == "maximize"
    assert config.trial_defaults()["epochs"] == 3
    resolved = config.resolved()
    assert resolved["space"]["lr"] == {"type": "float", "low": 0.01, "high": 0.1, "log": True}
    assert "source" not in resolved


def test_loss_objective_minimises_by_default() -> None:
    config = parse_study(_study(objective={"metric": "val_loss"}))
    assert config.objective.resolved_direction == "minimize"


def test_space_file_is_found_next_to_the_study(tmp_path: Path) -> None:
    (tmp_path / "my_space.yaml").write_text("lr: {type: float, low: 0.01, high: 0.1}\n")
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(_study(space="my_space.yaml")))
    assert set(load_study_file(tmp_path / "study.yaml").resolve_space().params) == {"lr"}


@pytest.mark.parametrize(
    ("overrides", "path"),
    [
        ({"n_trials": 0}, "n_trials"),
        ({"n_trial": 4}, "n_trial"),
        ({"asha": {"max_epochs": 3, "grace_period": 5}}, "asha"),
        ({"asha": {"max_epochs": 3, "reduction_factor": 1}}, "asha.reduction_factor"),
        ({"sampler": {"name": "bayes"}}, "sampler.name"),
        ({"objective": {"metric": "test_acc"}}, "objective.metric"),
        ({"resources": {"gpu": -1}}, "resources.gpu"),
        ({"dataset": {"name": "mnist"}}, "dataset.name"),
        ({"dataset": {"name": "digits", "val_fraction": 1.5}}, "dataset.val_fraction"),
        ({"fixed": {"batchsize": 32}}, "fixed.batchsize"),
        ({"fixed": {"epochs": 32}}, "fixed.epochs"),
        ({"fixed": {"augmentation": "mosaic"}}, "fixed.augmentation"),
        (
            {"space": {"depth": {"type": "categorical", "choices": [8, 19]}}},
            "space.depth.choices[1]",
        ),
        ({"space": {"lr": {"type": "float", "low": 0.1, "high": 0.01}}}, "space.lr.low"),
        ({"space": {"lr": {"type": "float", "low": -0.1, "high": 0.01}}}, "space.lr.low"),
        (
            {"space": {"learning_rate": {"type": "float", "low": 0.1, "high": 1}}},
            "space.learning_rate",
        ),
        ({"space": "no_such_space"}, "space"),
        ({"sampler": {"name": "grid"}}, "space.lr"),
        ({"fixed": {"device": "cuda"}}, "resources.gpu"),
    ],
)
def test_bad_study_names_the_field(overrides: dict, path: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_study(_study(**overrides), source="study.yaml")
    assert error.value.path == path
    assert str(error.value).startswith(f"study.yaml: {path}: ")


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no study file"):
        load_study_file(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_study_file(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        load_study_file(bad)


def test_cli_overrides_win(tmp_path: Path) -> None:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(_study()))
    config = load_study_file(path, {"name": "other", "storage": "sqlite:///x.db"})
    assert (config.name, config.storage) == ("other", "sqlite:///x.db")
