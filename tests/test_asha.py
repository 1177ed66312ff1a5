"""ASHA decides from the study: the same cutoffs after a resume, a retry, or --more."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from optuna.trial import FrozenTrial, TrialState
from ray.tune.schedulers import TrialScheduler

from search import parse_study, run_study
from search.engine._asha import RungLedger, StudyASHA, rung_key, rung_keys_of
from tests import db
from tests.drivers import (
    epoch_in_flight,
    kill_driver,
    start_driver,
    trials,
    wait_until,
    write_study,
)
from tests.studies import tiny_study

RUNGS = [1, 2]  # grace_period 1, reduction_factor 2, max_epochs 4 (4 is the budget)
ASHA = {"max_epochs": 4, "grace_period": 1, "reduction_factor": 2}


@dataclass
class _Trial:
    trial_id: str


def _scheduler(history: list, keys: dict) -> StudyASHA:
    scheduler = StudyASHA(
        ledger=RungLedger(ray_keys=keys), history=history, direction="max",
        max_epochs=4, grace_period=1, reduction_factor=2,
    )  # fmt: skip
    scheduler.set_search_properties("val_acc", "max")
    return scheduler


def test_rungs_are_rebuilt_from_the_study_and_a_retry_inherits_them() -> None:
    history = [(rung_key(0), {1: 0.5, 2: 0.6}), (rung_key(1), {1: 0.3})]
    keys = {"ray-a": rung_key(2), "ray-retry": rung_key(0)}
    scheduler = _scheduler(history, keys)
    assert scheduler.rungs()[1] == {rung_key(0): 0.5, rung_key(1): 0.3}
    assert scheduler.rungs()[2] == {rung_key(0): 0.6}

    # A new trial is judged against the rebuilt rung: below its median (0.4) it stops.
    scheduler.on_trial_add(None, _Trial("ray-a"))
    assert scheduler.on_trial_result(None, _Trial("ray-a"), {"epoch": 1, "val_acc": 0.35}) == (
        TrialScheduler.STOP
    )
    assert "ray-a" in scheduler.ledger.stopped_early

    # A retry of trial 0 (new Ray id, same study key) replays epochs 1 and 2: nothing is
    # recorded twice and nothing is decided again; epoch 3 is no rung, so no decision there.
    scheduler.on_trial_add(None, _Trial("ray-retry"))
    for epoch, value in ((1, 0.5), (2, 0.6), (3, 0.1)):
        decision = scheduler.on_trial_result(
            None, _Trial("ray-retry"), {"epoch": epoch, "val_acc": value}
        )
        assert decision == TrialScheduler.CONTINUE, epoch
    assert len(scheduler.rungs()[1]) == 3 and len(scheduler.rungs()[2]) == 1


def test_a_retry_chain_shares_its_first_trials_key() -> None:
    def trial(number: int, retry_of: int | None = None) -> SimpleNamespace:
        return SimpleNamespace(number=number, user_attrs={} if retry_of is None else
                               {"retry_of": retry_of})  # fmt: skip

    keys = rung_keys_of([trial(0), trial(1, retry_of=0), trial(2, retry_of=1), trial(3)])
    assert keys == {0: rung_key(0), 1: rung_key(0), 2: rung_key(0), 3: rung_key(3)}


def _key_of_lineage(all_trials: list[FrozenTrial]) -> dict[int, str]:
    return rung_keys_of(all_trials)


def check_every_decision(all_trials: list[FrozenTrial], reduction_factor: int = 2) -> int:
    """Replay ASHA on the stored values, one trial at a time in trial order (the studies run
    one trial at a time): every PRUNED trial stopped at a rung, below that rung's cutoff
    from the trials before it, and every trial that went on was not below it. Returns how
    many trials were pruned."""
    keys = _key_of_lineage(all_trials)
    recorded: dict[int, dict[str, float]] = {m: {} for m in RUNGS}
    pruned = 0
    for trial in sorted(all_trials, key=lambda t: t.number):
        values = trial.intermediate_values
        last = max(values) if values else 0
        if trial.state == TrialState.PRUNED:
            assert last in RUNGS, f"trial {trial.number} stopped at epoch {last}, not a rung"
            pruned += 1
        for milestone in RUNGS:
            if milestone not in values or keys[trial.number] in recorded[milestone]:
                continue
            earlier = list(recorded[milestone].values())
            cutoff = (
                np.nanpercentile(earlier, (1 - 1 / reduction_factor) * 100) if earlier else None
            )
            below = cutoff is not None and values[milestone] < cutoff
            stopped_here = trial.state == TrialState.PRUNED and last == milestone
            if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
                assert stopped_here == below, (trial.number, milestone, values, cutoff)
            recorded[milestone][keys[trial.number]] = values[milestone]
    return pruned


@pytest.mark.usefixtures("ray_session")
def test_more_decides_from_the_rungs_of_the_earlier_run(tmp_path: Path, study_name: str) -> None:
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    study = tiny_study(study_name, storage, tmp_path, n_trials=4, max_concurrent=1, asha=ASHA)
    config = parse_study(study)
    run_study(config)
    # The next trials include one that learns nothing: the rungs of the first run, rebuilt
    # from the database, must stop it at epoch 1.
    db.load(storage, study_name).enqueue_trial({"lr": 1e-7, "optimizer": "sgd", "momentum": 0.9})
    run_study(config, more=3)
    final = db.trials(storage, study_name)
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in final) == 7
    hopeless = next(t for t in final if t.params.get("lr") == 1e-7)
    assert hopeless.state == TrialState.PRUNED and max(hopeless.intermediate_values) == 1
    assert check_every_decision(final) >= 1


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_a_killed_and_resumed_study_decides_as_one_run(tmp_path: Path, study_name: str) -> None:
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    study = tiny_study(study_name, storage, tmp_path, n_trials=6, max_concurrent=1, asha=ASHA,
                       fixed={"width": 0.25, "batch_size": 16, "device": "cpu",
                              "augmentation": "none"})  # fmt: skip
    study_file = write_study(tmp_path / "study.yaml", study)
    driver = start_driver(study_file)
    wait_until(
        lambda: (
            sum(t.state != TrialState.RUNNING for t in trials(storage, study_name)) >= 2
            and epoch_in_flight(storage, study_name)
        ),
        driver,
    )
    kill_driver(driver)
    run_study(parse_study(study))  # the resume, in the test's process
    final = trials(storage, study_name)
    assert any("retry_of" in t.user_attrs for t in final)
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in final) == 6
    check_every_decision(final)


def test_a_retry_queued_during_the_run_takes_the_key_of_the_trial_it_retries() -> None:
    ledger = RungLedger(trial_keys={0: rung_key(0)})
    ledger.start("ray-retry", 5, retry_of=0)
    ledger.start("ray-new", 6)
    assert ledger.key_of("ray-retry") == rung_key(0)
    assert ledger.key_of("ray-new") == rung_key(6)
    assert ledger.trial_keys == {0: rung_key(0), 5: rung_key(0), 6: rung_key(6)}
