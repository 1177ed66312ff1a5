"""``design: path``: the ablation path from a baseline to a target configuration.

Fawcett & Hoos (2016, "Analysing differences between algorithm configurations through
ablation") ask which of the settings in which two configurations differ make the
difference. Greedy forward path: start at the baseline; flip each remaining *group* of
settings to its target values, one candidate arm per group; run every candidate with the
same seeds; keep the best mean; repeat from there until the configuration is the target.
``d`` groups cost ``d(d+1)/2`` candidate arms (plus the baseline); above ``max_arms`` the
study runs a fallback instead: each group flipped alone from the baseline, and the target.

Settings that only exist together move together: a conditional parameter of the search
space that the target came from (``momentum`` under ``when: {optimizer: sgd}``) moves with
its parent when both differ, and ``together`` names further groups.

Everything here is pure (no training, no database writes): the walk takes a function that
says what an arm's seeds gave, so the same walk decides a run, replays it on resume, and
is tested on a synthetic objective. :func:`path_steps` reads a finished study.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState
from pydantic import ValidationError as PydanticValidationError

from model.settings import TrialConfig, TrialSettings
from search.ablation._analysis import missing_reasons
from search.ablation._design import PATH, SEED_PARAM, AblationConfig, Arm, arm_name
from search.ablation._stats import ArmRun, ArmSummary, _compare, mean_interval
from search.errors import ConfigError, UserError
from search.keys import RETRYABLE_REASONS, Attr, StudyAttr

GREEDY, FALLBACK = "greedy", "fallback"  # the design a path study actually ran
# Not ablated: the study owns the epoch budget, the seed is what arms are paired on, and the
# rest say how a trial runs, not what it learns (every arm takes the baseline's).
NOT_ABLATED = ("epochs", SEED_PARAM, "device", "eval_batch_size", "compile")
# Every combination of flipped groups is checked up front below this many groups (2^d
# configurations); beyond it, the single flips and the target only.
MAX_GROUPS_CHECKED_EXHAUSTIVELY = 10


def setting_value(config: Mapping[str, Any], name: str) -> Any:
    """A setting a configuration does not write out trains with the trial default."""
    if name in config:
        return config[name]
    field = TrialSettings.model_fields.get(name)
    return field.default if field is not None else None


def differing_settings(baseline: Mapping[str, Any], target: Mapping[str, Any]) -> list[str]:
    """The settings whose values differ, in the target's order (then the baseline's)."""
    names = [*target, *(name for name in baseline if name not in target)]
    return [
        name
        for name in names
        if name not in NOT_ABLATED and setting_value(baseline, name) != setting_value(target, name)
    ]


def path_groups(
    settings: Sequence[str],
    parents: Mapping[str, Iterable[str]],
    together: Iterable[Iterable[str]] = (),
) -> list[tuple[str, ...]]:
    """The differing ``settings`` grouped: a conditional setting with the parents it depends
    on (``parents``: setting -> the settings its ``when`` names) where those differ too, and
    each ``together`` list. Settings that do not differ are ignored. Groups come in the order
    of their first setting; settings within a group keep the order of ``settings``."""
    root = {name: name for name in settings}

    def find(name: str) -> str:
        while root[name] != name:
            root[name] = root[root[name]]
            name = root[name]
        return name

    def join(names: Iterable[str]) -> None:
        present = [find(name) for name in names if name in root]
        for other in present[1:]:
            root[other] = present[0]

    for child, its_parents in parents.items():
        if child in root:
            join([child, *its_parents])
    for group in together:
        join(group)
    grouped: dict[str, list[str]] = {}
    for name in settings:  # dicts keep insertion order: the first setting orders its group
        grouped.setdefault(find(name), []).append(name)
    return [tuple(group) for group in grouped.values()]


@dataclass(frozen=True)
class PathDesign:
    """The differing settings, their baseline and target values, and their groups."""

    settings: tuple[str, ...]
    baseline: dict[str, Any]  # the differing settings' baseline values
    target: dict[str, Any]  # ... and their target values
    groups: tuple[tuple[str, ...], ...]
    maximize: bool

    @property
    def greedy_arm_count(self) -> int:
        """Candidate arms of the greedy path: d + (d-1) + ... + 1."""
        d = len(self.groups)
        return d * (d + 1) // 2

    def values(self, flipped: Iterable[int]) -> dict[str, Any]:
        """Every differing setting's value with the groups ``flipped`` set to the target's."""
        moved = {name for index in flipped for name in self.groups[index]}
        return {
            name: self.target[name] if name in moved else self.baseline[name]
            for name in self.settings
        }

    def arm(self, flipped: Iterable[int]) -> Arm:
        """The configuration with ``flipped`` at the target, named by its changes from the
        baseline: one name per set of flipped groups, whatever order they were flipped in."""
        values = self.values(flipped)
        changes = {name: value for name, value in values.items() if value != self.baseline[name]}
        return Arm(arm_name(changes), values)

    def fallback_arms(self) -> list[Arm]:
        """The baseline, each group flipped alone, and the target (one-at-a-time plus the
        whole change)."""
        arms = [self.arm(())]
        arms += [self.arm((index,)) for index in range(len(self.groups))]
        arms.append(self.arm(range(len(self.groups))))
        unique: dict[str, Arm] = {}
        for arm in arms:  # one group: flipping it alone is the target
            unique.setdefault(arm.name, arm)
        return list(unique.values())

    def record(self) -> dict[str, Any]:
        return {
            "settings": list(self.settings),
            "baseline": self.baseline,
            "target": self.target,
            "groups": [list(group) for group in self.groups],
            "maximize": self.maximize,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> PathDesign:
        return cls(
            settings=tuple(record["settings"]),
            baseline=dict(record["baseline"]),
            target=dict(record["target"]),
            groups=tuple(tuple(group) for group in record["groups"]),
            maximize=bool(record["maximize"]),
        )


def plan_path(
    baseline: Mapping[str, Any],
    target: Mapping[str, Any],
    parents: Mapping[str, Iterable[str]],
    together: Iterable[Iterable[str]],
    maximize: bool,
) -> PathDesign:
    settings = differing_settings(baseline, target)
    return PathDesign(
        settings=tuple(settings),
        baseline={name: setting_value(baseline, name) for name in settings},
        target={name: setting_value(target, name) for name in settings},
        groups=tuple(path_groups(settings, parents, together)),
        maximize=maximize,
    )


def check_path_arms(
    config: AblationConfig, baseline: Mapping[str, Any], design: PathDesign
) -> None:
    """Every configuration the path may train must be a valid trial configuration (e.g.
    ``freeze_depth`` needs ``pretrained``): refused before anything runs, naming the arm."""
    if not design.settings:
        raise ConfigError(
            "target",
            "equals the baseline in every setting (epochs and seed aside): nothing to ablate",
            config.source,
        )
    count = len(design.groups)
    if count <= MAX_GROUPS_CHECKED_EXHAUSTIVELY:
        combinations: Iterable[Iterable[int]] = itertools.chain.from_iterable(
            itertools.combinations(range(count), size) for size in range(count + 1)
        )
    else:
        combinations = [(), *((index,) for index in range(count)), range(count)]
    for flipped in combinations:
        arm = design.arm(flipped)
        candidate = {**baseline, **arm.values, "epochs": config.epochs}
        candidate.pop(SEED_PARAM, None)
        try:
            TrialConfig.model_validate(candidate)
        except PydanticValidationError as error:
            message = error.errors()[0]["msg"].removeprefix("Value error, ")
            raise ConfigError(
                "target",
                f"arm {arm.name}: {message} (list settings that only work together in "
                "`together`, so that they move as one)",
                config.source,
            ) from None


def describe_path(design: PathDesign, max_arms: int | None, seeds: int) -> tuple[str, str]:
    """(the design that runs, the line that says so before anything runs)."""
    head = (
        f"path from baseline to target: {len(design.settings)} differing settings in "
        f"{len(design.groups)} groups"
    )
    groups = "groups: " + "; ".join("+".join(group) for group in design.groups)
    greedy = design.greedy_arm_count
    if max_arms is not None and greedy > max_arms:
        arms = len(design.fallback_arms()) - 1
        return FALLBACK, (
            f"{head} -> {greedy} arms exceed max_arms ({max_arms}): running the fallback "
            f"instead (each group flipped alone, and the target) -> {arms} arms + baseline, "
            f"{(arms + 1) * seeds} cells\n{groups}"
        )
    return GREEDY, f"{head} -> {greedy} arms + baseline, {(greedy + 1) * seeds} cells\n{groups}"


# The walk ---------------------------------------------------------------------------------

# What an arm's seeds gave: the finished cells' values, or None while a cell is unsettled
# (queued, running, or lost and to be run again). An empty list: every cell failed.
Results = Callable[[Arm], list[float] | None]


@dataclass(frozen=True)
class Candidate:
    group: int
    arm: Arm
    values: list[float] | None

    @property
    def mean(self) -> float | None:
        return sum(self.values) / len(self.values) if self.values else None


@dataclass(frozen=True)
class PathChoice:
    """A decided step: its candidates and the one kept."""

    step: int
    previous: Arm  # the configuration the step started from
    chosen: Candidate
    candidates: tuple[Candidate, ...]


@dataclass(frozen=True)
class PathWalk:
    steps: list[PathChoice]
    baseline: Arm
    # The candidates of the first undecided step: some cells unsettled, or (stuck) every
    # cell settled without a finished one. Empty when the path reached the target.
    pending: list[Candidate]
    stuck: bool = False

    @property
    def done(self) -> bool:
        return not self.pending

    @property
    def arms(self) -> list[Arm]:
        """The baseline and every candidate so far, in the order they were proposed."""
        arms = [self.baseline]
        for step in self.steps:
            arms += [candidate.arm for candidate in step.candidates]
        return arms + [candidate.arm for candidate in self.pending]


def walk_path(design: PathDesign, results: Results) -> PathWalk:
    """The greedy forward path as far as ``results`` decide it. A step is decided once every
    candidate's cells are settled; the best mean wins (ties: the earlier group), and a
    candidate without a finished cell cannot win. The same results give the same path."""
    flipped: list[int] = []
    steps: list[PathChoice] = []
    previous = design.arm(())
    while len(flipped) < len(design.groups):
        remaining = [index for index in range(len(design.groups)) if index not in flipped]
        candidates = []
        for index in remaining:
            arm = design.arm([*flipped, index])
            candidates.append(Candidate(index, arm, results(arm)))
        if any(candidate.values is None for candidate in candidates):
            return PathWalk(steps, design.arm(()), candidates)
        finished = [candidate for candidate in candidates if candidate.values]
        if not finished:
            return PathWalk(steps, design.arm(()), candidates, stuck=True)
        sign = -1.0 if design.maximize else 1.0
        best = min(finished, key=lambda c: (sign * (c.mean or 0.0), c.group))
        steps.append(PathChoice(len(steps) + 1, previous, best, tuple(candidates)))
        flipped.append(best.group)
        previous = best.arm
    return PathWalk(steps, design.arm(()), [])


def greedy_path(
    design: PathDesign, score: Callable[[dict[str, Any], int], float], seeds: Sequence[int]
) -> PathWalk:
    """The whole greedy path with ``score(values, seed)`` as the objective (``values``: the
    differing settings of the candidate), each candidate scored once per seed."""
    scored: dict[str, list[float]] = {}

    def results(arm: Arm) -> list[float]:
        if arm.name not in scored:
            scored[arm.name] = [score(arm.values, seed) for seed in seeds]
        return scored[arm.name]

    return walk_path(design, results)


# Reading a study -------------------------------------------------------------------------


@dataclass
class CellBook:
    """What a study holds of each arm x seed cell, keyed by the arm's values."""

    settings: tuple[str, ...]
    finished: dict[tuple[Any, ...], dict[int, ArmRun]]
    settled: set[tuple[tuple[Any, ...], int]]

    @classmethod
    def of_study(cls, study: optuna.Study, settings: Sequence[str]) -> CellBook:
        """COMPLETE cells are finished; a cell that failed for good (not lost to a dead
        driver or an interrupt, which the next run retries) is settled without a value."""
        book = cls(tuple(settings), {}, set())
        for trial in study.get_trials(deepcopy=False):
            params = trial.params
            if SEED_PARAM not in params or any(name not in params for name in settings):
                continue
            key = tuple(params[name] for name in settings)
            seed = int(params[SEED_PARAM])
            if trial.state == TrialState.COMPLETE and trial.value is not None:
                seconds = trial.user_attrs.get(
                    Attr.TRAIN_SECONDS, trial.user_attrs.get(Attr.WALL_SECONDS, 0)
                )
                run = ArmRun(trial.user_attrs.get(Attr.ARM, ""), seed, trial.value, seconds)
                book.finished.setdefault(key, {})[seed] = run
                book.settled.add((key, seed))
            elif trial.state == TrialState.PRUNED or (
                trial.state == TrialState.FAIL
                and trial.user_attrs.get(Attr.STOP_REASON) not in RETRYABLE_REASONS
            ):
                book.settled.add((key, seed))
        return book

    def runs(self, arm: Arm, seeds: Sequence[int]) -> list[ArmRun]:
        by_seed = self.finished.get(tuple(arm.values[name] for name in self.settings), {})
        return [
            ArmRun(arm.name, seed, by_seed[seed].value, by_seed[seed].seconds)
            for seed in seeds
            if seed in by_seed
        ]

    def results(self, seeds: Sequence[int]) -> Results:
        def of(arm: Arm) -> list[float] | None:
            key = tuple(arm.values[name] for name in self.settings)
            if any((key, seed) not in self.settled for seed in seeds):
                return None
            return [run.value for run in self.runs(arm, seeds)]

        return of


