from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from spaces import FixedParam, SpaceError, builtin_spaces, load_space, parse_space

SPACE_YAML = """
depth: {type: categorical, choices: [8, 14, 20]}
lr: {type: float, low: 1.0e-4, high: 0.3, log: true}
batch_size: {type: int, low: 32, high: 256, step: 32}
epochs_hint: {type: int, low: 1, high: 64, log: true}
optimizer: {type: categorical, choices: [sgd, adamw]}
momentum: {type: float, low: 0.8, high: 0.99, when: {optimizer: sgd}}
nesterov_hint: {type: categorical, choices: [true, false], when: {optimizer: [sgd], depth: [8, 14]}}
width: 0.5
seed: {type: fixed, value: 3}
"""


def test_yaml_round_trip_to_optuna_distributions(tmp_path: Path) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(SPACE_YAML)
    space = load_space(path)
    assert space.distributions() == {
        "depth": CategoricalDistribution((8, 14, 20)),
        "lr": FloatDistribution(1e-4, 0.3, log=True),
        "batch_size": IntDistribution(32, 256, step=32),
        "epochs_hint": IntDistribution(1, 64, log=True),
        "optimizer": CategoricalDistribution(("sgd", "adamw")),
        "momentum": FloatDistribution(0.8, 0.99),
        "nesterov_hint": CategoricalDistribution((True, False)),
    }
    assert space.fixed == {"width": 0.5, "seed": 3}
    assert isinstance(space.params["width"], FixedParam)
    assert space.params["momentum"].when == {"optimizer": ["sgd"]}  # scalar shorthand


def test_conditions_decide_which_parameters_are_sampled() -> None:
    space = parse_space(yaml.safe_load(SPACE_YAML))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen_optimizers = set()
    for _ in range(30):
        trial = study.ask()
        values = space.sample(trial)
        seen_optimizers.add(values["optimizer"])
        assert ("momentum" in values) == (values["optimizer"] == "sgd")
        assert ("nesterov_hint" in values) == (
            values["optimizer"] == "sgd" and values["depth"] in (8, 14)
        )
        assert set(trial.params) == set(values) - {"width", "seed"}
        assert values["batch_size"] % 32 == 0 and 32 <= values["batch_size"] <= 256
        assert 1e-4 <= values["lr"] <= 0.3
        assert space.required_names(values) == set(trial.params)
        study.tell(trial, 0.0)
    assert seen_optimizers == {"sgd", "adamw"}


def test_parent_is_sampled_before_a_condition_that_names_it() -> None:
    space = parse_space(
        {
            "momentum": {"type": "float", "low": 0.5, "high": 0.9, "when": {"optimizer": "sgd"}},
            "optimizer": {"type": "categorical", "choices": ["sgd", "adam"]},
        }
    )
    assert space.sampling_order() == ["optimizer", "momentum"]


def test_grid_values() -> None:
    space = parse_space(
        {
            "depth": {"type": "categorical", "choices": [8, 14]},
            "batch_size": {"type": "int", "low": 32, "high": 96, "step": 32},
            "label_smoothing": {"type": "float", "low": 0.0, "high": 0.2, "step": 0.1},
        }
    )
    grid = space.grid()
    assert grid["depth"] == [8, 14]
    assert grid["batch_size"] == [32, 64, 96]
    assert grid["label_smoothing"] == pytest.approx([0.0, 0.1, 0.2])
    with pytest.raises(SpaceError) as error:
        parse_space({"lr": {"type": "float", "low": 0.1, "high": 1.0}}).grid()
    assert error.value.path == "space.lr"


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        ({"lr": {"type": "float", "low": 0.5, "high": 0.1}}, "space.lr.low"),
        ({"lr": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}, "space.lr.low"),
        ({"lr": {"type": "float", "low": -1.0, "high": 0.1, "log": True}}, "space.lr.low"),
        ({"lr": {"type": "float", "low": "small", "high": 0.1}}, "space.lr.low"),
        ({"lr": {"type": "float", "low": 0.1, "high": 0.2, "scale": "log"}}, "space.lr.scale"),
        ({"lr": {"type": "float", "high": 0.2}}, "space.lr.low"),
        ({"lr": {"type": "float", "low": 0.1, "high": 0.2, "log": "yes"}}, "space.lr.log"),
        (
            {"lr": {"type": "float", "low": 0.1, "high": 0.2, "log": True, "step": 0.1}},
            "space.lr.step",
        ),
        ({"depth": {"type": "int", "low": 1.5, "high": 3}}, "space.depth.low"),
        (
            {"depth": {"type": "int", "low": 1, "high": 64, "log": True, "step": 2}},
            "space.depth.step",
        ),
        ({"depth": {"type": "int", "low": 8, "high": 2}}, "space.depth.low"),
        ({"opt": {"type": "categorical", "choices": []}}, "space.opt.choices"),
        ({"opt": {"type": "categorical", "choices": [[1, 2]]}}, "space.opt.choices.0"),
        ({"opt": {"type": "choice", "choices": [1]}}, "space.opt.type"),
        ({"opt": {"choices": [1]}}, "space.opt.type"),
        ({"opt": [1, 2]}, "space.opt"),
        ({"opt": {"a": 1, "type": "fixed", "value": 1}}, "space.opt.a"),
        (
            {"m": {"type": "float", "low": 0.1, "high": 0.2, "when": {"optimizer": "sgd"}}},
            "space.m.when.optimizer",
        ),
        (
            {
                "optimizer": {"type": "categorical", "choices": ["sgd"]},
                "m": {"type": "float", "low": 0.1, "high": 0.2, "when": {"optimizer": "adam"}},
            },
            "space.m.when.optimizer",
        ),
        (
            {
                "a": {"type": "categorical", "choices": [1], "when": {"b": 1}},
                "b": {"type": "categorical", "choices": [1], "when": {"a": 1}},
            },
            "space.a.when",
        ),
        ([], "space"),
        ({}, "space"),
    ],
)
def test_bad_input_names_the_field(raw: object, path: str) -> None:
    with pytest.raises(SpaceError) as error:
        parse_space(raw)
    assert error.value.path == path
    assert str(error.value).startswith(path + ": ")


def test_builtin_spaces_load() -> None:
    assert {"quickstart", "cifar10_scratch"} <= set(builtin_spaces())
    for name in builtin_spaces():
        assert load_space(name).searched


def test_missing_space_file_is_a_space_error(tmp_path: Path) -> None:
    with pytest.raises(SpaceError, match="no space file"):
        load_space(tmp_path / "nope.yaml")
