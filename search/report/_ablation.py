"""The figures of an ablation study: its table, the forest plot of differences to the
baseline, and per-epoch curves per arm (mean over seeds with a +/- 1 std band)."""

from __future__ import annotations

import html
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
import plotly
import plotly.graph_objects as go
from optuna.trial import FrozenTrial, TrialState

from search.ablation import (
    HEADER,
    PATH,
    PATH_HEADER,
    PathStep,
    analyse,
    path_cells,
    path_steps,
    table_cells,
)
from search.keys import Attr, StudyAttr


@dataclass(frozen=True)
class ArmCurve:
    arm: str
    epochs: list[int]
    mean: list[float]
    low: list[float]  # mean - std over seeds
    high: list[float]
    seeds: int


def arm_curves(trials: list[FrozenTrial]) -> list[ArmCurve]:
    """Per arm of an ablation: the per-epoch mean and mean +/- std over its seeds."""
    by_arm: dict[str, list[FrozenTrial]] = {}
    for trial in trials:
        if Attr.ARM in trial.user_attrs and trial.state == TrialState.COMPLETE:
            by_arm.setdefault(trial.user_attrs[Attr.ARM], []).append(trial)
    curves = []
    for arm, members in by_arm.items():
        epochs = sorted({e for t in members for e in t.intermediate_values})
        mean, low, high = [], [], []
        for epoch in epochs:
            values = [
                t.intermediate_values[epoch] for t in members if epoch in t.intermediate_values
            ]
            centre = statistics.fmean(values)
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            mean.append(centre)
            low.append(centre - spread)
            high.append(centre + spread)
        curves.append(ArmCurve(arm, epochs, mean, low, high, len(members)))
    return curves


def arm_curve_figure(curves: list[ArmCurve], metric: str) -> go.Figure:
    figure = go.Figure()
    palette = plotly.colors.qualitative.Plotly
    for index, curve in enumerate(curves):
        colour = palette[index % len(palette)]
        figure.add_trace(
            go.Scatter(
                x=curve.epochs + curve.epochs[::-1],
                y=curve.high + curve.low[::-1],
                fill="toself",
                fillcolor=colour,
                opacity=0.2,
                line={"width": 0},
                hoverinfo="skip",
                showlegend=False,
                legendgroup=curve.arm,
            )
        )
        figure.add_trace(
            go.Scatter(
                x=curve.epochs,
                y=curve.mean,
                mode="lines+markers",
                line={"color": colour},
                name=f"{curve.arm} (n={curve.seeds})",
                legendgroup=curve.arm,
            )
        )
    figure.update_layout(
        title="Per-epoch curves per arm (mean over seeds, band: +/- 1 std)",
        xaxis_title="epoch",
        yaxis_title=metric,
    )
    return figure


def _finite_or_zero(high: float | None, low: float | None) -> float:
    if high is None or low is None or math.isnan(high) or math.isnan(low):
        return 0.0
    return high - low


def forest_figure(rows: list[Any], metric: str) -> go.Figure:
    """Each arm's difference to the baseline with its 95% CI; the baseline sits at zero."""
    compared = [r for r in rows if r.delta is not None]
    labels = [r.arm for r in compared]
    deltas = [r.delta for r in compared]
    # No bar where there is no interval (too few seeds, no spread): never a zero-width CI.
    plus = [_finite_or_zero(r.delta_ci_high, r.delta) for r in compared]
    minus = [_finite_or_zero(r.delta, r.delta_ci_low) for r in compared]
    figure = go.Figure(
        go.Scatter(
            x=deltas,
            y=labels,
            mode="markers",
            marker={"size": 10, "color": ["#2ca02c" if r.settled else "#7f7f7f" for r in compared]},
            error_x={"type": "data", "array": plus, "arrayminus": minus, "visible": True},
            hovertemplate="%{y}: %{x:+.4f}<extra></extra>",
        )
    )
    figure.add_vline(x=0, line_dash="dash", annotation_text="baseline")
    figure.update_layout(
        title=f"Difference to the baseline in {metric} (95% CI; green: CI excludes 0)",
        xaxis_title=f"delta {metric}",
        yaxis={"autorange": "reversed"},
    )
    return figure


def html_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """An HTML table of text cells, escaped."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def ablation_table_html(rows: list[Any]) -> str:
    return html_table(HEADER, (table_cells(row) for row in rows))


def path_table_html(steps: list[PathStep]) -> str:
    return html_table(PATH_HEADER, (path_cells(step) for step in steps))


def path_figure(baseline: Any, steps: list[PathStep], metric: str) -> go.Figure:
    """The cumulative path: the baseline, then each step's configuration (mean over seeds,
    95% interval); a grey marker where the step's gain is within seed noise."""
    labels = ["baseline"] + [
        f"{step.step}: " + ", ".join(f"{k}={v}" for k, v in step.flipped.items()) for step in steps
    ]
    means = [baseline.mean] + [step.mean for step in steps]
    highs = [baseline.ci_high] + [step.ci_high for step in steps]
    lows = [baseline.ci_low] + [step.ci_low for step in steps]
    noise = [False] + [step.within_noise for step in steps]
    figure = go.Figure(
        go.Scatter(
            x=labels,
            y=means,
            mode="lines+markers",
            line={"shape": "hv", "color": "#1f77b4"},
            marker={"size": 11, "color": ["#7f7f7f" if n else "#1f77b4" for n in noise]},
            error_y={
                "type": "data",
                "array": [_finite_or_zero(h, m) for h, m in zip(highs, means, strict=True)],
                "arrayminus": [_finite_or_zero(m, lo) for m, lo in zip(means, lows, strict=True)],
                "visible": True,
            },
            hovertemplate="%{x}: %{y:.4f}<extra></extra>",
        )
    )
    figure.update_layout(
        title=f"Path from the baseline to the target: {metric} after each step (95% CI; "
        "grey: the step's paired gain is within seed noise)",
        xaxis_title="step (the settings it changes to the target's values)",
        yaxis_title=metric,
    )
    return figure


def ablation_figures(study: optuna.Study, metric: str) -> list[tuple[str, go.Figure | str]]:
    """The table, the forest plot and the per-arm curves of an ablation study; for a path
    ablation, the path first (its steps' table and the cumulative chart)."""
    rows = analyse(study)
    sections: list[tuple[str, go.Figure | str]] = []
    steps = path_steps(study) if study.user_attrs[StudyAttr.ABLATION].get("design") == PATH else []
    if steps:
        sections += [
            ("Path from baseline to target", path_table_html(steps)),
            ("The path step by step", path_figure(rows[0], steps, metric)),
        ]
    return sections + [
        ("Ablation table", ablation_table_html(rows)),
        ("Differences to the baseline", forest_figure(rows, metric)),
        ("Per-epoch curves per arm", arm_curve_figure(arm_curves(study.trials), metric)),
    ]