def path_record(study: optuna.Study) -> dict[str, Any]:
    info = study.user_attrs.get(StudyAttr.ABLATION)
    if not info or info.get("design") != PATH:
        raise UserError(f"study {study.study_name!r} is not a path ablation (design: path)")
    return info


def study_walk(study: optuna.Study | None, design: PathDesign, seeds: Sequence[int]) -> PathWalk:
    """The path as the study's settled cells decide it (the same on every read); without a
    study, nothing is decided and step 1 is to run."""
    if study is None:
        return walk_path(design, lambda arm: None)
    return walk_path(design, CellBook.of_study(study, design.settings).results(seeds))


# The path's table ------------------------------------------------------------------------


@dataclass(frozen=True)
class PathStep:
    """One step of the path: the group it flipped, where it got, and what that changed.

    ``gain`` is this step's mean minus the previous configuration's, paired over the seeds
    both ran (for a loss, a negative gain is the improvement); ``change`` is the same
    against the baseline, so the last step's change is the whole baseline -> target effect.
    """

    step: int
    flipped: dict[str, Any]  # the group's settings and their target values
    arm: str
    previous: str  # the arm the step started from (the previous step's, or the baseline)
    n: int
    mean: float
    std: float | None  # None (like every number below) where there is none: one seed...
    ci_low: float | None
    ci_high: float | None
    gain: float | None
    gain_ci_low: float | None
    gain_ci_high: float | None
    gain_p: float | None
    gain_test: str | None
    change: float | None
    change_ci_low: float | None
    change_ci_high: float | None
    change_test: str | None
    # The gain's 95% interval includes 0, or the gain could not be tested: this step could
    # be seed noise.
    within_noise: bool
    others: dict[str, float | None]  # the step's other candidates: arm -> mean (None: none)
    note: str | None = None


