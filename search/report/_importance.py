"""Parameter importance with its sampling noise: Optuna's importance on all trials, and a
bootstrap over trials around it (no plotting here).

A point estimate on a few trials misleads: on the quickstart's 11 trials PED-ANOVA gave
``momentum``, present in a minority of them, 0.48. Resampling the trials with replacement and
recomputing the importance shows how much of such a number the trials support.

Each replicate builds an in-memory study of its resample (``trials_study``: the trials are
shared, not copied) and runs the evaluator on it, so its cost grows with the number of
trials. Measured on a 2-core machine (build + evaluation): PED-ANOVA 0.5 + 3.2 ms at 300
trials, 4.7 + 15 ms at 3,000, 64 + 58 ms at 10,000; fANOVA about 45 ms + 5.1 ms per trial up
to a few hundred trials (300 trials: 1.6-2.5 s) and far worse beyond (10,000 trials: 20
minutes for a single call). ``planned_replicates`` turns those
costs and a time budget per evaluator into a replicate count; below ``MIN_REPLICATES`` it
plans none, and the figure says the estimate is a point estimate only.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from search.report._data import trials_study

if TYPE_CHECKING:
    from optuna.importance import BaseImportanceEvaluator

Importance = Literal["ped-anova", "fanova"]
INTERVAL = (2.5, 97.5)  # percentiles of the replicates: a 95% interval
# Below this many replicates the 2.5% and 97.5% percentiles are little more than the lowest
# and highest replicate, so no interval is drawn at all.
MIN_REPLICATES = 20
MAX_REPLICATES = 200
# What evaluators raise on a sample they cannot rank (fANOVA: "zero total variance in all
# trees"; normalising an empty or all-zero result).
EVALUATOR_ERRORS = (RuntimeError, ValueError, ZeroDivisionError)


@dataclass(frozen=True)
class _Cost:
    """Seconds of one replicate on a 2-core machine: building its study, then evaluating."""

    fixed_s: float
    per_trial_s: float

    def seconds(self, trials: int) -> float:
        return self.fixed_s + self.per_trial_s * trials


COSTS: dict[Importance, _Cost] = {
    "ped-anova": _Cost(fixed_s=0.003, per_trial_s=10e-6),
    "fanova": _Cost(fixed_s=0.045, per_trial_s=5.1e-3),
}
# Seconds the bootstrap may add to a report. PED-ANOVA is the default and the report is
# meant to stay under 3 s (about 2.4 s without the bootstrap on a 2-core machine); fANOVA
# is asked for by name, already slow, and worth a longer wait on the small studies it suits.
BUDGET_S: dict[Importance, float] = {"ped-anova": 0.5, "fanova": 10.0}


def planned_replicates(importance: Importance, trials: int) -> int:
    """How many bootstrap replicates of ``trials`` trials fit in the evaluator's budget:
    up to ``MAX_REPLICATES``, and 0 where fewer than ``MIN_REPLICATES`` would fit."""
    fit = int(BUDGET_S[importance] // COSTS[importance].seconds(trials))
    replicates = min(MAX_REPLICATES, fit)
    return replicates if replicates >= MIN_REPLICATES else 0


def bootstrap_limit(importance: Importance) -> int:
    """The most trials that still get ``MIN_REPLICATES`` replicates."""
    cost = COSTS[importance]
    limit = int((BUDGET_S[importance] / MIN_REPLICATES - cost.fixed_s) / cost.per_trial_s)
    while limit > 0 and planned_replicates(importance, limit) < MIN_REPLICATES:
        limit -= 1  # the division above can land one past it in floating point
    return limit


@dataclass(frozen=True)
class ParamImportance:
    """One parameter's normalized importance: on all trials, and over the replicates."""

    name: str
    estimate: float  # on all trials
    low: float  # 2.5% percentile of the replicates; NaN with fewer than 2
    high: float  # 97.5% percentile
    support: int  # trials that have the parameter (a conditional one is in only some)
    samples: np.ndarray  # one per succeeded replicate, 0 where the resample lacked it


