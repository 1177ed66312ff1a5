"""The report at scale: computed from the read layer's columns, curves as bands above a few
hundred trials, figures that show what the database holds."""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from search.report import build_report, curve_bands, history, learning_curve_figure, rung_epoch
from search.report._data import ALL_CURVES_UP_TO, best_rows
from search.store import read_trials
from tests import db

DISTRIBUTIONS = {
    "lr": FloatDistribution(1e-4, 1.0, log=True),
    "optimizer": CategoricalDistribution(["sgd", "adam"]),
}


def _asha_study(url: str, name: str, n: int) -> None:
    """A synthetic ASHA study: half the trials stop at each rung of 1, 2, 4; the rest run 8."""
    rng = random.Random(0)
    trials = []
    for _ in range(n):
        epochs = rng.choice([1, 1, 1, 1, 2, 2, 4, 8])
        lr = 10 ** rng.uniform(-4, 0)
        curve = {e: 1 - math.exp(-e * lr * 3) + rng.gauss(0, 0.01) for e in range(1, epochs + 1)}
        complete = epochs == 8
        trials.append(
            create_trial(
                params={"lr": lr, "optimizer": rng.choice(["sgd", "adam"])},
                distributions=DISTRIBUTIONS,
                value=curve[8] if complete else None,
                state=TrialState.COMPLETE if complete else TrialState.PRUNED,
                intermediate_values=curve,
                user_attrs={"epochs_done": epochs, "wall_seconds": 1.5 * epochs},
            )
        )
    study = optuna.create_study(study_name=name, storage=db.storage(url), direction="maximize")
    study.add_trials(trials)


def test_a_large_study_gets_bands_and_the_best_curves(tmp_path: Path, study_name: str) -> None:
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    n = ALL_CURVES_UP_TO + 100
    _asha_study(url, study_name, n)
    columns = read_trials(db.storage(url).engine, study_name)
    trials = db.load(url, study_name).get_trials(deepcopy=False)

    # Every band's median is the median of the curves of that state at that epoch.
    for band in curve_bands(columns):
        for index, epoch in enumerate(band.epochs):
            values = [t.intermediate_values[epoch] for t in trials
                      if t.state.name == band.state and epoch in t.intermediate_values]  # fmt: skip
            for q in (0.1, 0.5, 0.9):
                assert band.quantiles[q][index] == np.quantile(values, q)
            assert band.counts[index] == len(values)
    complete = sorted((t for t in trials if t.state == TrialState.COMPLETE),
                      key=lambda t: (-t.value, t.number))  # fmt: skip
    assert list(columns.number[best_rows(columns, 5)]) == [t.number for t in complete[:5]]
    data = history(columns)
    assert list(data.numbers) == [t.number for t in trials if t.state == TrialState.COMPLETE]
    assert data.best_so_far[-1] == complete[0].value
    assert rung_epoch(columns) == 1

    page = build_report(url, study_name)
    assert f"Learning curves of {n} trials: median and 10-90% band" in page
    # Two traces per state's band (the band, its median) and one per best trial (10), never
    # one per trial.
    figure = learning_curve_figure(columns, "val_acc")
    assert len(figure.data) == 2 * len(curve_bands(columns)) + 10
    assert f"PRUNED median ({sum(t.state == TrialState.PRUNED for t in trials)} trials)" in page
    assert f"all {n} finished trials, before ASHA selected any" in page  # importance at rung 1
    assert "read with care" not in page  # 150 trials per parameter
    assert re.search(rf">{complete[0].number}</td><td>{complete[0].value:.4f}<", page)


def test_a_small_study_shows_every_curve(tmp_path: Path, study_name: str) -> None:
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    _asha_study(url, study_name, 12)
    page = build_report(url, study_name)
    assert "every epoch of every trial, coloured by final state" in page
    assert "Only 12 trials for 2 parameters (fewer than 10 per parameter)" in page
    assert page.count("trial 11 (") >= 1  # each trial's own curve


