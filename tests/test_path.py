"""design: path ablations: groups, the greedy walk on a synthetic objective, the fallback,
validation, a target from a search study; then end to end in Ray, interrupted and resumed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from search.ablation import (
    AblationConfig,
    PathQueue,
    greedy_path,
    path_groups,
    path_steps,
    path_to_markdown,
    plan_path,
    resolve_path,
    run_ablation,
    run_path,
    walk_path,
)
from search.ablation._path import FALLBACK, GREEDY, Candidate, describe_path, study_walk
from search.config import DatasetConfig
from search.errors import ConfigError, IncompatibleStudyError
from search.study_file import load_study_file
from tests import db

BASELINE = {"optimizer": "adam", "lr": 0.1, "augmentation": "none", "depth": 14}
TARGET = {"optimizer": "sgd", "momentum": 0.95, "lr": 0.01, "augmentation": "flip", "depth": 14}


def test_a_conditional_setting_moves_with_its_parent_and_same_settings_drop_out() -> None:
    design = plan_path(BASELINE, TARGET, {"momentum": ["optimizer"]}, [], maximize=True)
    # depth is the same in both: not a step. momentum (absent from the baseline: its trial
    # default, 0.9) exists only under sgd, so it moves with optimizer.
    assert design.groups == (("optimizer", "momentum"), ("lr",), ("augmentation",))
    assert design.baseline["momentum"] == 0.9
    # A parent that does not differ leaves its conditional setting a step of its own.
    same_optimizer = {**BASELINE, "optimizer": "sgd"}
    design = plan_path(same_optimizer, TARGET, {"momentum": ["optimizer"]}, [], maximize=True)
    assert design.groups == (("momentum",), ("lr",), ("augmentation",))


def test_settings_of_how_a_trial_runs_are_not_ablated() -> None:
    """A target from a search carries its fixed block (device, eval_batch_size, compile):
    those say how a trial runs, not what it learns, and never become steps."""
    from search.ablation._path import differing_settings

    baseline = {"lr": 0.1, "optimizer": "sgd", "device": "auto"}
    target = {"lr": 0.05, "optimizer": "sgd", "device": "cpu", "eval_batch_size": 512,
              "compile": True, "seed": 3, "epochs": 9}  # fmt: skip
    assert differing_settings(baseline, target) == ["lr"]


def test_together_groups_settings_and_ignores_those_that_do_not_differ() -> None:
    groups = path_groups(["augmentation", "lr", "optimizer"], {}, [["lr", "depth", "augmentation"]])
    assert groups == [("augmentation", "lr"), ("optimizer",)]  # in the target's order
    chained = path_groups(["a", "b", "c", "d"], {"c": ["b"]}, [["a", "c"]])
    assert chained == [("a", "b", "c"), ("d",)]


def _synthetic(design_target: dict[str, Any]) -> Any:
    """lr dominates (+1), augmentation helps a little (+0.1), the optimizer hurts (-0.05);
    every seed adds the same offset, so the pairing is exact."""

    def score(values: dict[str, Any], seed: int) -> float:
        value = 0.5 + 0.01 * seed
        value += 1.0 if values["lr"] == design_target["lr"] else 0.0
        value += 0.1 if values["augmentation"] == design_target["augmentation"] else 0.0
        value -= 0.05 if values["optimizer"] == design_target["optimizer"] else 0.0
        return value

    return score


def test_greedy_path_takes_the_dominant_setting_first() -> None:
    design = plan_path(BASELINE, TARGET, {"momentum": ["optimizer"]}, [], maximize=True)
    calls: list[str] = []
    score = _synthetic(TARGET)

    def counted(values: dict[str, Any], seed: int) -> float:
        calls.append(repr(sorted(values.items())))
        return score(values, seed)

    walk = greedy_path(design, counted, seeds=[0, 1, 2])
    assert walk.done and not walk.stuck
    assert [step.chosen.arm.name for step in walk.steps] == [
        "lr=0.01",
        "lr=0.01,augmentation=flip",
        "optimizer=sgd,momentum=0.95,lr=0.01,augmentation=flip",
    ]
    d = len(design.groups)
    assert len(set(calls)) == d * (d + 1) // 2 == design.greedy_arm_count == 6
    assert len(calls) == 6 * 3  # each candidate once per seed
    assert len(walk.arms) == 7  # the baseline and the candidates, each once
    assert walk.steps[0].previous.name == "baseline"
    assert walk.steps[1].previous.name == "lr=0.01"

    # Minimising, the harmful optimizer change comes first.
    minimising = plan_path(BASELINE, TARGET, {"momentum": ["optimizer"]}, [], maximize=False)
    walk = greedy_path(minimising, score, seeds=[0])
    assert walk.steps[0].chosen.arm.name == "optimizer=sgd,momentum=0.95"


def test_ties_go_to_the_earlier_group_and_failed_candidates_cannot_win() -> None:
    design = plan_path(BASELINE, TARGET, {}, [["optimizer", "momentum"]], maximize=True)
    walk = greedy_path(design, lambda values, seed: 1.0, seeds=[0, 1])
    assert [s.chosen.group for s in walk.steps] == [0, 1, 2]

    # lr's cells all failed: it cannot win step 1 though it would be best.
    def results(arm: Any) -> list[float] | None:
        return [] if arm.name == "lr=0.01" else [0.5]

    walk = walk_path(design, results)
    assert walk.steps[0].chosen.arm.name == "optimizer=sgd,momentum=0.95"
    # Every candidate of a step failed: the walk stops there (stuck).
    walk = walk_path(design, lambda arm: [] if arm.name != "baseline" else [0.5])
    assert walk.stuck and not walk.steps and len(walk.pending) == 3
    # Cells not settled yet: the step is pending, its candidates are the arms to queue.
    walk = walk_path(design, lambda arm: None)
    assert not walk.stuck and [c.group for c in walk.pending] == [0, 1, 2]
    assert Candidate(0, walk.pending[0].arm, [0.25, 0.75]).mean == 0.5


def test_above_max_arms_the_fallback_runs_each_group_alone_and_the_target() -> None:
    design = plan_path(BASELINE, TARGET, {"momentum": ["optimizer"]}, [], maximize=True)
    ran, line = describe_path(design, max_arms=5, seeds=3)
    assert ran == FALLBACK
    assert "4 differing settings in 3 groups -> 6 arms exceed max_arms (5)" in line
    assert "-> 4 arms + baseline, 15 cells" in line
    assert [arm.name for arm in design.fallback_arms()] == [
        "baseline",
        "optimizer=sgd,momentum=0.95",
        "lr=0.01",
        "augmentation=flip",
        "optimizer=sgd,momentum=0.95,lr=0.01,augmentation=flip",
    ]
    ran, line = describe_path(design, max_arms=6, seeds=3)
    assert ran == GREEDY
    assert line.startswith(
        "path from baseline to target: 4 differing settings in 3 groups -> 6 arms + "
        "baseline, 21 cells"
    )


def _raw(name: str, storage: str, tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "name": name,
        "kind": "ablation",
        "dataset": {"name": "digits"},
        "design": "path",
        "baseline": {"depth": 8, "width": 0.25, "batch_size": 64, "optimizer": "sgd",
                     "lr": 1e-5, "augmentation": "none", "device": "cpu"},
        "target": {"lr": 0.05, "augmentation": "flip"},
        "seeds": 2,
        "epochs": 2,
        "max_concurrent": 2,
        "storage": storage,
        "output_dir": str(tmp_path),
    }  # fmt: skip
    raw.update(overrides)
    return {k: v for k, v in raw.items() if v is not None}


def _config(name: str, storage: str, tmp_path: Path, **overrides: Any) -> AblationConfig:
    # Written in order (not sorted): the target's order is the order of the path's groups.
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(_raw(name, storage, tmp_path, **overrides), sort_keys=False))
    config = load_study_file(path)
    assert isinstance(config, AblationConfig)
    return config


def test_bad_path_files(tmp_path: Path) -> None:
    cases = [
        ({"factors": {"lr": [0.1, 0.01]}}, "factors"),
        ({"target": None}, "target"),
        ({"together": [["lr", "learning_rate"]]}, "together[0][1]"),
        ({"target": {"depth": 19}}, "target.depth"),
        ({"target": {"lr": -1.0}}, "target.lr"),
        ({"target": {"lr_max": 1.0}}, "target.lr_max"),
        ({"target": {"from": "quickstart"}}, "target.from"),
        ({"max_arms": 0}, "max_arms"),
        ({"sequential": {"max_seeds": 3}}, "sequential"),
        # The other designs keep their factors and take no target.
        ({"design": "one_at_a_time", "target": None}, "factors"),
        ({"design": "factorial", "factors": {"lr": [0.1, 0.01]}}, "target"),
        (
            {
                "design": "one_at_a_time",
                "target": None,
                "factors": {"lr": [0.1]},
                "together": [["lr", "optimizer"]],
            },
            "together",
        ),  # fmt: skip
    ]
    for overrides, path in cases:
        with pytest.raises(ConfigError) as error:
            _config("bad", "sqlite:///x.db", tmp_path, **overrides)
        assert error.value.path == path, (overrides, str(error.value))


def test_arms_that_cannot_train_are_refused_before_anything_runs(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'x.db'}"
    same = _config("same", storage, tmp_path, target={"lr": 1e-5})
    with pytest.raises(ConfigError, match="nothing to ablate") as error:
        resolve_path(same)
    assert error.value.path == "target"
    # freeze_depth alone (without its pretrained weights) is no valid trial.
    frozen = _config("frozen", storage, tmp_path,
                     target={"pretrained": "weights.pt", "freeze_depth": 2})  # fmt: skip
    with pytest.raises(ConfigError, match="arm freeze_depth=2: freeze_depth > 0 needs"):
        resolve_path(frozen)
    together = _config("together", storage, tmp_path,
                       target={"pretrained": "weights.pt", "freeze_depth": 2},
                       together=[["pretrained", "freeze_depth"]])  # fmt: skip
    assert resolve_path(together).design.groups == (("pretrained", "freeze_depth"),)


def _search_study(storage: str, name: str, best: dict[str, Any]) -> None:
    """A search study as the engine leaves it: its resolved file (data set, space with a
    conditional parameter) and a best COMPLETE trial with its configuration."""
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    study.set_user_attr("study_file", {
        "dataset": DatasetConfig(name="digits").model_dump(mode="json"),
        "space": {
            "optimizer": {"type": "categorical", "choices": ["sgd", "adam"]},
            "momentum": {"type": "float", "low": 0.8, "high": 0.99,
                         "when": {"optimizer": ["sgd"]}},
            "lr": {"type": "float", "low": 1e-3, "high": 0.3, "log": True},
        },
    })  # fmt: skip
    study.add_trial(optuna.trial.create_trial(value=0.5, user_attrs={"config": {"lr": 0.2}}))
    study.add_trial(optuna.trial.create_trial(value=0.9, user_attrs={"config": best}))


# The search's best trial and a written-out baseline that differs in optimizer, momentum, lr.
_SEARCH_BEST = {
    "depth": 8, "width": 0.25, "batch_size": 64, "device": "cpu", "epochs": 8,
    "optimizer": "sgd", "momentum": 0.95, "lr": 0.05, "augmentation": "none",
}  # fmt: skip
_PLAIN_BASELINE = {
    "depth": 8, "width": 0.25, "batch_size": 64, "device": "cpu",
    "optimizer": "adam", "lr": 0.01, "augmentation": "none",
}  # fmt: skip


def _target_from_search(tmp_path: Path) -> tuple[str, AblationConfig]:
    """A search study whose best is _SEARCH_BEST, and a path from _PLAIN_BASELINE to it."""
    storage = f"sqlite:///{tmp_path / 'search.db'}"
    _search_study(storage, "search", _SEARCH_BEST)
    config = _config("p", storage, tmp_path, baseline=_PLAIN_BASELINE,
                     target={"from": "study:search"})  # fmt: skip
    return storage, config


def test_a_target_from_a_search_study_groups_by_its_space(tmp_path: Path) -> None:
    storage, config = _target_from_search(tmp_path)
    baseline = _PLAIN_BASELINE
    queue = resolve_path(config)
    assert queue.design.groups == (("optimizer", "momentum"), ("lr",))
    assert queue.target["lr"] == 0.05 and "epochs" not in queue.target
    assert queue.design.target == {"optimizer": "sgd", "momentum": 0.95, "lr": 0.05}
    # Overrides written next to `from` win over the trial's settings.
    config = _config("p", storage, tmp_path, baseline=baseline,
                     target={"from": "study:search", "lr": 0.01})  # fmt: skip
    assert resolve_path(config).design.groups == (("optimizer", "momentum"),)


def test_the_shipped_path_study_is_valid() -> None:
    path = Path(__file__).resolve().parent.parent / "studies" / "quickstart_path.yaml"
    config = load_study_file(path)
    assert isinstance(config, AblationConfig) and config.design == "path"
    assert config.target == {"from": "study:quickstart"}


def test_the_queue_grows_with_the_path_and_never_queues_a_cell_twice(tmp_path: Path) -> None:
    from search.ablation._run import path_engine_config
    from search.engine import prepare_study

    config = _config("queue", f"sqlite:///{tmp_path / 'q.db'}", tmp_path)
    queue = resolve_path(config)
    engine = path_engine_config(config, queue)
    assert engine.space["lr"] == {"type": "categorical", "choices": [1e-5, 0.05]}
    assert engine.n_trials == 4 * 2  # 3 candidate arms + the baseline, 2 seeds
    study = prepare_study(engine, engine.resolve_space(), db.storage(engine.storage))
    step_one = study_walk(None, queue.design, [0, 1])
    queue.set_arms(step_one.arms)
    queue.check(study)
    assert queue.enqueue_missing(study) == 6
    assert study.user_attrs["ablation"]["arms"] == ["baseline", "lr=0.05", "augmentation=flip"]

    # The cells settle: lr=0.05 wins; one augmentation cell failed for good, one was lost
    # to an interrupt (it runs again, so step 1 is not decided until it settles).
    for _ in range(len(study.get_trials(states=(TrialState.WAITING,)))):
        running = study.ask()
        params = engine.resolve_space().sample(running)
        if params["augmentation"] == "flip" and params["seed"] == 1:
            running.set_user_attr("stop_reason", "exception:RuntimeError")
            study.tell(running, state=TrialState.FAIL)
        elif params["augmentation"] == "flip":
            running.set_user_attr("stop_reason", "interrupted")
            study.tell(running, state=TrialState.FAIL)
        else:
            study.tell(running, 0.9 if params["lr"] == 0.05 else 0.1)
    walk = study_walk(study, queue.design, [0, 1])
    assert not walk.steps and [c.arm.name for c in walk.pending][1] == "augmentation=flip"
    queue.set_arms(walk.arms)
    assert queue.enqueue_missing(study) == 1  # the interrupted cell, and only it
    running = study.ask()
    engine.resolve_space().sample(running)
    study.tell(running, 0.5)
    walk = study_walk(study, queue.design, [0, 1])
    assert [step.chosen.arm.name for step in walk.steps] == ["lr=0.05"]
    assert walk.steps[0].candidates[1].values == [0.5]  # the failed cell has no value

    # Step 2: the stored plan accepts the longer arm list and queues only the new arm.
    queue.set_arms(walk.arms)
    queue.check(study)
    assert queue.enqueue_missing(study) == 2
    assert study.user_attrs["ablation"]["arms"][-1] == "lr=0.05,augmentation=flip"
    # Another seed count is another experiment (the path could turn otherwise).
    more_seeds = resolve_path(_config("queue", config.storage, tmp_path, seeds=3))
    with pytest.raises(IncompatibleStudyError, match="seeds: \\[0, 1\\] -> \\[0, 1, 2\\]"):
        more_seeds.check(study)
    # Above max_arms the fallback runs, and a study of the greedy path refuses it.
    fallback = resolve_path(_config("queue", config.storage, tmp_path, max_arms=2))
    assert fallback.ran == FALLBACK
    assert [arm.name for arm in fallback.design.fallback_arms()] == [
        "baseline",
        "lr=0.05",
        "augmentation=flip",
        "lr=0.05,augmentation=flip",
    ]
    with pytest.raises(IncompatibleStudyError, match="ran: 'greedy' -> 'fallback'"):
        fallback.check(study)


@pytest.mark.usefixtures("ray_session")
def test_path_end_to_end_interrupted_and_resumed(
    tmp_path: Path, study_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = f"sqlite:///{tmp_path / 'path.db'}"
    # lr 1e-5 learns nothing in two epochs, 0.05 does: the path must take lr first.
    config = _config(study_name, storage, tmp_path)

    # The first round only (step 1 and the baseline), as a run stopped after it would be.
    first = run_path(config, max_rounds=1)
    out = capsys.readouterr().out
    assert "2 differing settings in 2 groups -> 3 arms + baseline, 8 cells" in out
    assert [step.arm for step in first.path or []] == ["lr=0.05"]
    study = db.load(storage, study_name)
    assert len(study.trials) == 6  # baseline, lr=0.05, augmentation=flip x 2 seeds

    # Running the file continues with step 2 only.
    result = run_ablation(config)
    out = capsys.readouterr().out
    steps = result.path or []
    assert [step.arm for step in steps] == ["lr=0.05", "lr=0.05,augmentation=flip"]
    assert steps[0].flipped == {"lr": 0.05} and steps[1].flipped == {"augmentation": "flip"}
    assert steps[0].previous == "baseline" and steps[1].previous == "lr=0.05"
    assert steps[0].gain is not None and steps[0].gain > 0.2
    assert set(steps[0].others) == {"augmentation=flip"}
    assert all(step.n == 2 for step in steps)
    assert "| 1 | lr=0.05 | lr=0.05 | 2 |" in out
    arms = ["baseline", "lr=0.05", "augmentation=flip", "lr=0.05,augmentation=flip"]
    rows = {row.arm: row for row in result.rows}  # the one-table-per-arm view
    assert list(rows) == arms and all(row.n == 2 for row in rows.values())
    # Step 1 starts at the baseline; the last step's change is the whole baseline -> target.
    assert steps[0].gain == pytest.approx(rows["lr=0.05"].delta)
    assert steps[0].change == pytest.approx(rows["lr=0.05"].delta)
    assert steps[1].change == pytest.approx(rows["lr=0.05,augmentation=flip"].delta)
    assert steps[1].gain == pytest.approx(
        rows["lr=0.05,augmentation=flip"].mean - rows["lr=0.05"].mean
    )
    study = db.load(storage, study_name)
    cells = sorted((t.user_attrs["arm"], t.user_attrs["seed"]) for t in study.trials)
    assert cells == sorted((arm, seed) for arm in arms for seed in (0, 1))
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert study.user_attrs["ablation"]["ran"] == "greedy"
    assert study.user_attrs["ablation"]["arms"] == arms

    # Again: nothing new runs, and the study gives the same path.
    again = run_ablation(config)
    assert len(db.load(storage, study_name).trials) == 8
    assert again.path == steps == path_steps(db.load(storage, study_name))
    assert path_to_markdown(steps).count("\n") == 4

    # The report and the dashboard (the same sections) show the path; so does the CLI.
    from search.cli import main
    from search.report import report_content

    content = report_content(storage, study_name)
    titles = [title for title, _ in content.sections]
    assert titles[:3] == ["Path from baseline to target", "The path step by step", "Ablation table"]
    chart = content.sections[1][1].data[0]
    assert list(chart.x)[0] == "baseline" and len(chart.x) == 3
    assert list(chart.y)[1:] == pytest.approx([step.mean for step in steps])
    capsys.readouterr()
    assert main(["ablation-table", "--study", study_name, "--storage", storage, "--path"]) == 0
    assert capsys.readouterr().out == path_to_markdown(steps)

    # A changed target is another experiment: refused before any write.
    changed = _config(study_name, storage, tmp_path, target={"lr": 0.1, "augmentation": "flip"})
    queue: PathQueue = resolve_path(changed)
    with pytest.raises(IncompatibleStudyError, match="target"):
        queue.check(db.load(storage, study_name))


@pytest.mark.usefixtures("ray_session")
def test_above_max_arms_the_fallback_runs_in_one_round(
    tmp_path: Path, study_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from search.cli import main

    storage = f"sqlite:///{tmp_path / 'fallback.db'}"
    config = _config(study_name, storage, tmp_path, seeds=1, epochs=1, max_arms=2)
    assert main(["run", config.source]) == 0
    out = capsys.readouterr().out
    assert "3 arms exceed max_arms (2): running the fallback instead" in out
    study = db.load(storage, study_name)
    assert study.user_attrs["ablation"]["ran"] == "fallback"
    arms = ["baseline", "lr=0.05", "augmentation=flip", "lr=0.05,augmentation=flip"]
    assert sorted(t.user_attrs["arm"] for t in study.trials) == sorted(arms)
    assert path_steps(study) == []  # no path: the table of arms is the result
    assert run_ablation(config).path is None
    capsys.readouterr()
    assert main(["ablation-table", "--study", study_name, "--storage", storage, "--path"]) == 2
    assert "ran the fallback design" in capsys.readouterr().err


@pytest.mark.usefixtures("ray_session")
def test_a_step_whose_candidates_all_fail_stops_the_path_and_run_exits_1(
    tmp_path: Path, study_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from search.cli import main

    storage = f"sqlite:///{tmp_path / 'failing.db'}"
    # lr 1e9 diverges in the first epoch: the step's only candidate fails on every seed.
    config = _config(
        study_name, storage, tmp_path, seeds=1, epochs=1, target={"lr": 1e9}, max_concurrent=1
    )
    assert main(["run", config.source]) == 1
    err = capsys.readouterr().err
    assert "path stopped at step 1" in err and "did not reach the target" in err
    reasons = sorted(t.user_attrs["stop_reason"] for t in db.load(storage, study_name).trials)
    assert reasons == ["completed", "nan@epoch 1"]  # the baseline ran; the candidate failed


def test_a_source_that_found_a_new_best_does_not_change_a_started_ablation(
    tmp_path: Path,
) -> None:
    """``target: {from: study:search}``: the record keeps what it resolved to, so running the
    same file again continues that plan (with a note) after the search found a new best;
    without the record the new best would be a changed plan, refused; a changed section is
    resolved anew."""
    from search.ablation._queue import SourcePins
    from search.errors import IncompatibleStudyError

    storage, config = _target_from_search(tmp_path)
    best, baseline = _SEARCH_BEST, _PLAIN_BASELINE
    first = resolve_path(config)
    assert first.record()["sources"]["target"]["trial"] == 1
    ablation = optuna.create_study(study_name="p", storage=storage, direction="maximize")
    ablation.set_user_attr("ablation", first.record())  # as the first round leaves it

    search = optuna.load_study(study_name="search", storage=storage)
    search.add_trial(
        optuna.trial.create_trial(
            value=0.95, user_attrs={"config": {**best, "lr": 0.1, "momentum": 0.9}}
        )
    )
    pins = SourcePins.of_study(ablation)
    again = resolve_path(config, pins)
    assert again.target == first.target and again.record() == first.record()
    again.check(ablation)  # the same plan: no refusal
    assert pins.notes == [
        "target: study:search's trial #1, its best when this ablation started; its best is "
        "now #2 (--fork NEW_NAME ablates from that)"
    ]
    anew = resolve_path(config)  # what the study's record prevents
    assert anew.target["lr"] == 0.1
    with pytest.raises(IncompatibleStudyError, match="another plan"):
        anew.check(ablation)
    # An override written next to the same `from` applies on top of the pinned trial.
    changed = _config("p", storage, tmp_path, baseline=baseline,
                      target={"from": "study:search", "lr": 0.02})  # fmt: skip
    overridden = resolve_path(changed, SourcePins.of_study(ablation)).target
    assert overridden["lr"] == 0.02 and overridden["momentum"] == 0.95
    # The source deleted and made again under its name (another uid): resolved anew.
    search.set_user_attr("uid", "made-again")
    assert resolve_path(config, SourcePins.of_study(ablation)).target["momentum"] == 0.9
