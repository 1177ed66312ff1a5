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
from search.engine import (
    RungLedger,
    RunPolicy,
    StudyASHA,
    StudySearcher,
    TrialFactory,
    TrialPayload,
    prepare_study,
    study_history,
)
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

    def __init__(
        self,
        tmp_path: Path,
        study_name: str,
        target: int,
        mode: str = "max",
        trials: dict[str, Any] | None = None,
        plan: Any = None,
        **policy: Any,
    ) -> None:
        self.storage = f"sqlite:///{tmp_path / 'studies.db'}"
        objective = {"metric": "val_acc" if mode == "max" else "val_loss"}
        config = parse_study(tiny_study(study_name, self.storage, tmp_path, objective=objective))
        self.metric = objective["metric"]
        self.study = prepare_study(config, config.resolve_space(), db.storage(self.storage))
        known = self.study.get_trials(deepcopy=False)
        finished = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in known)
        ledger = RungLedger.of_study(known)
        self.searcher = StudySearcher(
            self.study,
            config.resolve_space(),
            RunPolicy(
                metric=self.metric, mode=mode, max_epochs=MAX_EPOCHS, target_finished=target,
                finished_before=finished, **policy,
            ),
            TrialFactory(config.trial_defaults(), checkpoint_root=tmp_path / "checkpoints",
                         **(trials or {})),
            ledger,
            plan=plan,
        )  # fmt: skip
        self.scheduler = StudyASHA(
            ledger=ledger,
            history=study_history(known, ledger.trial_keys),
            direction=mode,
            max_epochs=MAX_EPOCHS,
            grace_period=1,
            reduction_factor=2,
        )
        self.scheduler.set_search_properties(self.metric, mode)
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
            value = _curve(config, epoch)
            result = {"epoch": epoch, self.metric: value if self.metric == "val_acc" else 1 - value}
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
    recorded = second.scheduler.rungs()[1]
    assert sorted(recorded) == sorted(second.searcher.ledger.trial_keys.values())
    # A fresh ASHA lets the first trial to reach a rung continue (nothing to compare with);
    # rebuilt from the study, it stops a trial that is worse than the first run's trials.
    trial_id = second.start()
    result = {"epoch": 1, "val_acc": min(recorded.values()) - 0.1}
    second.searcher.on_trial_result(trial_id, result)
    assert second.scheduler.on_trial_result(None, _Trial(trial_id), result) == "STOP"
    second.searcher.on_trial_complete(trial_id, result)
    while (trial_id := second.start()) is not None:
        second.run(trial_id)
    trials = second.trials()
    assert len(trials) == 6 and trials[4].state == TrialState.PRUNED


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


def test_a_retry_shares_its_rung_key_runs_without_its_fault_and_keeps_its_settings(
    tmp_path: Path, study_name: str
) -> None:
    from search.engine import Fault

    references = {"study:source": "/weights/last.pt"}
    tune = FakeTune(
        tmp_path, study_name, target=1, max_worker_failures=1,
        trials={"cpu_threads": 3, "faults": {0: Fault("kill", epoch=2)},
                "pretrained_paths": references},
    )  # fmt: skip
    tune.searcher.trials = TrialFactory(
        {**tune.searcher.trials.defaults, "pretrained": "study:source"},
        checkpoint_root=tune.searcher.trials.checkpoint_root, cpu_threads=3,
        faults={0: Fault("kill", epoch=2)}, pretrained_paths=references,
    )  # fmt: skip
    first = tune.start()
    payload = TrialPayload.from_config(tune.configs[first])
    assert payload.fault == Fault("kill", epoch=2) and payload.cpu_threads == 3
    assert payload.settings["pretrained"] == "/weights/last.pt"  # the file for the worker
    tune.run(first, die_at=2)
    again = tune.start()
    rerun = TrialPayload.from_config(tune.configs[again])
    assert rerun.number == payload.number and rerun.fault is None  # injected once only
    assert rerun.cpu_threads == 3 and rerun.settings == payload.settings
    ledger = tune.searcher.ledger
    assert ledger.key_of(again) == ledger.key_of(first) == ledger.trial_keys[payload.number]
    tune.run(again)
    (trial,) = tune.trials()
    assert trial.user_attrs[Attr.PRETRAINED_FROM] == "study:source"  # the study keeps the name
    assert trial.user_attrs[Attr.CONFIG]["pretrained"] == "/weights/last.pt"


def test_a_queued_retry_of_a_lost_trial_takes_the_lost_trials_rung_key(
    tmp_path: Path, study_name: str
) -> None:
    first = FakeTune(tmp_path, study_name, target=1)
    lost = first.start()
    first.searcher.on_trial_result(lost, {"epoch": 1, "val_acc": 0.5})  # then the driver dies
    study = first.study
    (running,) = study.get_trials(deepcopy=False)
    study.tell(running.number, state=TrialState.FAIL)
    study.enqueue_trial(running.params, user_attrs={Attr.RETRY_OF: running.number})
    second = FakeTune(tmp_path, study_name, target=1)
    retry = second.start()
    number = TrialPayload.from_config(second.configs[retry]).number
    assert number == 1
    assert second.searcher.ledger.key_of(retry) == second.searcher.ledger.trial_keys[0]


def test_minimizing_prunes_the_highest_losses_and_keeps_the_lowest_best(
    tmp_path: Path, study_name: str
) -> None:
    tune = FakeTune(tmp_path, study_name, target=6, mode="min")
    while (trial_id := tune.start()) is not None:
        tune.run(trial_id)
    trials = tune.trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert complete and tune.searcher.progress().best_value == min(t.value for t in complete)
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned
    at_first_rung = {t.number: t.intermediate_values[1] for t in trials}
    # Whoever ASHA stopped at the first rung had a loss above the rung's best there.
    for trial in pruned:
        if max(trial.intermediate_values) == 1:
            assert at_first_rung[trial.number] > min(at_first_rung.values())


def test_a_queue_plan_runs_the_queued_trials_only_and_describes_them(
    tmp_path: Path, study_name: str
) -> None:
    class Plan:
        def check(self, study: Any) -> None: ...

        def enqueue_missing(self, study: Any) -> int:
            return 0

        def describe(self, params: dict[str, Any]) -> dict[str, Any]:
            return {Attr.ARM: f"lr={params['lr']:.3f}"}

    tune = FakeTune(tmp_path, study_name, target=10, plan=Plan())
    for lr in (0.02, 0.05):
        tune.study.enqueue_trial({"depth": 8, "lr": lr, "optimizer": "adam"})
    while (trial_id := tune.start()) is not None:
        tune.run(trial_id)
    trials = tune.trials()
    assert [t.user_attrs[Attr.ARM] for t in trials] == ["lr=0.020", "lr=0.050"]
