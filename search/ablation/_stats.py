"""Ablation statistics: per-arm summaries and paired differences to the baseline.

Per arm: n, mean, standard deviation and a 95% t interval. Against the baseline: the mean
difference over the seeds both ran (a paired t-test and its interval), or Welch's t-test when
the two arms share no seed, Holm's correction across every compared arm, and an effect size
(Cohen's d_z for paired differences, Hedges' g for Welch). All tests come from scipy.stats.

The table never claims more than the data allow:

* differences with no spread (identical on every shared seed, common with accuracies on a
  small validation set) make the t-test degenerate (p = 0, a zero-width interval). They are
  reported with the exact two-sided sign test instead, which reaches p < 0.05 only with at
  least :data:`MIN_SIGN_TEST_SEEDS` seeds (2 x 0.5^6 = 0.031; 5 seeds give 0.0625), and no
  interval; with fewer seeds the row says "cannot tell";
* exactly one shared seed is "too few seeds": the two samples are neither paired nor
  independent, so neither test applies;
* Holm's correction counts every arm compared with the baseline, including those without a
  p-value (they count as p = 1), so an untestable arm never makes the others look stronger;
* an arm with no finished cell is a row with n = 0 and the reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
MIN_SIGN_TEST_SEEDS = 6
# Spread below this (relative to the values) is float noise of identical differences.
NO_SPREAD = 1e-9
PAIRED, WELCH, SIGN_TEST, TOO_FEW, CANNOT_TELL = (
    "paired", "welch", "sign", "too few seeds", "cannot tell",
)  # fmt: skip
TESTS = (PAIRED, WELCH, SIGN_TEST, TOO_FEW, CANNOT_TELL)


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
    test: str | None = None  # one of TESTS
    seconds: float = 0.0
    note: str | None = None  # why a number is missing (too few seeds, no finished cell...)

    @property
    def settled(self) -> bool:
        """The difference is not seed noise at 5%: its interval excludes zero (t-tests), or
        the sign test's p < 0.05 (differences without spread). Never from a missing test."""
        if self.test == SIGN_TEST:
            return self.p_value is not None and self.p_value < 1 - CONFIDENCE
        if self.delta_ci_low is None or self.delta_ci_high is None:
            return False
        if math.isnan(self.delta_ci_low) or math.isnan(self.delta_ci_high):
            return False
        return self.delta_ci_low > 0 or self.delta_ci_high < 0


def mean_interval(values: list[float]) -> tuple[float, float, float, float]:
    """(mean, std, ci_low, ci_high) with a t interval; a single value has no spread."""
    data = np.asarray(values, dtype=float)
    mean = float(data.mean())
    if len(data) < 2:
        return mean, math.nan, math.nan, math.nan
    std = float(data.std(ddof=1))
    if _no_spread(data):
        return mean, 0.0, math.nan, math.nan  # every seed gave the same value: no interval
    low, high = stats.t.interval(CONFIDENCE, len(data) - 1, loc=mean, scale=stats.sem(data))
    return mean, std, float(low), float(high)


def _no_spread(values: np.ndarray) -> bool:
    scale = max(1.0, float(np.abs(values).max()))
    return float(values.std(ddof=1)) <= NO_SPREAD * scale