def _number(value: float | str | None) -> float | None:
    if value is None:
        return None
    number = float(value)
    return None if math.isnan(number) else number


def _paired(arm: list[ArmRun], before: list[ArmRun]) -> tuple[dict[str, Any], bool]:
    """(the paired comparison as _compare gives it, whether it is settled)."""
    if not before:
        missing = dict.fromkeys(("delta", "low", "high", "p", "test"))
        return {**missing, "note": "the configuration before has no finished cell"}, False
    compared = _compare(arm, before)
    p = _number(compared["p"])
    # The table's own rule for "not seed noise" (interval excludes 0, or the sign test).
    judged = ArmSummary(
        arm="",
        n=len(arm),
        mean=math.nan,
        std=math.nan,
        ci_low=math.nan,
        ci_high=math.nan,
        delta_ci_low=_number(compared["low"]),
        delta_ci_high=_number(compared["high"]),
        p_value=p,
        test=str(compared["test"]),
    )
    return {**compared, "p": p}, judged.settled


def path_steps(study: optuna.Study) -> list[PathStep]:
    """One row per decided step of a path study (none for the fallback design, whose
    one-table-per-arm view is :func:`search.ablation.analyse`)."""
    info = path_record(study)
    if info.get("ran") != GREEDY:
        return []
    design = PathDesign.from_record(info["path"])
    seeds = list(info["seeds"])
    book = CellBook.of_study(study, design.settings)
    walk = walk_path(design, book.results(seeds))
    baseline = book.runs(walk.baseline, seeds)
    reasons = missing_reasons(study)
    rows = []
    for choice in walk.steps:
        runs = book.runs(choice.chosen.arm, seeds)
        mean, std, low, high = mean_interval([run.value for run in runs])
        gain, settled = _paired(runs, book.runs(choice.previous, seeds))
        change, _ = _paired(runs, baseline)
        notes = [text for text in (gain.get("note"), reasons.get(choice.chosen.arm.name)) if text]
        group = design.groups[choice.chosen.group]
        rows.append(
            PathStep(
                step=choice.step,
                flipped={name: design.target[name] for name in group},
                arm=choice.chosen.arm.name,
                previous=choice.previous.name,
                n=len(runs),
                mean=mean,
                std=_number(std),
                ci_low=_number(low),
                ci_high=_number(high),
                gain=_number(gain["delta"]),
                gain_ci_low=_number(gain["low"]),
                gain_ci_high=_number(gain["high"]),
                gain_p=gain["p"],
                gain_test=gain["test"],
                change=_number(change["delta"]),
                change_ci_low=_number(change["low"]),
                change_ci_high=_number(change["high"]),
                change_test=change["test"],
                within_noise=not settled,
                others={
                    candidate.arm.name: candidate.mean
                    for candidate in choice.candidates
                    if candidate is not choice.chosen
                },
                note="; ".join(notes) or None,
            )
        )
    return rows
