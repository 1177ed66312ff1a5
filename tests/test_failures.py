"""Failure reasons, and injected failures in real trial actors."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from optuna.trial import TrialState
from ray.exceptions import RayTaskError

from model import NonFiniteMetricError
from search import parse_study, run_study
from search.engine import Fault
from search.engine._failures import error_text, failure_reason
from tests import db
from tests.studies import tiny_study


def test_reasons_of_the_exceptions_trials_raise() -> None:
    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert failure_reason(oom) == "oom"
    wrapped = RayTaskError("train_trial", "Traceback ...", oom).as_instanceof_cause()
    assert failure_reason(wrapped) == "oom"
    assert failure_reason(NonFiniteMetricError(4, "val_loss")) == "nan@epoch 4"
    assert failure_reason(ValueError("bad")) == "exception:ValueError"
    assert failure_reason(None) == "exception:unknown"
    assert "Tried to allocate" in error_text(wrapped)


def test_non_finite_error_survives_pickling() -> None:
    error = pickle.loads(pickle.dumps(NonFiniteMetricError(3, "train_loss")))
    assert error.reason == "nan@epoch 3" and "train_loss" in str(error)


@pytest.mark.usefixtures("ray_session")
def test_oom_and_exception_fail_their_trials_and_the_search_goes_on(
    tmp_path: Path, study_name: str
) -> None:
    storage = f"sqlite:///{tmp_path / 'faults.db'}"
    # No ASHA here: a stop decision on the epoch before the fault would race with it.
    no_pruning = {"max_epochs": 3, "enabled": False}
    config = parse_study(tiny_study(study_name, storage, tmp_path, n_trials=5, asha=no_pruning))
    summary = run_study(config, faults={1: Fault("oom", epoch=2), 3: Fault("exception", epoch=1)})
    trials = db.load(storage, study_name).trials
    by_number = {t.number: t for t in trials}
    assert by_number[1].state == TrialState.FAIL
    assert by_number[1].user_attrs["stop_reason"] == "oom"
    assert "CUDA out of memory" in by_number[1].user_attrs["error"]
    # Epochs reported before the failure are kept.
    assert sorted(by_number[1].intermediate_values) in ([1], [1, 2])  # epoch 2 may race
    assert by_number[3].state == TrialState.FAIL
    assert by_number[3].user_attrs["stop_reason"] == "exception:InjectedError"
    others = [t for n, t in by_number.items() if n not in (1, 3)]
    assert all(t.state == TrialState.COMPLETE for t in others)
    # Failures do not use up the budget: 5 finished trials besides the 2 failed ones.
    assert summary.progress.failed == 2 and len(trials) == 7
    # Not retried: one Optuna trial per failure, and no trial left RUNNING.
    assert TrialState.RUNNING not in [t.state for t in trials]
