"""Final evaluation's plan: the best configurations of a search, each retrained with seeds.

Each (configuration, seed) cell is one queued Optuna trial of a new study (``NAME-evaluation``
by default): the search study is only read. The configurations and seeds are fixed when the
evaluation study is created, so a killed evaluation continues the same cells.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from model.settings import TrialSettings
from search.ablation._design import SEED_PARAM, SEED_RANGE, Arm, arm_of
from search.ablation._queue import enqueue_cell, queued_params
from search.config import STUDY_OWNED_FIELDS, RayConfig, StudyConfig
from search.errors import IncompatibleStudyError
from search.keys import RETRYABLE_REASONS, Attr, StudyAttr

# Settings final evaluation sets itself: the seed per cell, the epochs from the search.
_NOT_COMPARED = (SEED_PARAM, *STUDY_OWNED_FIELDS)
TEST_SPLIT_NOTE = (
    "read only by resnet-hpo evaluate: each trial evaluates it once, after its last epoch "
    "(trial attribute test_images); the search never receives it"
)


@dataclass(frozen=True)
class Candidate:
    """A configuration of the search, named by the trial that found it."""

    number: int  # the search trial
    value: float  # its objective value in the search (validation)
    settings: dict[str, Any]  # every trial setting but the seed and the epochs

    @property
    def arm(self) -> str:
        return f"trial {self.number}"


def _trained_with(trial: FrozenTrial) -> dict[str, Any]:
    """Every setting a search trial trained with, trial defaults filled in."""
    defaults = {name: field.default for name, field in TrialSettings.model_fields.items()}
    return {**defaults, **(trial.user_attrs.get(Attr.CONFIG) or trial.params)}


def trained_seed(trial: FrozenTrial) -> int:
    """The seed a search trial trained with."""
    return int(_trained_with(trial)[SEED_PARAM])


def trial_settings(trial: FrozenTrial) -> dict[str, Any]:
    """What a search trial trained with, but the seed and the epochs (evaluation sets those)."""
    settings = _trained_with(trial)
    for name in _NOT_COMPARED:
        settings.pop(name, None)
    return settings


def ranked_candidates(study: optuna.Study) -> list[Candidate]:
    """The search's COMPLETE trials, best first (ties: the earlier trial), one per distinct
    configuration: a configuration found twice is represented by its better trial."""
    maximize = study.direction == StudyDirection.MAXIMIZE
    complete = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.value is not None and math.isfinite(t.value)
    ]
    complete.sort(key=lambda t: (-t.value if maximize else t.value, t.number))
    ranked: list[Candidate] = []
    for trial in complete:
        settings = trial_settings(trial)
        if all(settings != c.settings for c in ranked):
            ranked.append(Candidate(trial.number, float(trial.value), settings))
    return ranked


# Evaluation seeds start here and skip every seed a candidate trained with in the search:
# seed 0 of a search trial retrained on the same split is that trial again, bit for bit,
# the very run that won partly by its seed's luck.
FIRST_SEED = 1000


def evaluation_seeds(search_seeds: set[int], count: int) -> list[int]:
    seeds: list[int] = []
    seed = FIRST_SEED
    while len(seeds) < count:
        if seed not in search_seeds:
            seeds.append(seed)
        seed += 1
    return seeds


def candidates_by_number(study: optuna.Study, numbers: list[int]) -> list[Candidate]:
    trials = study.get_trials(deepcopy=False)
    return [Candidate(n, float(trials[n].value), trial_settings(trials[n])) for n in numbers]


def arms_of(candidates: list[Candidate]) -> tuple[list[Arm], dict[str, Any]]:
    """Each candidate as an arm over the settings that differ between candidates, and the
    settings all of them share (the evaluation study's ``fixed``)."""
    names = list(candidates[0].settings)
    differing = [n for n in names if len({repr(c.settings[n]) for c in candidates}) > 1]
    shared = {n: candidates[0].settings[n] for n in names if n not in differing}
    arms = [Arm(c.arm, {n: c.settings[n] for n in differing}) for c in candidates]
    return arms, shared


def engine_config(
    search: StudyConfig, candidates: list[Candidate], seeds: int, name: str, storage: str
) -> StudyConfig:
    """The study that runs the evaluation on the search engine: the search's data, objective,
    resources and epoch budget; the differing settings and the seed as its parameters."""
    arms, shared = arms_of(candidates)
    space: dict[str, Any] = {}
    for arm in arms:
        for setting, value in arm.values.items():
            choices = space.setdefault(setting, {"type": "categorical", "choices": []})["choices"]
            if value not in choices:
                choices.append(value)
    space[SEED_PARAM] = {"type": "int", "low": SEED_RANGE[0], "high": SEED_RANGE[1]}
    return StudyConfig(
        name=name,
        dataset=search.dataset,
        space=space,
        fixed=shared,
        objective=search.objective,
        sampler={"name": "random", "seed": 0},
        asha={"max_epochs": search.asha.max_epochs, "enabled": False},
        n_trials=len(candidates) * seeds,
        max_concurrent=search.max_concurrent,
        max_failures=search.max_failures,
        max_failed_trials=search.max_failed_trials,
        resources=search.resources,
        # Not the search's ray.address: where it ran then says nothing about where a cluster
        # is now (--ray-address or RAY_ADDRESS say).
        ray=RayConfig(),
        checkpoints=search.checkpoints,
        checkpoint_storage=search.checkpoint_storage,
        storage=storage,
        output_dir=search.output_dir,
        lease_timeout_s=search.lease_timeout_s,
    )


@dataclass
class EvaluationPlan:
    """The cells of an evaluation as queued trials (a ``QueuePlan`` of the engine)."""

    record: dict[str, Any]  # the study's EVALUATION attribute
    candidates: list[Candidate]
    seeds: list[int]

    def __post_init__(self) -> None:
        self.arms, _ = arms_of(self.candidates)

    def check(self, study: optuna.Study) -> None:
        stored = study.user_attrs.get(StudyAttr.EVALUATION)
        if stored is not None:
            refuse_changed_plan(study.study_name, stored, self.record)

    def describe(self, params: dict[str, Any]) -> dict[str, Any]:
        arm = arm_of(self.arms, params)
        return {Attr.ARM: arm.name if arm else "unplanned", Attr.SEED: params.get(SEED_PARAM)}

    def enqueue_missing(self, study: optuna.Study) -> int:
        """Queue every (configuration, seed) no trial covers yet: none runs twice, across
        crashes and reruns. A trial lost to a crash is covered by its retry."""
        if StudyAttr.EVALUATION not in study.user_attrs:
            # The plan first: it is what marks the study as an evaluation everywhere.
            study.set_user_attr(StudyAttr.EVALUATION, self.record)
            study.set_user_attr(StudyAttr.EVALUATES, self.record["evaluates"])
        covered: set[tuple[str, Any]] = set()
        for trial in study.get_trials(deepcopy=False):
            if trial.state == TrialState.FAIL and (
                trial.user_attrs.get(Attr.STOP_REASON) in RETRYABLE_REASONS
            ):
                continue  # its retry (queued with the same parameters) covers the cell
            params = queued_params(trial)
            arm = arm_of(self.arms, params)
            if arm is not None:
                covered.add((arm.name, params.get(SEED_PARAM)))
        queued = 0
        for arm in self.arms:
            for seed in self.seeds:
                if (arm.name, seed) not in covered:
                    enqueue_cell(study, arm, seed)
                    queued += 1
        return queued


# What must match for a rerun to continue an evaluation study.
PLAN_KEYS = ("evaluates", "refit", "top", "seeds")


def refuse_changed_plan(name: str, stored: dict[str, Any], current: dict[str, Any]) -> None:
    lines = [
        f"{key}: {stored.get(key)!r} -> {current.get(key)!r}"
        for key in PLAN_KEYS
        if stored.get(key) != current.get(key)
    ]
    if lines:
        shown = "\n  ".join(lines)
        raise IncompatibleStudyError(
            f"evaluation study {name!r} already exists with another plan:\n  {shown}\n"
            "Run evaluate with its original --top, --seeds and --refit to continue it, or give "
            "the new evaluation its own study: --name NEW_NAME"
        )
