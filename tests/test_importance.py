"""Parameter importance with bootstrap intervals over trials, on real Optuna evaluators and
in-memory studies: the numbers, their reproducibility, conditional parameters, replicates
that cannot be ranked, the replicate budget, and the figure that draws them."""

from __future__ import annotations

from typing import Any

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import FrozenTrial, create_trial

from search.report import ImportanceEstimate, bootstrap_importance
from search.report._figures import _importance_subtitle, importance_figure
from search.report._importance import (
    BUDGET_S,
    COSTS,
    MIN_REPLICATES,
    bootstrap_limit,
    planned_replicates,
)

UNIT = FloatDistribution(0.0, 1.0)


@pytest.fixture(autouse=True)
def _quiet() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one in-memory study per replicate


def _study(trials: list[FrozenTrial]) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    study.add_trials(trials)
    return study


def _driven(n: int, seed: int = 0) -> optuna.Study:
    """``driver`` sets the value (plus a little noise); ``noise`` has nothing to do with it."""
    rng = np.random.default_rng(seed)
    return _study([
        create_trial(params={"driver": float(x), "noise": float(y)},
                     distributions={"driver": UNIT, "noise": UNIT}, value=float(x + 0.05 * e))
        for x, y, e in zip(rng.random(n), rng.random(n), rng.normal(size=n), strict=True)
    ])  # fmt: skip


def _conditional(n: int = 12, with_momentum: int = 2) -> optuna.Study:
    """``momentum`` exists only where ``optimizer`` is sgd: in ``with_momentum`` of ``n``
    trials. ``lr`` drives the value."""
    rng = np.random.default_rng(1)
    trials = []
    for index in range(n):
        sgd = index < with_momentum
        params: dict[str, Any] = {"lr": float(rng.random()), "optimizer": "sgd" if sgd else "adam"}
        distributions: dict[str, Any] = {
            "lr": UNIT, "optimizer": CategoricalDistribution(["sgd", "adam"])}  # fmt: skip
        if sgd:
            params["momentum"] = float(0.6 + 0.05 * index)
            distributions["momentum"] = FloatDistribution(0.5, 0.99)
        trials.append(create_trial(params=params, distributions=distributions,
                                   value=params["lr"] + 0.01 * rng.normal()))  # fmt: skip
    return _study(trials)


@pytest.fixture
def evaluations(monkeypatch: pytest.MonkeyPatch) -> list[tuple[optuna.Study, Any]]:
    """Every study Optuna's real evaluator is given, with its result or the error it raised:
    first the all-trials view, then one resample per replicate."""
    import optuna.importance

    real = optuna.importance.get_param_importances
    seen: list[tuple[optuna.Study, Any]] = []

    def recorded(study: optuna.Study, **kwargs: Any) -> dict[str, float]:
        try:
            result = real(study, **kwargs)
        except Exception as error:
            seen.append((study, error))
            raise
        seen.append((study, result))
        return result

    monkeypatch.setattr(optuna.importance, "get_param_importances", recorded)
    return seen


def _by_name(estimate: ImportanceEstimate) -> dict[str, Any]:
    return {p.name: p for p in estimate.params}


def test_the_driver_interval_lies_above_the_noise_interval() -> None:
    estimate = bootstrap_importance(_driven(100), "ped-anova", replicates=60)
    params = _by_name(estimate)
    driver, noise = params["driver"], params["noise"]
    assert (estimate.trials, estimate.replicates, estimate.succeeded) == (100, 60, 60)
    assert [p.name for p in estimate.params] == ["driver", "noise"]  # most important first
    assert driver.low > 0.5 > noise.high  # the intervals do not overlap
    assert driver.low > noise.high + 0.3
    for param in (driver, noise):
        assert param.low <= param.estimate <= param.high
        assert param.support == 100 and len(param.samples) == 60
        low, high = np.percentile(param.samples, [2.5, 97.5])
        assert (param.low, param.high) == (low, high)
    # Normalized importances: each replicate's two values sum to 1, as the estimate's do.
    assert np.allclose(driver.samples + noise.samples, 1.0)
    assert driver.estimate + noise.estimate == pytest.approx(1.0)


def test_the_same_seed_gives_the_same_intervals() -> None:
    view = _driven(40, seed=2)
    first = bootstrap_importance(view, "ped-anova", replicates=30, seed=3)
    again = bootstrap_importance(view, "ped-anova", replicates=30, seed=3)
    other = bootstrap_importance(view, "ped-anova", replicates=30, seed=4)
    for a, b, c in zip(first.params, again.params, other.params, strict=True):
        assert np.array_equal(a.samples, b.samples)
        assert (a.estimate, a.low, a.high) == (b.estimate, b.low, b.high)
        assert a.estimate == c.estimate  # PED-ANOVA on all trials has no randomness
        assert not np.array_equal(a.samples, c.samples)  # the seed draws the resamples


def test_a_minority_conditional_parameter_counts_zero_where_a_resample_lacks_it(
    evaluations: list[tuple[optuna.Study, Any]],
) -> None:
    view = _conditional(n=12, with_momentum=2)
    estimate = bootstrap_importance(view, "ped-anova", replicates=100)
    momentum = _by_name(estimate)["momentum"]
    assert momentum.support == 2 and estimate.trials == 12
    assert _by_name(estimate)["lr"].support == 12
    assert len(evaluations) == 1 + 100 and evaluations[0][0] is view
    absent = 0
    for (resample, result), sample in zip(evaluations[1:], momentum.samples, strict=True):
        trials = resample.get_trials(deepcopy=False)
        assert len(trials) == 12
        if any("momentum" in t.params for t in trials):
            assert sample == result["momentum"]
        else:  # the evaluator does not rank what it never saw; the estimate counts 0
            assert "momentum" not in result and sample == 0.0
            absent += 1
    # A resample of 12 lacks both momentum trials with probability (10/12)^12 = 11%.
    assert 3 <= absent <= 25
    assert momentum.low == 0.0  # more than 2.5% of the replicates are 0


