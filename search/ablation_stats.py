"""Ablation statistics: per-arm summaries and paired differences to the baseline.

Per arm: n, mean, standard deviation and a 95% t interval. Against the baseline: the mean
difference over the seeds both ran (a paired t-test and its interval), or Welch's t-test
where fewer than two seeds pair up, Holm's correction across arms, and an effect size (Cohen's
d_z for paired differences, Hedges' g for Welch). All tests come from scipy.stats.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95


@dataclass(frozen=True)
class ArmRun:
    arm: str
    seed: int
    value: float
    seconds: float


@dataclass(frozen=True)
class ArmSummary:
    arm: str
    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float
    delta: float | None = None
    delta_ci_low: float | None = None
    delta_ci_high: float | None = None
    p_value: float | None = None
    p_holm: float | None = None
    effect_size: float | None = None
    test: str | None = None  # "paired" or "welch"
    seconds: float = 0.0

    @property
    def settled(self) -> bool:
        """The difference's interval excludes zero."""
        if self.delta_ci_low is None or self.delta_ci_high is None:
            return False
        return self.delta_ci_low > 0 or self.delta_ci_high < 0


def mean_interval(values: list[float]) -> tuple[float, float, float, float]:
    """(mean, std, ci_low, ci_high) with a t interval; a single value has no spread."""
    data = np.asarray(values, dtype=float)
    mean = float(data.mean())
    if len(data) < 2:
        return mean, math.nan, math.nan, math.nan
    std = float(data.std(ddof=1))
    if std == 0:
        return mean, 0.0, mean, mean
    low, high = stats.t.interval(CONFIDENCE, len(data) - 1, loc=mean, scale=stats.sem(data))
    return mean, std, float(low), float(high)


def holm(p_values: list[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1); None stays None."""
    indexed = [(p, i) for i, p in enumerate(p_values) if p is not None and not math.isnan(p)]
    indexed.sort()
    m = len(indexed)
    adjusted: list[float | None] = list(p_values)
    running = 0.0
    for rank, (p, index) in enumerate(indexed):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[index] = running
    return adjusted


def _compare(arm: list[ArmRun], base: list[ArmRun]) -> dict[str, float | str]:
    arm_by_seed = {r.seed: r.value for r in arm}
    base_by_seed = {r.seed: r.value for r in base}
    common = sorted(set(arm_by_seed) & set(base_by_seed))
    # Paired over the seeds both ran (sequential seeds give the baseline more of them, and a
    # failed cell removes one); Welch only when fewer than two seeds pair up.
    if len(common) >= 2:
        a = np.array([arm_by_seed[s] for s in common])
        b = np.array([base_by_seed[s] for s in common])
        diff = a - b
        with warnings.catch_warnings():
            # Identical differences on every seed (common with accuracies on small validation
            # sets): scipy returns p = 0 and a zero-width interval, or NaN if they are all 0.
            warnings.simplefilter("ignore", RuntimeWarning)
            result = stats.ttest_rel(a, b)
            interval = result.confidence_interval(CONFIDENCE)
        spread = diff.std(ddof=1)
        return {
            "delta": float(diff.mean()),
            "low": float(interval.low),
            "high": float(interval.high),
            "p": float(result.pvalue),
            "effect": float(diff.mean() / spread) if spread > 0 else math.nan,
            "test": "paired",
        }
    a = np.array(list(arm_by_seed.values()))
    b = np.array(list(base_by_seed.values()))
    if len(a) < 2 or len(b) < 2:
        return {"delta": float(a.mean() - b.mean()), "low": math.nan, "high": math.nan,
                "p": math.nan, "effect": math.nan, "test": "welch"}  # fmt: skip
    result = stats.ttest_ind(a, b, equal_var=False)
    interval = result.confidence_interval(CONFIDENCE)
    pooled = math.sqrt(
        ((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / (len(a) + len(b) - 2)
    )
    correction = 1 - 3 / (4 * (len(a) + len(b)) - 9)  # Hedges' small-sample factor
    effect = (a.mean() - b.mean()) / pooled * correction if pooled > 0 else math.nan
    return {
        "delta": float(a.mean() - b.mean()),
        "low": float(interval.low),
        "high": float(interval.high),
        "p": float(result.pvalue),
        "effect": float(effect),
        "test": "welch",
    }


def summarise(runs: list[ArmRun], baseline: str, arm_order: list[str]) -> list[ArmSummary]:
    """One row per arm (in ``arm_order``; baseline first), Holm-adjusted across the others."""
    by_arm: dict[str, list[ArmRun]] = {}
    for run in runs:
        by_arm.setdefault(run.arm, []).append(run)
    base = by_arm.get(baseline, [])
    rows: list[dict] = []
    for arm in arm_order:
        arm_runs = by_arm.get(arm, [])
        if not arm_runs:
            continue
        mean, std, low, high = mean_interval([r.value for r in arm_runs])
        row: dict = {
            "arm": arm,
            "n": len(arm_runs),
            "mean": mean,
            "std": std,
            "ci_low": low,
            "ci_high": high,
            "seconds": float(sum(r.seconds for r in arm_runs)),
        }
        if arm != baseline and base:
            compared = _compare(arm_runs, base)
            row.update(
                delta=compared["delta"],
                delta_ci_low=compared["low"],
                delta_ci_high=compared["high"],
                p_value=compared["p"],
                effect_size=compared["effect"],
                test=compared["test"],
            )
        rows.append(row)
    adjusted = holm([row.get("p_value") for row in rows])
    return [ArmSummary(**row, p_holm=p) if "p_value" in row else ArmSummary(**row)
            for row, p in zip(rows, adjusted, strict=True)]  # fmt: skip