def holm(p_values: list[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1).

    Every entry is a tested hypothesis: a missing (None or NaN) p-value counts in the family
    size as p = 1 and stays None, so it cannot make the others look stronger."""
    m = len(p_values)
    indexed = sorted((p, i) for i, p in enumerate(p_values) if p is not None and not math.isnan(p))
    adjusted: list[float | None] = [None] * m
    running = 0.0
    for rank, (p, index) in enumerate(indexed):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[index] = running
    return adjusted


def _untested(delta: float, test: str, note: str) -> dict[str, float | str]:
    return {"delta": delta, "low": math.nan, "high": math.nan, "p": math.nan,
            "effect": math.nan, "test": test, "note": note}  # fmt: skip


def _paired(a: np.ndarray, b: np.ndarray) -> dict[str, float | str]:
    diff = a - b
    delta = float(diff.mean())
    if _no_spread(diff):
        if abs(delta) <= NO_SPREAD * max(1.0, float(np.abs(a).max())):
            return _untested(0.0, CANNOT_TELL, f"identical on all {len(diff)} shared seeds")
        if len(diff) < MIN_SIGN_TEST_SEEDS:
            return _untested(
                delta,
                CANNOT_TELL,
                f"the same difference on all {len(diff)} seeds; no spread to test with, and "
                f"the sign test needs >= {MIN_SIGN_TEST_SEEDS} seeds",
            )
        p = stats.binomtest(len(diff), len(diff), 0.5).pvalue
        note = f"the same difference on all {len(diff)} seeds: exact sign test"
        return {"delta": delta, "low": math.nan, "high": math.nan, "p": float(p),
                "effect": math.nan, "test": SIGN_TEST, "note": note}  # fmt: skip
    result = stats.ttest_rel(a, b)
    interval = result.confidence_interval(CONFIDENCE)
    return {
        "delta": delta,
        "low": float(interval.low),
        "high": float(interval.high),
        "p": float(result.pvalue),
        "effect": delta / float(diff.std(ddof=1)),
        "test": PAIRED,
        "note": None,
    }


def _welch(a: np.ndarray, b: np.ndarray) -> dict[str, float | str]:
    delta = float(a.mean() - b.mean())
    if _no_spread(a) and _no_spread(b):
        return _untested(delta, CANNOT_TELL, "no spread in either arm")
    result = stats.ttest_ind(a, b, equal_var=False)
    interval = result.confidence_interval(CONFIDENCE)
    pooled = math.sqrt(
        ((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / (len(a) + len(b) - 2)
    )
    correction = 1 - 3 / (4 * (len(a) + len(b)) - 9)  # Hedges' small-sample factor
    return {
        "delta": delta,
        "low": float(interval.low),
        "high": float(interval.high),
        "p": float(result.pvalue),
        "effect": delta / pooled * correction if pooled > 0 else math.nan,
        "test": WELCH,
        "note": "no shared seed: unpaired (Welch)",
    }


def _compare(arm: list[ArmRun], base: list[ArmRun]) -> dict[str, float | str]:
    arm_by_seed = {r.seed: r.value for r in arm}
    base_by_seed = {r.seed: r.value for r in base}
    common = sorted(set(arm_by_seed) & set(base_by_seed))
    # Paired over the seeds both ran (sequential seeds give the baseline more of them, and a
    # failed cell removes one). One shared seed: the samples are partly dependent, so
    # neither the paired nor Welch's test is valid. None shared: independent, Welch.
    if len(common) >= 2:
        a = np.array([arm_by_seed[s] for s in common])
        b = np.array([base_by_seed[s] for s in common])
        return _paired(a, b)
    a = np.array(list(arm_by_seed.values()))
    b = np.array(list(base_by_seed.values()))
    delta = float(a.mean() - b.mean())
    if len(common) == 1 or len(a) < 2 or len(b) < 2:
        return _untested(delta, TOO_FEW, f"{len(common)} seed(s) shared with the baseline")
    return _welch(a, b)


def summarise(
    runs: list[ArmRun],
    baseline: str,
    arm_order: list[str],
    missing: dict[str, str] | None = None,
) -> list[ArmSummary]:
    """One row per arm (in ``arm_order``; baseline first), Holm-adjusted across every arm
    compared with the baseline. An arm without runs is a row with n = 0 and the reason from
    ``missing`` (arm -> why it has no finished cell)."""
    missing = missing or {}
    by_arm: dict[str, list[ArmRun]] = {}
    for run in runs:
        by_arm.setdefault(run.arm, []).append(run)
    base = by_arm.get(baseline, [])
    rows: list[dict] = []
    for arm in arm_order:
        arm_runs = by_arm.get(arm, [])
        if not arm_runs:
            note = missing.get(arm, "no finished cell")
            rows.append({"arm": arm, "n": 0, "mean": math.nan, "std": math.nan,
                         "ci_low": math.nan, "ci_high": math.nan, "note": note})  # fmt: skip
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
        if arm != baseline:
            if base:
                compared = _compare(arm_runs, base)
                row.update(
                    delta=compared["delta"],
                    delta_ci_low=compared["low"],
                    delta_ci_high=compared["high"],
                    effect_size=compared["effect"],
                    test=compared["test"],
                    note=compared["note"],
                )
                p = float(compared["p"])
                row["p_value"] = None if math.isnan(p) else p
            else:
                row["note"] = "the baseline has no finished cell"
        rows.append(row)
    # The family: every arm that is not the baseline, tested or not (an untested one counts
    # as p = 1).
    family = [i for i, row in enumerate(rows) if row["arm"] != baseline]
    adjusted = holm([rows[i].get("p_value") for i in family])
    for i, p in zip(family, adjusted, strict=True):
        rows[i]["p_holm"] = p
    return [ArmSummary(**row) for row in rows]