def test_a_replicate_the_evaluator_cannot_rank_is_counted_not_fatal(
    evaluations: list[tuple[optuna.Study, Any]],
) -> None:
    # One trial differs from the seven others; a resample without it has one value only, and
    # fANOVA raises "zero total variance in all trees" on it.
    rng = np.random.default_rng(1)
    view = _study([
        create_trial(params={"x": float(x), "y": float(y)}, distributions={"x": UNIT, "y": UNIT},
                     value=1.0 if index == 0 else 0.0)
        for index, (x, y) in enumerate(zip(rng.random(8), rng.random(8), strict=True))
    ])  # fmt: skip
    estimate = bootstrap_importance(view, "fanova", replicates=16)
    replicates = evaluations[1:]
    constant = [len({t.value for t in study.get_trials(deepcopy=False)}) == 1
                for study, _ in replicates]  # fmt: skip
    raised = [isinstance(result, RuntimeError) for _, result in replicates]
    assert raised == constant  # exactly the resamples without the distinct trial failed
    assert estimate.replicates == 16
    assert estimate.failed == sum(raised) >= 1 and estimate.succeeded == 16 - sum(raised) >= 2
    for param in estimate.params:
        assert len(param.samples) == estimate.succeeded
        assert (param.low, param.high) == tuple(np.percentile(param.samples, [2.5, 97.5]))
    figure = importance_figure(bootstrap_importance(view, "fanova", 16), "Importance")
    title = figure.layout.title.text
    assert f"({estimate.succeeded} of 16 bootstrap replicates succeeded)" in title
    assert ("read it with care" in title) == (estimate.succeeded < 2 / 3 * 16)


def test_the_replicates_fit_the_budget_and_stop_at_the_floor() -> None:
    for importance in ("ped-anova", "fanova"):
        limit = bootstrap_limit(importance)
        sizes = [2, 11, 50, limit, limit + 1, 10_000, 100_000]
        counts = [planned_replicates(importance, n) for n in sizes]
        assert counts == sorted(counts, reverse=True)
        assert counts[3] >= MIN_REPLICATES and counts[4:] == [0, 0, 0]
        for n, count in zip(sizes, counts, strict=True):
            assert count * COSTS[importance].seconds(n) <= BUDGET_S[importance]
    assert planned_replicates("ped-anova", 11) >= 100  # the quickstart's 11 trials
    assert planned_replicates("fanova", 11) < planned_replicates("ped-anova", 11)
    assert bootstrap_limit("ped-anova") >= 200 > bootstrap_limit("fanova")
    estimate = bootstrap_importance(_conditional(), "ped-anova")  # the planned count
    assert estimate.replicates == planned_replicates("ped-anova", 12) == estimate.succeeded


def test_the_figure_draws_the_estimate_its_interval_and_its_support() -> None:
    view = _conditional(n=12, with_momentum=5)
    estimate = bootstrap_importance(view, "ped-anova", replicates=50)
    figure = importance_figure(estimate, "Importance of val_acc")
    bars, interval, labels = figure.data
    params = list(reversed(estimate.params))  # the most important on top
    assert list(bars.y) == [p.name for p in params] == list(interval.y) == list(labels.y)
    assert list(bars.x) == [p.estimate for p in params]
    assert np.allclose(np.array(interval.x) - interval.error_x.array, [p.low for p in params])
    assert np.allclose(np.array(interval.x) + interval.error_x.array, [p.high for p in params])
    momentum = _by_name(estimate)["momentum"]
    text = f"{momentum.estimate:.2f} [{momentum.low:.2f}, {momentum.high:.2f}] · 5/12 trials"
    assert text in labels.text and text in bars.customdata  # beside the bar, and in its hover
    assert momentum.low < momentum.high  # an interval, not a point
    title = figure.layout.title.text
    assert title.startswith("Importance of val_acc<br>")
    assert "95% bootstrap interval over trials (50 of 50 bootstrap replicates succeeded)" in title
    assert "read it with care" not in title

    point = importance_figure(bootstrap_importance(view, "ped-anova", 0), "Importance")
    assert len(point.data) == 2  # bars and labels, no interval
    assert f"{momentum.estimate:.2f} · 5/12 trials" in point.data[1].text
    assert "no bootstrap interval (none asked)" in point.layout.title.text


def test_the_title_says_why_there_is_no_interval_or_a_weak_one() -> None:
    def estimate(trials: int, replicates: int, succeeded: int) -> ImportanceEstimate:
        return ImportanceEstimate("ped-anova", (), trials, replicates, succeeded)

    limit = bootstrap_limit("ped-anova")
    large = _importance_subtitle(estimate(10_000, 0, 0))
    assert large.startswith("Estimate on all 10,000 trials only, no bootstrap interval")
    assert f"computed up to {limit:,} trials" in large
    assert "read it with care" in _importance_subtitle(estimate(50, 30, 19))
    assert "11 resamples could not be ranked" in _importance_subtitle(estimate(50, 30, 19))
    assert "read it with care" not in _importance_subtitle(estimate(50, 30, 20))
    assert "1 of 30 bootstrap replicates succeeded, too few for an interval" in (
        _importance_subtitle(estimate(50, 30, 1))
    )
