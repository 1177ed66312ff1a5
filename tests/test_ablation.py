"""Ablation studies: plans, statistics against scipy, end to end in Ray, resume, CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState
from scipy import stats

from search.ablation import AblationConfig, ArmRun, holm, plan_arms, run_ablation, summarise
from search.ablation._design import seeds_for
from search.ablation._stats import mean_interval
from search.ablation._table import CSV_COLUMNS
from search.cli import main
from search.errors import ConfigError
from search.report import build_report
from search.study_file import load_study_file
from tests import db
from tests.drivers import kill_driver, start_driver, trials, wait_until, write_study

BASE = {"depth": 20, "optimizer": "sgd", "augmentation": "crop_flip", "label_smoothing": 0.1}


def test_one_at_a_time_plan() -> None:
    arms = plan_arms(
        BASE, {"augmentation": ["none", "crop_flip", "crop_flip_cutout"], "depth": [20, 56]},
        "one_at_a_time",
    )  # fmt: skip
    assert [a.name for a in arms] == [
        "baseline", "augmentation=none", "augmentation=crop_flip_cutout", "depth=56",
    ]  # fmt: skip
    assert arms[0].values == {"augmentation": "crop_flip", "depth": 20}
    assert arms[3].values == {"augmentation": "crop_flip", "depth": 56}


def test_leave_one_out_plan() -> None:
    arms = plan_arms(BASE, {"augmentation": "none", "label_smoothing": 0.0}, "leave_one_out")
    assert [a.name for a in arms] == ["baseline", "augmentation=none", "label_smoothing=0.0"]


def test_factorial_plan() -> None:
    arms = plan_arms(BASE, {"optimizer": ["sgd", "adamw"], "depth": [20, 56, 110]}, "factorial")
    assert len(arms) == 6
    assert arms[0].name == "baseline"
    assert {a.name for a in arms[1:]} == {
        "depth=56", "depth=110", "optimizer=adamw", "optimizer=adamw,depth=56",
        "optimizer=adamw,depth=110",
    }  # fmt: skip


def test_every_arm_gets_the_same_seeds(tmp_path: Path) -> None:
    config = _config("x", "sqlite:///x.db", tmp_path, seeds=4, first_seed=10)
    assert seeds_for(config) == [10, 11, 12, 13]


def test_statistics_match_scipy() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(0.90, 0.01, 6)
    better = base + rng.normal(0.02, 0.005, 6)
    unpaired = rng.normal(0.91, 0.02, 5)
    runs = [ArmRun("baseline", s, float(v), 1.0) for s, v in enumerate(base)]
    runs += [ArmRun("better", s, float(v), 2.0) for s, v in enumerate(better)]
    runs += [ArmRun("other", 100 + s, float(v), 3.0) for s, v in enumerate(unpaired)]
    rows = {r.arm: r for r in summarise(runs, "baseline", ["baseline", "better", "other"])}

    mean, std, low, high = mean_interval(list(base))
    expected = stats.t.interval(0.95, 5, loc=base.mean(), scale=stats.sem(base))
    assert (mean, std) == pytest.approx((base.mean(), base.std(ddof=1)))
    assert (low, high) == pytest.approx(expected)

    paired = stats.ttest_rel(better, base)
    ci = paired.confidence_interval(0.95)
    row = rows["better"]
    assert row.test == "paired" and row.n == 6 and row.seconds == 12.0
    assert row.delta == pytest.approx((better - base).mean())
    assert (row.delta_ci_low, row.delta_ci_high) == pytest.approx((ci.low, ci.high))
    assert row.p_value == pytest.approx(paired.pvalue)
    diff = better - base
    assert row.effect_size == pytest.approx(diff.mean() / diff.std(ddof=1))
    assert row.settled

    welch = stats.ttest_ind(unpaired, base, equal_var=False)
    ci = welch.confidence_interval(0.95)
    row = rows["other"]
    assert row.test == "welch"
    assert (row.delta_ci_low, row.delta_ci_high) == pytest.approx((ci.low, ci.high))
    assert row.p_value == pytest.approx(welch.pvalue)

    adjusted = sorted([rows["better"].p_holm, rows["other"].p_holm])
    ps = sorted([rows["better"].p_value, rows["other"].p_value])
    assert adjusted == pytest.approx([min(1, 2 * ps[0]), min(1, max(2 * ps[0], ps[1]))])
    assert rows["baseline"].delta is None and rows["baseline"].p_holm is None


def test_holm_on_a_textbook_example() -> None:
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def _config(name: str, storage: str, tmp_path: Path, **overrides: object) -> AblationConfig:
    raw = {
        "name": name,
        "kind": "ablation",
        "dataset": {"name": "digits"},
        "baseline": {"depth": 8, "width": 0.25, "batch_size": 64, "lr": 0.05,
                     "optimizer": "sgd", "augmentation": "none", "device": "cpu"},
        "factors": {"augmentation": ["none", "flip"], "lr": [0.05, 1e-6]},
        "seeds": 2,
        "epochs": 2,
        "max_concurrent": 2,
        "storage": storage,
        "output_dir": str(tmp_path),
    }  # fmt: skip
    raw.update(overrides)
    path = write_study(tmp_path / f"{name}.yaml", raw)
    return load_study_file(path)


@pytest.mark.usefixtures("ray_session")
def test_ablation_end_to_end(
    storage_url: str, study_name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(study_name, storage_url, tmp_path)
    rows = run_ablation(config).rows
    capsys.readouterr()  # the run's progress output
    assert [r.arm for r in rows] == ["baseline", "augmentation=flip", "lr=1e-06"]
    assert all(r.n == 2 for r in rows)
    assert rows[2].delta < 0  # a learning rate of 1e-6 learns nothing in two epochs

    study = db.load(storage_url, study_name)  # standard Optuna
    cells = sorted((t.user_attrs["arm"], t.user_attrs["seed"]) for t in study.trials)
    assert cells == sorted((arm, seed) for arm in ("baseline", "augmentation=flip", "lr=1e-06")
                           for seed in (0, 1))  # fmt: skip
    for trial in study.trials:
        assert trial.state == TrialState.COMPLETE
        assert trial.params["seed"] == trial.user_attrs["seed"]
        assert trial.user_attrs["config"]["seed"] == trial.user_attrs["seed"]
        assert sorted(trial.intermediate_values) == [1, 2]

    assert main(["ablation-table", "--study", study_name, "--storage", storage_url,
                 "--format", "csv"]) == 0  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ",".join(CSV_COLUMNS)
    assert [line.split(",")[0] for line in lines[1:]] == [r.arm for r in rows]
    assert main(["ablation-table", "--study", study_name, "--storage", storage_url]) == 0
    assert "| augmentation=flip | 2 |" in capsys.readouterr().out
    assert main(["ablation-table", "--study", study_name, "--storage", storage_url,
                 "--format", "latex"]) == 0  # fmt: skip
    assert r"\begin{tabular}" in capsys.readouterr().out

    report = build_report(storage_url, study_name)
    for title in ("Ablation table", "Differences to the baseline", "Per-epoch curves per arm"):
        assert title in report

    # Running it again runs nothing: every arm x seed is there.
    assert len(run_ablation(config).rows) == 3
    assert len(db.load(storage_url, study_name).trials) == 6


@pytest.mark.usefixtures("ray_session")
def test_sequential_seeds_stop_when_settled(tmp_path: Path, study_name: str) -> None:
    storage = f"sqlite:///{tmp_path / 'seq.db'}"
    config = _config(
        study_name,
        storage,
        tmp_path,
        # eval_batch_size changes nothing: its difference is 0 on every seed, never settled.
        factors={"lr": [0.05, 1e-6], "eval_batch_size": [1024, 512]},
        sequential={"max_seeds": 3},
    )
    rows = {r.arm: r for r in run_ablation(config).rows}
    assert rows["lr=1e-06"].settled and rows["lr=1e-06"].n == 2
    assert rows["eval_batch_size=512"].n == 3 and not rows["eval_batch_size=512"].settled
    assert rows["baseline"].n == 3  # the baseline runs every seed any arm runs


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_interrupted_ablation_resumes_without_rerunning_cells(
    tmp_path: Path, study_name: str
) -> None:
    storage = f"sqlite:///{tmp_path / 'abl.db'}"
    config = _config(study_name, storage, tmp_path, seeds=3, epochs=3)
    driver = start_driver(Path(config.source))
    wait_until(
        lambda: (
            sum(t.state == TrialState.COMPLETE for t in trials(storage, study_name)) >= 2
            and any(t.state == TrialState.RUNNING for t in trials(storage, study_name))
        ),
        driver,
    )
    kill_driver(driver)
    done_before = {
        (t.user_attrs["arm"], t.user_attrs["seed"]): t.value
        for t in trials(storage, study_name)
        if t.state == TrialState.COMPLETE
    }
    rows = run_ablation(config).rows
    assert all(r.n == 3 for r in rows)
    complete = [t for t in trials(storage, study_name) if t.state == TrialState.COMPLETE]
    cells = [(t.user_attrs["arm"], t.user_attrs["seed"]) for t in complete]
    assert len(cells) == len(set(cells)) == 9  # no arm x seed ran twice
    for trial in complete:
        key = (trial.user_attrs["arm"], trial.user_attrs["seed"])
        if key in done_before:
            assert trial.value == done_before[key]


def test_bad_ablation_files(tmp_path: Path) -> None:
    cases = [
        ({"factors": {"augmentation": "none"}}, "factors.augmentation"),
        ({"factors": {"augmentaton": ["none"]}}, "factors.augmentaton"),
        ({"factors": {"augmentation": ["none", "mosaic"]}}, "factors.augmentation[1]"),
        ({"baseline": {"depth": 19}}, "baseline.depth"),
        ({"seeds": 0}, "seeds"),
        ({"design": "latin_square"}, "design"),
        ({"sequential": {"max_seeds": 1}}, "sequential.max_seeds"),
        ({"factors": {"freeze_depth": [0, 2]}}, "factors"),
        # A repeated value would make two arms of one configuration and run its cells twice.
        ({"factors": {"depth": [8, 14, 14]}}, "factors.depth[2]"),
    ]
    for overrides, path in cases:
        with pytest.raises(ConfigError) as error:
            _config("bad", "sqlite:///x.db", tmp_path, **overrides)
        assert error.value.path == path, (overrides, str(error.value))


@pytest.mark.usefixtures("ray_session")
def test_a_changed_design_is_refused_and_a_fork_starts_anew(
    tmp_path: Path, study_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = f"sqlite:///{tmp_path / 'abl.db'}"
    factors = {"augmentation": ["none", "flip"], "lr": [0.05, 1e-6]}
    first = _config(study_name, storage, tmp_path, seeds=1, epochs=1, factors=factors)
    assert main(["run", first.source]) == 0
    before = [(t.number, t.state, t.value) for t in trials(storage, study_name)]
    assert len(before) == 3  # baseline, augmentation=flip, lr=1e-06
    capsys.readouterr()

    # The same factor values under another design: other arms, so another study.
    changed = _config(study_name, storage, tmp_path, seeds=1, epochs=1, design="factorial",
                      factors=factors)  # fmt: skip
    assert main(["run", changed.source]) == 2
    err = capsys.readouterr().err
    assert "design: 'one_at_a_time' -> 'factorial'" in err and "--fork" in err
    assert [(t.number, t.state, t.value) for t in trials(storage, study_name)] == before

    fork = f"{study_name}-factorial"
    assert main(["run", changed.source, "--fork", fork]) == 0
    out = capsys.readouterr().out
    assert f"forked 3 finished trials of {study_name!r} into {fork!r}" in out
    cells = {(t.user_attrs["arm"], t.user_attrs["seed"]) for t in trials(storage, fork)}
    assert cells == {("baseline", 0), ("lr=1e-06", 0), ("augmentation=flip", 0),
                     ("augmentation=flip,lr=1e-06", 0)}  # fmt: skip
    assert len(trials(storage, fork)) == 4  # the three carried over were not run again
    assert main(["ablation-table", "--study", fork, "--storage", storage]) == 0
    assert "| augmentation=flip,lr=1e-06 | 1 |" in capsys.readouterr().out


@pytest.mark.usefixtures("ray_session")
def test_an_ablation_whose_every_cell_fails_exits_1(
    tmp_path: Path, study_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    other = tmp_path / "other-net.pt"
    torch.save({"other.weight": torch.zeros(3)}, other)  # loads, but fits no ResNet
    storage = f"sqlite:///{tmp_path / 'abl.db'}"
    config = _config(study_name, storage, tmp_path, seeds=1, epochs=1, max_failures=0,
                     baseline={"depth": 8, "width": 0.25, "lr": 0.05, "device": "cpu",
                               "pretrained": str(other), "augmentation": "none"},
                     factors={"lr": [0.05, 0.01]})  # fmt: skip
    assert main(["run", config.source]) == 1
    captured = capsys.readouterr()
    assert "no arm has a finished cell" in captured.err
    assert "no finished cell: 1 FAIL exception:PretrainedError" in captured.out


def test_table_of_a_search_study_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = f"sqlite:///{tmp_path / 'x.db'}"
    optuna.create_study(study_name="search", storage=storage)
    assert main(["ablation-table", "--study", "search", "--storage", storage]) == 2
    assert "not an ablation study" in capsys.readouterr().err


def test_shipped_ablation_studies_are_valid() -> None:
    root = Path(__file__).resolve().parent.parent / "studies"
    for path in sorted(root.glob("*ablation*.yaml")):
        assert isinstance(load_study_file(path), AblationConfig)


def test_pairs_over_the_seeds_both_ran() -> None:
    """Sequential seeds give the baseline seeds an arm lacks: still a paired comparison."""
    runs = [ArmRun("baseline", s, v, 1) for s, v in enumerate([0.50, 0.55, 0.60, 0.52])]
    runs += [ArmRun("arm", s, v, 1) for s, v in enumerate([0.56, 0.60, 0.67])]
    row = next(r for r in summarise(runs, "baseline", ["baseline", "arm"]) if r.arm == "arm")
    expected = stats.ttest_rel([0.56, 0.60, 0.67], [0.50, 0.55, 0.60])
    assert row.test == "paired"
    assert row.p_value == pytest.approx(expected.pvalue)
    assert row.delta == pytest.approx(np.mean([0.06, 0.05, 0.07]))


def test_a_cell_lost_before_it_started_is_queued_again(tmp_path: Path) -> None:
    from search.ablation import AblationPlan, resolve_baseline
    from search.ablation._design import engine_config
    from search.engine import prepare_study

    config = _config("lost", f"sqlite:///{tmp_path / 'lost.db'}", tmp_path)
    baseline = resolve_baseline(config)
    arms = plan_arms(baseline, config.factors, config.design)
    engine = engine_config(config, baseline, arms)
    study = prepare_study(engine, engine.resolve_space(), db.storage(engine.storage))
    plan = AblationPlan(config, baseline, arms)
    assert plan.enqueue_missing(study) == 6
    # A driver asks the first cell and dies before handing it to a worker.
    trial = study.ask()
    engine.resolve_space().sample(trial)
    trial.set_user_attr("stop_reason", "driver_lost")  # as recover_lost_trials records it
    study.tell(trial, state=TrialState.FAIL)
    assert plan.enqueue_missing(study) == 1  # that cell, and only that one
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [t.system_attrs["fixed_params"] for t in waiting][-1] == {**arms[0].values, "seed": 0}


def test_a_record_from_before_pins_gets_them_when_its_plan_continues(tmp_path: Path) -> None:
    """An ablation recorded before ``from: study:`` resolutions were pinned: continuing its
    unchanged plan adds what the plan resolved to, so a later new best cannot change it."""
    from search.ablation import AblationPlan, resolve_baseline
    from search.ablation._design import engine_config
    from search.engine import prepare_study

    config = _config("old", f"sqlite:///{tmp_path / 'old.db'}", tmp_path)
    baseline = resolve_baseline(config)
    arms = plan_arms(baseline, config.factors, config.design)
    engine = engine_config(config, baseline, arms)
    study = prepare_study(engine, engine.resolve_space(), db.storage(engine.storage))
    old_record = {k: v for k, v in AblationPlan(config, baseline, arms).record().items()
                  if k != "sources"}  # fmt: skip
    study.set_user_attr("ablation", old_record)
    pinned = {"baseline": {"spec": {"from": "study:s"}, "study": "u", "trial": 3,
                           "settings": {"lr": 0.1}}}  # fmt: skip
    plan = AblationPlan(config, baseline, arms, sources=pinned)
    plan.check(study)
    plan.enqueue_missing(study)
    assert db.load(engine.storage, engine.name).user_attrs["ablation"] == {
        **old_record,
        "sources": pinned,
    }