def test_the_synthetic_study_is_a_standard_optuna_study(tmp_path: Path) -> None:
    from search.store._synthetic import MAX_EPOCHS, write_synthetic_study

    url = f"sqlite:///{tmp_path / 'studies.db'}"
    write_synthetic_study(db.storage(url), "synthetic", 400)
    trials = db.load(url, "synthetic").get_trials(deepcopy=False)
    assert len(trials) == 400 and {t.state for t in trials} == {
        TrialState.COMPLETE,
        TrialState.PRUNED,
    }
    for trial in trials:
        epochs = sorted(trial.intermediate_values)
        assert epochs == list(range(1, len(epochs) + 1))
        assert (trial.state == TrialState.COMPLETE) == (epochs[-1] == MAX_EPOCHS)
        assert trial.value == trial.intermediate_values[epochs[-1]]  # PRUNED too, as Optuna
        assert trial.user_attrs["epochs_done"] == epochs[-1] and set(trial.params) == {
            "lr", "weight_decay", "optimizer", "depth"}  # fmt: skip
    pruned_at_1 = sum(max(t.intermediate_values) == 1 for t in trials)
    assert 150 < pruned_at_1 < 250  # half stop at the first rung


def test_bench_report_measures_every_reader_on_one_study(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from search.cli import main

    assert main(["bench", "report", "--trials", "300", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["trials"] == 300
    for key in ("optuna_get_trials_s", "read_trials_s", "studies_s", "report_s"):
        assert result[key] > 0, key
    assert result["report_mb"] > 0 and result["report_peak_mib"] > 0
    assert result["read_speedup"] > 0
    assert main(["bench", "report", "--trials", "0"]) == 2


def test_compute_accounts_device_time_and_what_asha_saved(tmp_path: Path, study_name: str) -> None:
    from search.report._data import compute

    url = f"sqlite:///{tmp_path / 'studies.db'}"
    # (state, epochs run, device seconds per epoch); one trial recorded no device time.
    plan = [("COMPLETE", 8, 2.0), ("PRUNED", 1, 3.0), ("PRUNED", 2, 1.0), ("FAIL", 1, 5.0),
            ("PRUNED", 4, None)]  # fmt: skip
    study = optuna.create_study(study_name=study_name, storage=db.storage(url))
    for state, epochs, per_epoch in plan:
        attrs = {"epochs_done": epochs}
        if per_epoch is not None:
            attrs["train_seconds"] = per_epoch * epochs
        study.add_trial(create_trial(
            state=TrialState[state], value=0.9 if state == "COMPLETE" else None,
            intermediate_values={e: 0.5 for e in range(1, epochs + 1)}, user_attrs=attrs,
        ))  # fmt: skip
    data = compute(read_trials(db.storage(url).engine, study_name), max_epochs=8)
    assert data.seconds_by_state == {"COMPLETE": 16.0, "PRUNED": 5.0, "FAIL": 5.0}
    assert data.trials_by_state == {"COMPLETE": 1, "PRUNED": 3, "FAIL": 1}
    assert data.saved_seconds == 3.0 * 7 + 1.0 * 6  # the unrecorded trial adds nothing
    # Of what the finished trials (COMPLETE 16 s + PRUNED 5 s) would have taken at 8 epochs.
    assert data.saved_fraction == 27.0 / (21.0 + 27.0)
    assert data.timed_by_state == {"COMPLETE": 1, "PRUNED": 2, "FAIL": 1}
    study.set_user_attr("study_file", {"asha": {"max_epochs": 8}})
    page = build_report(url, study_name)
    assert "ASHA saved about 27 device-seconds (56% of what the finished trials" in page
    assert "<td>PRUNED</td><td>3</td><td>5</td><td>2.5</td>" in page  # per timed trial
    study.set_user_attr("study_file", {"asha": {"max_epochs": 8, "enabled": False}})
    assert "ASHA saved" not in build_report(url, study_name)  # it did not prune


def test_minimizing_studies_rank_and_accumulate_the_lowest_values() -> None:
    from search.store import TrialColumns

    values = np.array([0.5, np.nan, 0.3, 0.4, 0.3, np.inf])
    columns = TrialColumns(
        study_name="s", direction="minimize", number=np.arange(6),
        state=np.array(["COMPLETE", "PRUNED", "COMPLETE", "COMPLETE", "COMPLETE", "COMPLETE"]),
        value=values, datetime_start=np.full(6, np.datetime64("NaT")),
        datetime_complete=np.full(6, np.datetime64("NaT")),
    )  # fmt: skip
    data = history(columns)
    assert list(data.numbers) == [0, 2, 3, 4]  # finite COMPLETE values only
    assert list(data.best_so_far) == [0.5, 0.3, 0.3, 0.3]
    assert list(best_rows(columns, 3)) == [2, 4, 3]  # lowest first, the earlier of a tie
