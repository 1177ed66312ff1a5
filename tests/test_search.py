"""The searcher end to end: real Ray, real ASHA, real SQLite file and real PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from optuna.trial import TrialState

from search import parse_study, run_study
from search.engine import prepare_study
from tests import db
from tests.studies import tiny_study

GOOD = {"lr": 0.05, "pretrained": None}
SLOW = {"lr": 1e-7, "pretrained": None}  # learns nothing in one epoch: ASHA stops it
DIVERGES = {"lr": 1e9, "pretrained": None}  # NaN loss in epoch 1
# Weights of another network: a safe file the driver can read, which the trial then cannot
# load into its ResNet (an exception at run time, not at validation).
OTHER_NET = "other-net.pt"


def _states_study(name: str, storage: str, output_dir: Path) -> dict:
    return tiny_study(
        name,
        storage,
        output_dir,
        space={
            "depth": 8,
            "optimizer": "sgd",
            "lr": {"type": "categorical", "choices": [0.05, 1e-7, 1e9]},
            "pretrained": {"type": "categorical", "choices": [None, str(output_dir / OTHER_NET)]},
        },
        fixed={
            "width": 0.5,
            "batch_size": 32,
            "augmentation": "none",
            "schedule": "constant",
            "device": "cpu",
        },
        n_trials=2,  # finished (COMPLETE + PRUNED) trials: failures do not use up the budget
        max_concurrent=1,  # sequential, so ASHA's rung comparison is deterministic
    )


@pytest.mark.usefixtures("ray_session")
def test_every_trial_ends_in_an_honest_state(
    storage_url: str, study_name: str, tmp_path: Path
) -> None:
    torch.save({"other.weight": torch.zeros(3)}, tmp_path / OTHER_NET)
    broken = {"lr": 0.05, "pretrained": str(tmp_path / OTHER_NET)}
    config = parse_study(_states_study(study_name, storage_url, tmp_path))
    study = prepare_study(config, config.resolve_space(), db.storage(config.storage))
    for params in (DIVERGES, broken, GOOD, SLOW):
        study.enqueue_trial(params)

    summary = run_study(config)

    trials = db.load(storage_url, study_name).trials
    assert [t.state for t in trials] == [
        TrialState.FAIL,
        TrialState.FAIL,
        TrialState.COMPLETE,
        TrialState.PRUNED,
    ]
    diverged, broken, good, slow = trials

    assert sorted(good.intermediate_values) == [1, 2, 3]
    assert good.value == good.intermediate_values[3]
    assert good.user_attrs["stop_reason"] == "completed"
    assert good.user_attrs["epochs_done"] == 3

    # The result that made ASHA stop the trial is stored too.
    assert list(slow.intermediate_values) == [1]
    assert slow.user_attrs["stop_reason"] == "asha"
    assert slow.user_attrs["epochs_done"] == 1
    assert slow.intermediate_values[1] < good.intermediate_values[1]

    assert diverged.user_attrs["stop_reason"] == "nan@epoch 1"
    assert "not finite" in diverged.user_attrs["error"]
    assert diverged.intermediate_values == {}

    assert broken.user_attrs["stop_reason"] == "exception:PretrainedError"
    assert OTHER_NET in broken.user_attrs["error"] and "do not fit" in broken.user_attrs["error"]

    for trial in trials:
        assert trial.user_attrs["ray_trial_id"]
        assert trial.user_attrs["checkpoint"].startswith(str(tmp_path))
        assert trial.user_attrs["wall_seconds"] > 0
        assert trial.user_attrs["config"]["epochs"] == 3
    for trial in (good, slow):
        assert trial.user_attrs["device"] == "cpu"
    # The checkpoint policy: the COMPLETE trial keeps its last.pt, the PRUNED one nothing.
    assert (Path(good.user_attrs["checkpoint"]) / "last.pt").is_file()
    assert not Path(slow.user_attrs["checkpoint"]).exists()

    loaded = db.load(storage_url, study_name)
    assert loaded.best_trial.number == good.number
    assert loaded.user_attrs["study_file"]["name"] == study_name
    assert loaded.user_attrs["package_version"]
    assert "git_sha" in loaded.user_attrs
    assert summary.counts == {"COMPLETE": 1, "PRUNED": 1, "FAIL": 2}
    assert summary.best_number == good.number


@pytest.mark.usefixtures("ray_session")
def test_parallel_search_records_every_epoch(
    storage_url: str, study_name: str, tmp_path: Path
) -> None:
    config = parse_study(
        tiny_study(study_name, storage_url, tmp_path, n_trials=6, sampler={"name": "tpe"})
    )
    summary = run_study(config)
    study = db.load(storage_url, study_name)
    states = [t.state for t in study.trials]
    assert len(states) == 6
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states
    assert summary.progress.finished == 6
    for trial in study.trials:
        epochs = trial.user_attrs["epochs_done"]
        assert sorted(trial.intermediate_values) == list(range(1, epochs + 1))
        if trial.state == TrialState.COMPLETE:
            assert epochs == 3
        elif trial.state == TrialState.PRUNED:
            assert epochs < 3
    # Conditional parameter: momentum only where the optimizer is SGD.
    for trial in study.trials:
        assert ("momentum" in trial.params) == (trial.params["optimizer"] == "sgd")
