"""The searcher's protocol with ASHA, driven by a fake Tune controller: no Ray processes, no
training, a real SQLite study. What Tune does is replayed in its order (suggest, one result
per epoch, the scheduler's decision, complete or error), so every rule of the protocol is
checked in well under a second per case."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from optuna.trial import TrialState
from ray.exceptions import RayActorError
from ray.tune.schedulers import TrialScheduler

from search.config import parse_study
from search.engine import RunPolicy, StudyASHA, StudySearcher, TrialPayload, prepare_study
from search.engine._asha import RungLedger, study_history
from search.engine._payload import TrialFactory
from search.keys import Attr, Reason
from tests import db
from tests.studies import tiny_study

MAX_EPOCHS = 4


class _Trial:
    def __init__(self, trial_id: str) -> None:
        self.trial_id = trial_id


def _curve(config: dict[str, Any], epoch: int) -> float:
    """A deterministic learning curve: higher learning rates learn faster here."""
    return round(1 - math.exp(-epoch * config["trial"]["lr"] * 10), 6)


class FakeTune:
    """What Tune's controller does with a searcher and a scheduler, one step at a time."""

    def __init__(self, tmp_path: Path, study_name: str, target: int, **policy: Any) -> None:
        self.storage = f"sqlite:///{tmp_path / 'studies.db'}"
        config = parse_study(tiny_study(study_name, self.storage, tmp_path))
        self.study = prepare_study(config, config.resolve_space(), db.storage(self.storage))
        known = self.study.get_trials(deepcopy=False)
        finished = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in known)
        ledger = RungLedger.of_study(known)
        self.searcher = StudySearcher(
            self.study,
            config.resolve_space(),
            RunPolicy(
                metric="val_acc", mode="max", max_epochs=MAX_EPOCHS, target_finished=target,
                finished_before=finished, **policy,
            ),
            TrialFactory(config.trial_defaults(), checkpoint_root=tmp_path / "checkpoints"),
            ledger,
        )  # fmt: skip
        self.scheduler = StudyASHA(
            ledger=ledger,
            history=study_history(known, ledger.trial_keys),
            direction="max",
            max_epochs=MAX_EPOCHS,
            grace_period=1,
            reduction_factor=2,
        )
        self.scheduler.set_search_properties("val_acc", "max")
        self.configs: dict[str, dict[str, Any]] = {}
        self.next_id = 0

    def start(self) -> str | None:
        trial_id = f"ray-{self.next_id}"
        config = self.searcher.suggest(trial_id)
        if not isinstance(config, dict):
            return None
        self.next_id += 1
        self.configs[trial_id] = config
        self.scheduler.on_trial_add(None, _Trial(trial_id))
        return trial_id

    def run(self, trial_id: str, fail_at: int | None = None, die_at: int | None = None) -> None:
        """Report epochs until the scheduler stops the trial, or it fails or dies."""
        config = self.configs[trial_id]
        for epoch in range(1, MAX_EPOCHS + 1):
            if die_at == epoch:
                self.searcher.on_trial_complete(trial_id, error=True)
                self.searcher.record_failure(trial_id, RayActorError())
                return
            if fail_at == epoch:
                result = {"failure": "exception:OSError[ENOSPC]", "error": "No space left"}
                self.searcher.on_trial_complete(trial_id, result)
                return
            result = {"epoch": epoch, "val_acc": _curve(config, epoch)}
            self.searcher.on_trial_result(trial_id, result)
            decision = self.scheduler.on_trial_result(None, _Trial(trial_id), result)
            if decision == TrialScheduler.STOP:
                self.scheduler.on_trial_complete(None, _Trial(trial_id), result)
                self.searcher.on_trial_complete(trial_id, result)
                return
        raise AssertionError("the scheduler let a trial run past max_epochs")

    def trials(self) -> list:
        return db.trials(self.storage, self.study.study_name)


