"""Off the quickstart's path: every sampler to its budget, a used-up grid, a tell that raises,
the progress line's counts."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from search import parse_study, run_study
from search.cli import main
from search.progress import format_progress
from search.runner import prepare_study
from search.searcher import SearchProgress, StudySearcher
from tests import db
from tests.drivers import write_study
from tests.studies import tiny_study

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@pytest.mark.usefixtures("ray_session")
@pytest.mark.parametrize("sampler", ["tpe", "random", "cmaes", "qmc"])
def test_every_sampler_runs_to_its_budget(sampler: str, tmp_path: Path, study_name: str) -> None:
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    # More trials than start-up trials, so the model-based samplers really sample.
    study = tiny_study(
        study_name,
        storage,
        tmp_path,
        n_trials=4,
        sampler={"name": sampler, "seed": 0, "n_startup_trials": 2},
        asha={"max_epochs": 2, "grace_period": 1, "reduction_factor": 2},
    )
    summary = run_study(parse_study(study))
    trials = db.trials(storage, study_name)
    assert sum(t.state in FINISHED for t in trials) == 4
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert summary.progress.finished == 4 and summary.halt_reason is None


@pytest.mark.usefixtures("ray_session")
def test_grid_ends_when_its_points_are_used_up(
    tmp_path: Path, study_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    study = tiny_study(
        study_name,
        storage,
        tmp_path,
        space={
            "depth": 8,
            "optimizer": "adam",
            "lr": {"type": "categorical", "choices": [0.01, 0.05]},
        },  # fmt: skip
        sampler={"name": "grid"},
        n_trials=5,
    )
    path = write_study(tmp_path / "grid.yaml", study)
    assert main(["run", str(path)]) == 0
    out = capsys.readouterr().out
    assert "the grid has 2 points" in out
    assert "stopped: all 2 grid points ran, fewer than n_trials (5)" in out
    trials = db.trials(storage, study_name)
    assert len(trials) == 2 and all(t.state in FINISHED for t in trials)
    assert sorted(t.params["lr"] for t in trials) == [0.01, 0.05]
    # Running it again asks nothing: the grid is done.
    assert main(["run", str(path)]) == 0
    assert len(db.trials(storage, study_name)) == 2


class _RaisingAfterTrial(optuna.samplers.RandomSampler):
    """A sampler whose after_trial hook raises, as GridSampler's study.stop() does."""

    def after_trial(self, study, trial, state, values) -> None:  # noqa: ANN001
        raise RuntimeError("after_trial hook failed")


def _searcher(tmp_path: Path, study_name: str, target: int) -> StudySearcher:
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    config = parse_study(tiny_study(study_name, storage, tmp_path))
    study = prepare_study(config, config.resolve_space(), db.storage(storage))
    study.sampler = _RaisingAfterTrial(seed=0)
    return StudySearcher(
        study,
        config.resolve_space(),
        config.trial_defaults(),
        metric="val_acc",
        mode="max",
        max_epochs=2,
        checkpoint_root=tmp_path / "checkpoints",
        asha_stopped=set(),
        target_finished=target,
    )


def test_a_tell_that_raises_is_counted_once_and_frees_the_trial(
    tmp_path: Path, study_name: str
) -> None:
    """The protocol Tune drives (suggest, results, complete) without Ray: a study write that
    raises after storing leaves the searcher's books right and its slot free."""
    searcher = _searcher(tmp_path, study_name, target=2)
    for ray_id in ("a", "b"):
        assert isinstance(searcher.suggest(ray_id), dict)
        for epoch in (1, 2):
            searcher.on_trial_result(ray_id, {"epoch": epoch, "val_acc": 0.5 + epoch / 10})
    searcher.on_trial_complete("a")
    searcher.on_trial_complete("b")
    progress = searcher.progress()
    assert (progress.complete, progress.failed, progress.running) == (2, 0, 0)
    assert searcher._open == {}  # noqa: SLF001 - nothing left to settle
    assert searcher.suggest("c") == "FINISHED"  # the budget is full: not one trial more
    trials = db.trials(f"sqlite:///{tmp_path / 'studies.db'}", study_name)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert trials[0].value == pytest.approx(0.7)


def test_a_trial_whose_result_cannot_be_stored_is_failed_not_lost(
    tmp_path: Path, study_name: str
) -> None:
    searcher = _searcher(tmp_path, study_name, target=1)
    searcher.suggest("a")
    searcher.on_trial_result("a", {"epoch": 1, "val_acc": 0.5})
    searcher.on_trial_result("a", {"epoch": 2, "val_acc": 0.6})
    tell = searcher.study.tell
    calls = []

    def failing_once(*args: object, **kwargs: object) -> None:
        calls.append(kwargs.get("state"))
        if len(calls) == 1:
            raise optuna.exceptions.StorageInternalError("connection reset")
        tell(*args, **kwargs)

    searcher.study.tell = failing_once  # type: ignore[method-assign]
    searcher.on_trial_complete("a")
    assert calls == [TrialState.COMPLETE, TrialState.FAIL]
    (trial,) = db.trials(f"sqlite:///{tmp_path / 'studies.db'}", study_name)
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs["stop_reason"] == "tell_failed"
    assert "connection reset" in trial.user_attrs["error"]
    assert searcher.progress().failed == 1 and searcher.unrecorded


def test_the_progress_line_counts_failures_apart() -> None:
    progress = SearchProgress(
        complete=2, pruned=1, failed=3, running=1, epochs_done=9, best_value=0.9, best_number=4
    )
    line = format_progress(progress, total=5, elapsed=30)
    assert line.startswith("[3/5] running 1")  # finished = COMPLETE + PRUNED, as the budget
    assert "failed 3" in line
    assert "eta 0:00:20" in line  # 3 finished in 30 s, 2 to go
    assert progress.settled == 6


@pytest.mark.usefixtures("ray_session")
def test_trials_this_run_is_what_ran(tmp_path: Path, study_name: str) -> None:
    from search.faults import Fault

    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    no_pruning = {"max_epochs": 1, "enabled": False}
    config = parse_study(tiny_study(study_name, storage, tmp_path, n_trials=2, asha=no_pruning))
    summary = run_study(config, faults={0: Fault("exception", epoch=1)})
    assert summary.progress.failed == 1 and summary.progress.finished == 2
    assert summary.trials_this_run == 3  # two finished and one failed, not the target of 2
