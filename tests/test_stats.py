"""Ablation statistics that cannot overclaim: degenerate cases, Holm's family, and the false-
positive rate under the null, checked by simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from search.ablation._stats import (
    CANNOT_TELL,
    MIN_SIGN_TEST_SEEDS,
    SIGN_TEST,
    TOO_FEW,
    ArmRun,
    holm,
    mean_interval,
    summarise,
)
from search.ablation.null import simulate_null


def _runs(arm: str, values: list[float], first_seed: int = 0) -> list[ArmRun]:
    return [ArmRun(arm, first_seed + s, v, 1.0) for s, v in enumerate(values)]


def _rows(runs: list[ArmRun], arms: list[str], **kwargs: object) -> dict:
    return {r.arm: r for r in summarise(runs, "baseline", ["baseline", *arms], **kwargs)}


def test_identical_differences_are_cannot_tell_not_p_zero() -> None:
    runs = _runs("baseline", [0.5, 0.6, 0.7]) + _runs("same", [0.5, 0.6, 0.7])
    runs += _runs("shifted", [0.6, 0.7, 0.8])
    # Float noise: 0.1 differences computed from other values differ in the last bits.
    runs += _runs("noisy", [0.5 + 0.1, 0.6 + 0.1 + 1e-16, 0.7 + 0.1 - 1e-16])
    rows = _rows(runs, ["same", "shifted", "noisy"])
    for arm in ("same", "shifted", "noisy"):
        row = rows[arm]
        assert row.test == CANNOT_TELL, arm
        assert row.p_value is None and row.p_holm is None
        assert math.isnan(row.delta_ci_low) and math.isnan(row.delta_ci_high)
        assert not row.settled
        assert row.note
    assert rows["shifted"].delta == pytest.approx(0.1)
    assert rows["same"].delta == 0.0


def test_identical_differences_on_enough_seeds_use_the_sign_test() -> None:
    n = MIN_SIGN_TEST_SEEDS
    base = [0.5 + 0.01 * s for s in range(n)]
    runs = _runs("baseline", base) + _runs("shifted", [v + 0.1 for v in base])
    row = _rows(runs, ["shifted"])["shifted"]
    assert row.test == SIGN_TEST
    assert row.p_value == pytest.approx(stats.binomtest(n, n, 0.5).pvalue)
    assert row.p_value == pytest.approx(2 * 0.5**n) and row.p_value < 0.05
    assert row.settled
    # One seed fewer: the sign test could not reach 5%, so it is not even tried.
    runs = _runs("baseline", base[:-1]) + _runs("shifted", [v + 0.1 for v in base[:-1]])
    assert _rows(runs, ["shifted"])["shifted"].test == CANNOT_TELL
    assert 2 * 0.5 ** (n - 1) > 0.05


def test_a_single_shared_seed_is_too_few_not_welch() -> None:
    runs = _runs("baseline", [0.50, 0.55, 0.60]) + _runs("arm", [0.70], first_seed=1)
    runs += _runs("arm2", [0.61, 0.66], first_seed=2)  # seed 2 shared, seed 3 not
    rows = _rows(runs, ["arm", "arm2"])
    for arm in ("arm", "arm2"):
        assert rows[arm].test == TOO_FEW
        assert rows[arm].p_value is None and not rows[arm].settled
        assert "1 seed(s) shared" in rows[arm].note


def test_welch_only_for_arms_sharing_no_seed() -> None:
    base = [0.50, 0.55, 0.60, 0.52]
    other = [0.60, 0.62, 0.67]
    runs = _runs("baseline", base) + _runs("other", other, first_seed=100)
    row = _rows(runs, ["other"])["other"]
    expected = stats.ttest_ind(other, base, equal_var=False)
    assert row.test == "welch" and row.p_value == pytest.approx(expected.pvalue)


def test_holm_counts_every_compared_arm() -> None:
    # A missing p-value still counts in the family: m = 3 here, not 2.
    assert holm([0.01, None, 0.02]) == pytest.approx([0.03, None, 0.04])
    assert holm([0.01, float("nan"), 0.02]) == pytest.approx([0.03, None, 0.04])
    rng = np.random.default_rng(1)
    base = rng.normal(0.9, 0.01, 4)
    runs = _runs("baseline", list(base)) + _runs("better", list(base + rng.normal(0.05, 0.01, 4)))
    runs += _runs("same", list(base))  # cannot tell: no p
    rows = _rows(runs, ["better", "same", "empty"], missing={"empty": "no finished cell: 2 FAIL"})
    assert rows["better"].p_holm == pytest.approx(min(1.0, 3 * rows["better"].p_value))


def test_an_arm_without_finished_cells_is_a_row_with_its_reason() -> None:
    runs = _runs("baseline", [0.5, 0.6])
    reason = "no finished cell: 2 FAIL exception:RuntimeError"
    rows = summarise(runs, "baseline", ["baseline", "broken"], missing={"broken": reason})
    assert [r.arm for r in rows] == ["baseline", "broken"]
    assert rows[1].n == 0 and rows[1].note == reason and not rows[1].settled
    assert math.isnan(rows[1].mean)


def test_an_arm_whose_seeds_agree_has_no_interval() -> None:
    mean, std, low, high = mean_interval([0.75, 0.75, 0.75])
    assert (mean, std) == (0.75, 0.0)
    assert math.isnan(low) and math.isnan(high)


@pytest.mark.parametrize("seeds", [3, 6])
def test_false_positive_rate_under_the_null_is_at_most_five_percent(seeds: int) -> None:
    rates = simulate_null(tables=1000, seeds=seeds, rng_seed=seeds)
    per_arm_error = 3 * math.sqrt(0.05 * 0.95 / rates.arms)
    assert rates.fixed <= 0.05 + per_arm_error
    assert rates.familywise <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / 1000)


def test_sequential_seeds_inflate_the_false_positive_rate() -> None:
    """What README says of the sequential design: optional stopping raises the rate."""
    rates = simulate_null(tables=400, seeds=3, max_seeds=6, rng_seed=1)
    assert rates.sequential > rates.fixed
    assert rates.sequential > 0.05