@dataclass(frozen=True)
class ImportanceEstimate:
    """Importances of a study's parameters, the most important first, with a 95% bootstrap
    interval over trials."""

    importance: Importance
    params: tuple[ParamImportance, ...]
    trials: int  # COMPLETE trials with a finite value: what the evaluators read
    replicates: int  # asked for
    succeeded: int  # replicates whose evaluator ranked their resample

    @property
    def failed(self) -> int:
        return self.replicates - self.succeeded

    @property
    def has_interval(self) -> bool:
        return self.succeeded >= 2


def bootstrap_importance(
    view: optuna.Study,
    importance: Importance,
    replicates: int | None = None,
    seed: int = 0,
) -> ImportanceEstimate:
    """Normalized importances of ``view``'s parameters on all its trials, and their 2.5-97.5%
    percentiles over ``replicates`` resamples of those trials (with replacement, the same
    evaluator; by default ``planned_replicates``).

    The resamples come from a ``numpy`` generator seeded with ``seed``, and fANOVA's forests
    get the same seed on every replicate (the estimator stays one function of the trials), so
    one study always gives the same estimate. A parameter missing from a replicate's result
    (a conditional one absent from that resample) counts 0 there; a replicate whose evaluator
    raises is skipped and counted. The parameters are those ranked on all trials (fANOVA ranks
    only parameters present in every trial). Errors of the all-trials evaluation propagate.
    """
    trials = _ranked_trials(view)
    if replicates is None:
        replicates = planned_replicates(importance, len(trials))
    point = _importances(view, importance, seed)
    names = list(point)
    rng = np.random.default_rng(seed)
    rows = [
        row
        for _ in range(replicates)
        if (row := _replicate(view, trials, importance, names, rng, seed)) is not None
    ]
    samples = np.array(rows, dtype=float).reshape(len(rows), len(names))
    if len(rows) >= 2:
        low, high = np.percentile(samples, INTERVAL, axis=0)
    else:  # a percentile of one replicate is no interval
        low = high = np.full(len(names), np.nan)
    params = tuple(
        ParamImportance(
            name=name,
            estimate=float(point[name]),
            low=float(low[i]),
            high=float(high[i]),
            support=sum(name in t.params for t in trials),
            samples=samples[:, i],
        )
        for i, name in enumerate(names)
    )
    return ImportanceEstimate(importance, params, len(trials), replicates, len(rows))


def _replicate(
    view: optuna.Study,
    trials: list[FrozenTrial],
    importance: Importance,
    names: list[str],
    rng: np.random.Generator,
    seed: int,
) -> list[float] | None:
    """One resample's importances of ``names`` (0 where its result lacks one), or None
    where the evaluator cannot rank the resample."""
    resample = _resample_study(view, trials, rng)
    with warnings.catch_warnings():
        # Each resample repeats the warnings of the all-trials evaluation (small regimes,
        # equal quantiles), which has already shown them.
        warnings.simplefilter("ignore")
        try:
            result = _importances(resample, importance, seed)
        except EVALUATOR_ERRORS:
            return None
    return [result.get(name, 0.0) for name in names]


def _ranked_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The trials Optuna's evaluators read: COMPLETE, with finite values."""
    return [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.values is not None and all(math.isfinite(v) for v in t.values)
    ]


def _resample_study(
    view: optuna.Study, trials: list[FrozenTrial], rng: np.random.Generator
) -> optuna.Study:
    """An in-memory study of ``len(trials)`` trials drawn from ``trials`` with replacement
    (a trial drawn twice is two trials, as the bootstrap means)."""
    drawn = [trials[i] for i in rng.integers(0, len(trials), size=len(trials))]
    return trials_study(drawn, view.direction.name.lower())


def _importances(study: optuna.Study, importance: Importance, seed: int) -> dict[str, float]:
    # Imported here: fANOVA's module pulls in scikit-learn (~1 s), which `--help` and the
    # readers must not pay for.
    from optuna.importance import get_param_importances

    return get_param_importances(study, evaluator=_evaluator(importance, seed))


def _evaluator(importance: Importance, seed: int) -> BaseImportanceEvaluator:
    from optuna.importance import FanovaImportanceEvaluator, PedAnovaImportanceEvaluator

    if importance == "fanova":
        return FanovaImportanceEvaluator(seed=seed)
    return PedAnovaImportanceEvaluator()  # deterministic: no seed to pass
