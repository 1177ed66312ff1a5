"""Off the quickstart's path: every sampler to its budget, a used-up grid, a tell that raises,
the progress line's counts."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from search import parse_study, run_study
from search.cli import main
from search.engine import (
    RungLedger,
    RunPolicy,
    SearchProgress,
    StudySearcher,
    TrialFactory,
    prepare_study,
)
from search.engine._progress import format_progress
from spaces import parse_space
from tests import db
from tests.drivers import write_study
from tests.studies import tiny_study

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@pytest.mark.usefixtures("ray_session")
@pytest.mark.parametrize("sampler", ["tpe", "random", "cmaes", "qmc"])
def test_every_sampler_runs_to_its_budget(
    sampler: str, tmp_path: Path, study_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
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
    said = [line for line in capsys.readouterr().out.splitlines() if "drawn independently" in line]
    if sampler in ("cmaes", "qmc"):  # they model numeric parameters only, and say so once
        names = "depth, optimizer, momentum"
        assert said == [f"sampler {sampler} models numeric parameters only: {names} are drawn "
                        "independently, at random"]  # fmt: skip
    else:
        assert said == []


GRID_SPACE = {
    "depth": 8,
    "lr": {"type": "categorical", "choices": [0.01, 0.05]},
    "optimizer": {"type": "categorical", "choices": ["sgd", "adam"]},
    "momentum": {"type": "categorical", "choices": [0.8, 0.9], "when": {"optimizer": "sgd"}},
}


def test_the_grid_covers_active_combinations_only() -> None:
    points = parse_space(GRID_SPACE).grid_points()
    # lr (2) x (adam, or sgd with 2 momenta): 6 points; the product of the axes would be 8,
    # with adam trained twice for each lr.
    assert len(points) == 6
    assert {"lr": 0.01, "optimizer": "adam"} in points
    assert len({tuple(sorted(p.items())) for p in points}) == 6


@pytest.mark.usefixtures("ray_session")
def test_grid_ends_when_its_points_are_used_up(
    tmp_path: Path, study_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    asha = {"max_epochs": 2, "grace_period": 1, "reduction_factor": 2}
    study = tiny_study(study_name, storage, tmp_path, space=GRID_SPACE,
                       sampler={"name": "grid"}, n_trials=8, asha=asha)  # fmt: skip
    path = write_study(tmp_path / "grid.yaml", study)
    assert main(["run", str(path)]) == 0
    out = capsys.readouterr().out
    assert "the grid has 6 points" in out
    assert "stopped: all 6 grid points ran, fewer than n_trials (8)" in out
    trials = db.trials(storage, study_name)
    assert len(trials) == 6 and all(t.state in FINISHED for t in trials)
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 6  # no point twice
    # Running it again asks nothing: the grid is done.
    assert main(["run", str(path)]) == 0
    assert len(db.trials(storage, study_name)) == 6


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
        RunPolicy(metric="val_acc", mode="max", max_epochs=2, target_finished=target),
        TrialFactory(config.trial_defaults(), checkpoint_root=tmp_path / "checkpoints"),
        RungLedger(),
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
    waiting = format_progress(progress, total=5, elapsed=30, waiting=1)
    assert waiting.startswith("[3/5] running 1 (1 waiting to start) | complete 2")


@pytest.mark.usefixtures("ray_session")
def test_trials_this_run_is_what_ran(tmp_path: Path, study_name: str) -> None:
    from search.engine import Fault

    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    no_pruning = {"max_epochs": 1, "enabled": False}
    config = parse_study(tiny_study(study_name, storage, tmp_path, n_trials=2, asha=no_pruning))
    summary = run_study(config, faults={0: Fault("exception", epoch=1)})
    assert summary.progress.failed == 1 and summary.progress.finished == 2
    assert summary.trials_this_run == 3  # two finished and one failed, not the target of 2


@pytest.mark.usefixtures("ray_session")
def test_checkpoints_left_after_a_study_follow_the_policy(
    tmp_path: Path, study_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from search.engine import Fault

    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    asha = {"max_epochs": 3, "grace_period": 1, "reduction_factor": 2}
    study = tiny_study(study_name, storage, tmp_path, n_trials=8, max_concurrent=1,
                       checkpoints={"keep": 1}, asha=asha)  # fmt: skip
    # Trial 0 is the first at every rung (never pruned): it fails, after saving epoch 1.
    summary = run_study(parse_study(study), faults={0: Fault("exception", epoch=1)})
    final = db.trials(storage, study_name)
    complete = sorted((t for t in final if t.state == TrialState.COMPLETE),
                      key=lambda t: t.value, reverse=True)  # fmt: skip
    assert len(complete) >= 2 and any(t.state == TrialState.FAIL for t in final)
    on_disk = sorted(p.parent.name for p in Path(summary.checkpoint_root).rglob("*.pt"))
    # Exactly the best COMPLETE trial keeps last.pt (and nothing else); the other COMPLETE,
    # the PRUNED and the FAILed trials keep nothing.
    assert on_disk == [Path(complete[0].user_attrs["checkpoint"]).name]
    assert all(p.name == "last.pt" for p in Path(summary.checkpoint_root).rglob("*.pt"))
    assert summary.checkpoint_files == 1 and summary.checkpoint_bytes > 0


def test_importance_reads_the_rung_that_every_trial_reached() -> None:
    import numpy as np

    from search.report import rung_epoch
    from search.store import TrialColumns

    # Eight trials pruned at epoch 1, two at 2, two ran to 4, one failed at 3: at epoch 2 or
    # later only the trials ASHA let through remain; epoch 1 still holds all twelve.
    last = [1] * 8 + [2] * 2 + [4] * 2 + [3]
    states = ["PRUNED"] * 10 + ["COMPLETE"] * 2 + ["FAIL"]
    rows = [row for row, epochs in enumerate(last) for _ in range(epochs)]
    steps = [step for epochs in last for step in range(1, epochs + 1)]
    columns = TrialColumns(
        study_name="s", direction="maximize", number=np.arange(13), state=np.array(states),
        value=np.full(13, np.nan), datetime_start=np.full(13, np.datetime64("NaT")),
        datetime_complete=np.full(13, np.datetime64("NaT")), curve_row=np.array(rows),
        curve_step=np.array(steps), curve_value=np.full(len(rows), 0.5),
    )  # fmt: skip
    assert rung_epoch(columns) == 1
