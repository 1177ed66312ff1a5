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
    for key in ("optuna_get_trials_s", "read_trials_s", "studies_s", "report_s",
                "dashboard_first_s", "dashboard_redraw_s", "dashboard_unchanged_s"):  # fmt: skip
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


def _timed_columns() -> object:
    """Four trials: A 0-10 s, B 5-15 s, C 12-20 s (after A), D running from 30 s."""
    from search.store import TrialColumns

    t0 = np.datetime64("2026-01-01T00:00:00", "us")
    seconds = np.timedelta64(1_000_000, "us")
    start = np.array([t0, t0 + 5 * seconds, t0 + 12 * seconds, t0 + 30 * seconds])
    end = np.array([t0 + 10 * seconds, t0 + 15 * seconds, t0 + 20 * seconds, np.datetime64("NaT")])
    return TrialColumns(
        study_name="s", direction="maximize", number=np.arange(4),
        state=np.array(["COMPLETE", "PRUNED", "COMPLETE", "RUNNING"]),
        value=np.array([0.5, np.nan, 0.6, np.nan]),
        datetime_start=start.astype("datetime64[us]"),
        datetime_complete=end.astype("datetime64[us]"),
    )  # fmt: skip


def test_trials_are_laid_out_on_the_fewest_slots_and_utilisation_counts_active_time() -> None:
    from search.report._data import busy_over_time, timeline
    from search.report._figures import timeline_figure

    columns = _timed_columns()
    now = np.datetime64("2026-01-01T00:00:40", "us")
    data = timeline(columns, now)
    assert list(data.slot) == [0, 1, 0, 0] and data.slots == 2
    assert list(data.end_s) == [10, 15, 20, 40]  # the running trial counts up to now
    # Active: 0-20 s and 30-40 s (the gap between is no idle slot time); busy: 10+10+8+10.
    assert data.active_s == 30 and data.busy_s == 38
    assert data.utilisation == pytest.approx(38 / 60)
    assert timeline(columns, now, configured_slots=4).utilisation == pytest.approx(38 / 120)

    figure = timeline_figure(data, columns.state, columns.number)
    by_name = {trace.name: trace for trace in figure.data}
    assert set(by_name) == {"COMPLETE (2)", "PRUNED (1)", "RUNNING (1)"}
    complete = by_name["COMPLETE (2)"]
    assert list(complete.x[:2]) == pytest.approx([0, 10 / 60]) and list(complete.y[:2]) == [0, 0]
    assert list(complete.x[3:5]) == pytest.approx([12 / 60, 20 / 60])
    assert list(complete.customdata[3:5]) == [2, 2]
    assert "4 trials on 2 worker slots: 63% busy" in figure.layout.title.text

    # Many trials: the mean number running per time bin, whose integral is the busy time.
    centres, busy = busy_over_time(data, bins=8)
    assert list(centres) == [2.5 + 5 * i for i in range(8)]
    assert list(busy) == pytest.approx([1, 2, 1.6, 1, 0, 0, 1, 1])
    assert float(np.sum(busy * 5)) == pytest.approx(data.busy_s)


def test_a_large_timeline_is_drawn_as_slots_busy_over_time() -> None:
    from search.report._data import timeline
    from search.report._figures import ALL_BARS_UP_TO, timeline_figure
    from search.store import TrialColumns

    n = ALL_BARS_UP_TO + 1
    start = np.datetime64("2026-01-01T00:00:00", "us") + np.arange(n) * np.timedelta64(1, "s")
    columns = TrialColumns(
        study_name="s", direction="maximize", number=np.arange(n),
        state=np.full(n, "COMPLETE"), value=np.zeros(n), datetime_start=start,
        datetime_complete=start + np.timedelta64(2, "s"),
    )  # fmt: skip
    data = timeline(columns, start[-1], configured_slots=4)
    assert data.slots == 4 and data.utilisation == pytest.approx(2 * n / (4 * (n + 1)))
    figure = timeline_figure(data, columns.state, columns.number)
    assert len(figure.data) == 1 and figure.data[0].name == "slots busy (mean per bin)"
    assert np.mean(figure.data[0].y[1:-1]) == pytest.approx(2, abs=0.05)  # two at a time


def test_studies_lists_device_time(storage_url: str, study_name: str) -> None:
    """The listing sums the device time each finished trial records, in SQL."""
    from search.store import format_study_table, list_studies

    storage = db.storage(storage_url)
    timed = optuna.create_study(study_name=study_name, storage=storage)
    timed.add_trials([create_trial(value=1.0, user_attrs={"train_seconds": s})
                      for s in (1.25, 2, 3600)])  # fmt: skip
    optuna.create_study(study_name=study_name + "-untimed", storage=storage).add_trial(
        create_trial(value=1.0)
    )
    rows = {row.name: row for row in list_studies(storage_url)}
    assert rows[study_name].device_seconds == 3603.25
    assert rows[study_name + "-untimed"].device_seconds == 0.0
    table = format_study_table([rows[study_name], rows[study_name + "-untimed"]]).splitlines()
    assert table[0].split()[-2:] == ["device", "time"]
    assert table[1].endswith("60 min") and table[2].endswith("0 s")


def test_report_replicates_computes_the_interval_at_any_size(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Above the size the time budget allows, the importance panel says it shows the point
    estimate only; `--replicates N` computes the interval anyway."""
    from search.cli import main
    from search.report._importance import bootstrap_limit
    from search.store import open_storage
    from search.store._synthetic import write_synthetic_study

    url = f"sqlite:///{tmp_path / 'studies.db'}"
    write_synthetic_study(open_storage(url), "big", bootstrap_limit("ped-anova") + 100)
    default, forced = tmp_path / "default.html", tmp_path / "forced.html"
    assert main(["report", "--study", "big", "--storage", url, "-o", str(default)]) == 0
    assert "no bootstrap interval (computed up to" in default.read_text()
    argv = ["report", "--study", "big", "--storage", url, "-o", str(forced), "--replicates", "21"]
    assert main(argv) == 0
    assert "95% bootstrap interval over trials (21 of 21 bootstrap replicates" in forced.read_text()
    with pytest.raises(SystemExit):
        main([*argv[:-1], "-3"])
    assert "-3 replicates: give 0 (none) to 10000" in capsys.readouterr().err


def test_the_importance_estimate_is_computed_once_per_rung_content(
    tmp_path: Path, study_name: str
) -> None:
    from search.report._html import _estimate

    url = f"sqlite:///{tmp_path / 'studies.db'}"
    _asha_study(url, study_name, 40)
    engine = db.storage(url).engine
    columns = read_trials(engine, study_name)
    first = _estimate(columns, 1, "ped-anova", 20)
    assert _estimate(read_trials(engine, study_name), 1, "ped-anova", 20) is first
    assert _estimate(columns, 1, "ped-anova", 21) is not first  # another replicate count
    study = db.load(url, study_name)
    pruned = create_trial(params={"lr": 0.1, "optimizer": "sgd"}, distributions=DISTRIBUTIONS,
                          state=TrialState.PRUNED, intermediate_values={1: 0.5})  # fmt: skip
    study.add_trial(pruned)
    grown = _estimate(read_trials(engine, study_name), 1, "ped-anova", 20)
    assert grown is not first and grown.trials == first.trials + 1