def test_pruned_and_complete_trials_are_recorded_as_they_ended(
    tmp_path: Path, study_name: str
) -> None:
    tune = FakeTune(tmp_path, study_name, target=6)
    while (trial_id := tune.start()) is not None:
        tune.run(trial_id)
    assert tune.searcher.suggest("one-more") == "FINISHED"
    trials = tune.trials()
    assert len(trials) == 6 and not [t for t in trials if not t.state.is_finished()]
    for trial in trials:
        epochs = sorted(trial.intermediate_values)
        assert epochs == list(range(1, len(epochs) + 1))  # every epoch it ran, none twice
        if trial.state == TrialState.COMPLETE:
            assert epochs[-1] == MAX_EPOCHS and trial.value == trial.intermediate_values[4]
            assert trial.user_attrs[Attr.STOP_REASON] == Reason.COMPLETED
        else:
            assert trial.state == TrialState.PRUNED
            assert trial.user_attrs[Attr.STOP_REASON] == Reason.ASHA
            assert epochs[-1] in (1, 2)  # stopped at a rung: grace 1, reduction factor 2
        assert trial.user_attrs[Attr.CONFIG]["lr"] == trial.params["lr"]
    assert {t.state for t in trials} == {TrialState.COMPLETE, TrialState.PRUNED}
    progress = tune.searcher.progress()
    assert progress.finished == 6 and progress.best_value == max(
        t.value for t in trials if t.state == TrialState.COMPLETE
    )


def test_a_dead_worker_reruns_the_same_trial_and_a_failure_does_not_use_the_budget(
    tmp_path: Path, study_name: str
) -> None:
    tune = FakeTune(tmp_path, study_name, target=2, max_worker_failures=1)
    first = tune.start()
    payload = TrialPayload.from_config(tune.configs[first])
    tune.run(first, die_at=2)
    again = tune.start()  # the same study trial, as a new Ray trial
    assert TrialPayload.from_config(tune.configs[again]).number == payload.number
    tune.run(again)
    failing = tune.start()
    tune.run(failing, fail_at=1)
    while (trial_id := tune.start()) is not None:
        tune.run(trial_id)
    trials = tune.trials()
    assert trials[0].user_attrs[Attr.WORKER_FAILURES] == 1 and trials[0].state.is_finished()
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert [t.user_attrs[Attr.STOP_REASON] for t in failed] == ["exception:OSError[ENOSPC]"]
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 2


def test_the_same_failure_three_times_in_a_row_stops_proposing(
    tmp_path: Path, study_name: str
) -> None:
    tune = FakeTune(tmp_path, study_name, target=10)
    for _ in range(3):
        tune.run(tune.start(), fail_at=1)
    assert tune.start() is None
    assert tune.searcher.gave_up
    assert "3 trials in a row failed with exception:OSError[ENOSPC]" in tune.searcher.halt_reason


def test_a_second_run_prunes_from_the_first_runs_rungs(tmp_path: Path, study_name: str) -> None:
    first = FakeTune(tmp_path, study_name, target=4)
    while (trial_id := first.start()) is not None:
        first.run(trial_id)
    second = FakeTune(tmp_path, study_name, target=6)
    assert second.scheduler.rungs()[1]  # rebuilt from the study, not empty
    while (trial_id := second.start()) is not None:
        second.run(trial_id)
    assert len(second.trials()) == 6


@pytest.mark.parametrize("lost", [True, False], ids=["lease-lost", "lease-held"])
def test_nothing_is_written_once_the_lease_is_lost(
    tmp_path: Path, study_name: str, lost: bool
) -> None:
    tune = FakeTune(tmp_path, study_name, target=2)
    trial_id = tune.start()
    tune.searcher.on_trial_result(trial_id, {"epoch": 1, "val_acc": 0.5})
    tune.searcher.write_allowed = lambda: not lost
    tune.searcher.on_trial_result(trial_id, {"epoch": 2, "val_acc": 0.6})
    tune.searcher.close()
    (trial,) = tune.trials()
    if lost:
        assert trial.state == TrialState.RUNNING  # the new holder settles it
        assert list(trial.intermediate_values) == [1]
        assert tune.searcher.halt_reason == "lease_lost"
    else:
        assert trial.state == TrialState.FAIL
        assert trial.user_attrs[Attr.STOP_REASON] == Reason.INTERRUPTED
