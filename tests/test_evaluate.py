"""Final evaluation: the trainer's one test pass, the plan, and `resnet-hpo evaluate` end to
end in Ray (the table against scipy, the test split read by no one else, the search study
unchanged, resume after SIGKILL)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState
from scipy import stats

from model import fit, load_digits
from search.cli import main
from search.config import REFITS, StudyConfig
from search.engine import run_study, trial_data
from search.evaluation import (
    TABLE_ATTR,
    ranked_candidates,
    run_evaluation,
    trial_settings,
)
from search.keys import Attr, StudyAttr
from search.report import report_content
from tests import db
from tests.drivers import kill_driver, start_command, trials, wait_until
from tests.studies import tiny_study

TINY = {"width": 0.25, "batch_size": 64, "device": "cpu", "eval_batch_size": 512, "depth": 8}


# The trainer's test pass ---------------------------------------------------------------


def test_final_test_runs_once_after_the_last_epoch() -> None:
    data = load_digits()
    reports: list[dict] = []
    fit({**TINY, "epochs": 2, "lr": 0.05}, data, reports.append, final_test=True)
    assert [r["epoch"] for r in reports] == [1, 2]
    assert "test_acc" not in reports[0]
    assert reports[1]["test_images"] == len(data.test_labels)
    assert 0.0 <= reports[1]["test_acc"] <= 1.0 and math.isfinite(reports[1]["test_loss"])


def test_a_search_never_evaluates_the_test_split() -> None:
    data = load_digits()
    reports: list[dict] = []
    fit({**TINY, "epochs": 1, "lr": 0.05}, data, reports.append)
    assert not any(key.startswith("test_") for key in reports[0])
    searched = trial_data(data, None)
    assert len(searched.test_labels) == 0
    with pytest.raises(ValueError, match="no test split"):
        fit({**TINY, "epochs": 1, "lr": 0.05}, searched, lambda m: None, final_test=True)


def test_refit_on_train_and_val_reports_no_validation() -> None:
    data = load_digits()
    refit = trial_data(data, "train+val")
    assert len(refit.train_labels) == len(data.train_labels) + len(data.val_labels)
    assert len(refit.val_labels) == 0 and len(refit.test_labels) == len(data.test_labels)
    assert trial_data(data, "train") is data
    reports: list[dict] = []
    fit({**TINY, "epochs": 2, "lr": 0.05}, refit, reports.append, final_test=True)
    assert not any("val_acc" in r for r in reports)
    assert reports[-1]["test_images"] == len(data.test_labels)


def test_a_fully_restored_trial_still_reports_its_test_result(tmp_path: Path) -> None:
    """The process died after saving the last epoch's checkpoint: the rerun reports the
    restored epochs, then the test result once."""
    data = load_digits()
    config = {**TINY, "epochs": 2, "lr": 0.05}
    first: list[dict] = []
    fit(config, data, first.append, tmp_path, final_test=True)
    again: list[dict] = []
    fit(config, data, again.append, tmp_path, final_test=True)
    assert [(r["epoch"], bool(r.get("restored"))) for r in again] == [
        (1, True), (2, True), (2, False),
    ]  # fmt: skip
    assert "test_acc" not in again[1] and again[2]["test_acc"] == first[-1]["test_acc"]


# The plan ----------------------------------------------------------------------------


def _trial(value: float, **settings: Any) -> optuna.trial.FrozenTrial:
    return optuna.trial.create_trial(
        params={},
        distributions={},
        value=value,
        user_attrs={Attr.CONFIG: {**settings, "epochs": 3, "seed": 0}},
    )


def test_candidates_are_the_best_distinct_configurations() -> None:
    study = optuna.create_study(direction="maximize")
    study.add_trial(_trial(0.5, lr=0.1, optimizer="sgd"))
    study.add_trial(_trial(0.9, lr=0.2, optimizer="adam"))
    study.add_trial(_trial(0.9, lr=0.3, optimizer="adam"))
    study.add_trial(_trial(0.8, lr=0.2, optimizer="adam"))  # the same as trial 1
    ranked = ranked_candidates(study)
    assert [c.number for c in ranked] == [1, 2, 0]  # a tie goes to the earlier trial
    assert "seed" not in ranked[0].settings and "epochs" not in ranked[0].settings
    assert ranked[0].settings["momentum"] == 0.9  # defaults filled in
    minimize = optuna.create_study(direction="minimize")
    minimize.add_trial(_trial(0.5, lr=0.1))
    minimize.add_trial(_trial(0.2, lr=0.2))
    assert [c.number for c in ranked_candidates(minimize)] == [1, 0]


def test_evaluation_seeds_never_repeat_a_candidates_search_seed() -> None:
    from search.evaluation._plan import evaluation_seeds

    assert evaluation_seeds({0}, 3) == [1000, 1001, 1002]
    assert evaluation_seeds({0, 1001}, 3) == [1000, 1002, 1003]


def test_the_gap_is_how_much_better_the_search_looked_for_losses_too() -> None:
    """For a minimised metric the search looks better with a lower value: a test loss above
    the search's is a positive gap, as a test accuracy below the search's is."""
    from search.evaluation._table import evaluation_rows

    for direction, search_value, tests, gap in (
        ("maximize", 0.9, [0.8, 0.86], 0.07),
        ("minimize", 0.2, [0.3, 0.26], 0.08),
    ):
        study = optuna.create_study(direction=direction)
        study.set_user_attr(
            StudyAttr.EVALUATION,
            {"candidates": [4], "search_values": [search_value], "seed_list": [1000, 1001]},
        )
        for seed, value in zip((1000, 1001), tests, strict=True):
            study.add_trial(optuna.trial.create_trial(
                value=value, user_attrs={"arm": "trial 4", "seed": seed}))  # fmt: skip
        (row,) = evaluation_rows(study)
        assert row.gap == pytest.approx(gap)


def test_cli_refit_choices_are_the_configs() -> None:
    from search.cli import build_parser

    evaluate = build_parser()._subparsers._group_actions[0].choices["evaluate"]  # type: ignore[union-attr]
    refit = next(a for a in evaluate._actions if a.dest == "refit")
    assert tuple(refit.choices) == REFITS


# End to end ----------------------------------------------------------------------------


def _search(name: str, storage: str, tmp_path: Path, **overrides: Any) -> StudyConfig:
    settings = {
        "n_trials": 4,
        "asha": {"max_epochs": 2, "enabled": False},
        "space": {
            "depth": {"type": "categorical", "choices": [8]},
            "lr": {"type": "float", "low": 0.005, "high": 0.1, "log": True},
            "optimizer": {"type": "categorical", "choices": ["sgd", "adam"]},
        },
    }
    config = StudyConfig.model_validate(
        tiny_study(name, storage, tmp_path, **{**settings, **overrides})
    )
    run_study(config)
    return config


def _state_of(storage: str, name: str) -> list[tuple]:
    study = db.load(storage, name)
    return [
        (t.number, t.state, t.value, t.params, dict(t.intermediate_values), dict(t.user_attrs))
        for t in study.get_trials(deepcopy=False)
    ] + [dict(study.user_attrs)]


@pytest.mark.usefixtures("ray_session")
def test_evaluate_retrains_the_best_with_seeds_and_tests_once(
    tmp_path: Path, storage_url: str, study_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Instrument what every run ships to its trials: only evaluate may ship the test split.
    import search.engine._run as engine_run

    shipped: list[tuple[str, int]] = []
    with_parameters = engine_run.tune.with_parameters

    def spy(trainable: Any, **kwargs: Any) -> Any:
        shipped.append((study_being_run[0], len(kwargs["data"].test_labels)))
        return with_parameters(trainable, **kwargs)

    study_being_run = ["search"]
    monkeypatch.setattr(engine_run.tune, "with_parameters", spy)
    _search(study_name, storage_url, tmp_path)
    before = _state_of(storage_url, study_name)
    search = db.load(storage_url, study_name)
    best_two = ranked_candidates(search)[:2]

    study_being_run[0] = "evaluate"
    result = run_evaluation(study_name, storage_url, top=2, seeds=2)
    assert shipped == [("search", 0), ("evaluate", len(load_digits().test_labels))]
    assert _state_of(storage_url, study_name) == before  # the search study is unchanged

    name = f"{study_name}-evaluation"
    evaluation = db.load(storage_url, name)
    assert evaluation.user_attrs[StudyAttr.EVALUATES] == study_name
    record = evaluation.user_attrs[StudyAttr.EVALUATION]
    assert record["candidates"] == [c.number for c in best_two]
    assert (
        record["value"] == "test_acc" and "read only by resnet-hpo evaluate" in record["test_split"]
    )
    complete = evaluation.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    assert len(complete) == 4
    for trial in complete:
        assert trial.user_attrs[Attr.TEST_IMAGES] == len(load_digits().test_labels)
        assert list(trial.intermediate_values) == [2]  # the test result, at the last epoch
        candidate = next(c for c in best_two if f"trial {c.number}" == trial.user_attrs["arm"])
        assert trial_settings(trial) == candidate.settings  # the same configuration
        assert trial.user_attrs[Attr.CONFIG]["epochs"] == 2
    assert {(t.user_attrs["arm"], t.user_attrs["seed"]) for t in complete} == {
        (f"trial {c.number}", seed) for c in best_two for seed in (1000, 1001)
    }
    for row, candidate in zip(result.rows, best_two, strict=True):
        values = [t.value for t in complete if t.user_attrs["arm"] == f"trial {candidate.number}"]
        assert row.search_value == candidate.value and row.n == 2 and row.seeds == (1000, 1001)
        assert row.mean == pytest.approx(sum(values) / 2)
        assert row.gap == pytest.approx(candidate.value - row.mean)
        if values[0] != values[1]:
            low, high = stats.t.interval(0.95, 1, loc=sum(values) / 2, scale=stats.sem(values))
            assert (row.ci_low, row.ci_high) == pytest.approx((low, high))
            assert row.std == pytest.approx(stats.tstd(values))
        else:  # two seeds that agree: no spread, so no interval (never a zero-width one)
            assert row.std == 0.0 and math.isnan(row.ci_low) and math.isnan(row.ci_high)
    stored = evaluation.user_attrs[TABLE_ATTR]
    assert [r["search_trial"] for r in stored] == [c.number for c in best_two]
    for trial in search.get_trials(deepcopy=False):
        assert Attr.TEST_IMAGES not in trial.user_attrs

    # The report (and the dashboard, which draws the same sections) shows the table.
    content = report_content(storage_url, name)
    assert content.metric == "test_acc"
    titles = [title for title, _ in content.sections]
    assert titles[:2] == ["Final evaluation", "Search against test"]
    assert "Learning curves" not in titles
    table = content.sections[0][1]
    assert f"trial {best_two[0].number}" in table and f"{result.rows[0].mean:.4f}" in table

    # Nothing may be chosen from an evaluation: its trials are ranked on the test split.
    from search.errors import UserError
    from search.store import best_checkpoint

    with pytest.raises(UserError, match="is a final evaluation"):
        best_checkpoint(storage_url, f"study:{name}", {"name": "digits"})

    # A rerun continues the same plan (nothing to run); another plan is refused, exit 2.
    assert run_evaluation(study_name, storage_url, top=2, seeds=2).rows == result.rows
    assert len(db.load(storage_url, name).trials) == 4
    assert main(["evaluate", "--study", study_name, "--storage", storage_url, "--top", "3",
                 "--seeds", "2"]) == 2  # fmt: skip


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_a_killed_evaluation_continues(tmp_path: Path, study_name: str) -> None:
    storage = f"sqlite:///{tmp_path / 'eval.db'}"
    _search(study_name, storage, tmp_path, max_concurrent=1)
    name = f"{study_name}-evaluation"
    driver = start_command(
        ["evaluate", "--study", study_name, "--storage", storage, "--top", "2", "--seeds", "2"],
        tmp_path / "evaluate.log",
        tmp_path,
    )
    wait_until(
        lambda: (
            any(t.state == TrialState.COMPLETE for t in trials(storage, name))
            and any(t.state == TrialState.RUNNING for t in trials(storage, name))
        ),
        driver,
    )
    kill_driver(driver)
    done_before = {
        (t.user_attrs["arm"], t.user_attrs["seed"]): t.value
        for t in trials(storage, name)
        if t.state == TrialState.COMPLETE
    }
    result = run_evaluation(study_name, storage, top=2, seeds=2)
    assert all(row.n == 2 for row in result.rows)
    final = trials(storage, name)
    complete = [t for t in final if t.state == TrialState.COMPLETE]
    cells = [(t.user_attrs["arm"], t.user_attrs["seed"]) for t in complete]
    assert len(cells) == len(set(cells)) == 4  # no configuration x seed ran twice
    assert not any(t.state == TrialState.RUNNING for t in final)
    lost = [t for t in final if t.user_attrs.get(Attr.STOP_REASON) == "driver_lost"]
    assert lost and all(
        any(r.user_attrs.get(Attr.RETRY_OF) == t.number for r in complete) for t in lost
    )
    for trial in complete:
        key = (trial.user_attrs["arm"], trial.user_attrs["seed"])
        if key in done_before:
            assert trial.value == done_before[key]


def test_evaluate_refuses_what_it_cannot_evaluate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = f"sqlite:///{tmp_path / 's.db'}"
    assert main(["evaluate", "--study", "missing", "--storage", storage]) == 2
    assert "no study database at" in capsys.readouterr().err
    optuna.create_study(study_name="bare", storage=db.storage(storage))
    assert main(["evaluate", "--study", "missing", "--storage", storage]) == 2
    assert "no study named 'missing'" in capsys.readouterr().err
    assert main(["evaluate", "--study", "bare", "--storage", storage]) == 2
    assert "not made by resnet-hpo run" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", "--study", "bare", "--storage", storage, "--seeds", "0"])
    assert exit_.value.code == 2 and "--seeds" in capsys.readouterr().err


@pytest.mark.usefixtures("ray_session")
def test_refit_on_train_and_val_through_the_engine(
    tmp_path: Path, study_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--refit train+val`` end to end: the trials receive the training and validation
    images as one training set, report no validation epochs (ASHA and the searcher wait for
    the one test result), and finish COMPLETE with the test metric as their value."""
    import search.engine._run as engine_run

    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    _search(study_name, storage, tmp_path, n_trials=2)
    shipped: list[tuple[int, int, int]] = []
    with_parameters = engine_run.tune.with_parameters

    def spy(trainable: Any, **kwargs: Any) -> Any:
        data = kwargs["data"]
        shipped.append((len(data.train_labels), len(data.val_labels), len(data.test_labels)))
        return with_parameters(trainable, **kwargs)

    monkeypatch.setattr(engine_run.tune, "with_parameters", spy)
    result = run_evaluation(study_name, storage, top=1, seeds=2, refit="train+val")
    digits = load_digits()
    assert shipped == [
        (len(digits.train_labels) + len(digits.val_labels), 0, len(digits.test_labels))
    ]
    evaluation = db.load(storage, f"{study_name}-evaluation")
    assert evaluation.user_attrs[StudyAttr.EVALUATION]["refit"] == "train+val"
    complete = evaluation.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    assert len(complete) == 2 and len(evaluation.trials) == 2
    for trial in complete:
        assert list(trial.intermediate_values) == [2]  # no validation epoch, the test at 2
        assert trial.value == trial.intermediate_values[2] and 0.0 <= trial.value <= 1.0
        assert trial.user_attrs[Attr.TEST_IMAGES] == len(digits.test_labels)
    assert result.rows[0].n == 2
