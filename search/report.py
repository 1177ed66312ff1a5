"""The HTML report of a study: pure functions compute each figure's data, others draw it.

Importance and parallel coordinates are computed at the first rung: the latest epoch that
every finished trial reached (the "rung view"). With ASHA most trials are PRUNED, and
Optuna's importance functions only look at COMPLETE trials, which would leave a handful of
points; a later epoch would only hold the trials ASHA let through, a sample already filtered
on the metric, which understates parameters (such as ``lr``) whose bad values were pruned.
The figure titles say which epoch and how many trials.
"""

from __future__ import annotations

import html
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import optuna
import plotly
import plotly.graph_objects as go
from optuna.trial import FrozenTrial, TrialState

from search.ablation import HEADER, analyse, table_cells
from search.errors import UserError
from search.keys import Attr, StudyAttr
from search.store._read import count_states

STATE_COLOURS = {
    "COMPLETE": "#2ca02c",
    "PRUNED": "#ff7f0e",
    "FAIL": "#d62728",
    "RUNNING": "#1f77b4",
    "WAITING": "#7f7f7f",
}
Importance = Literal["ped-anova", "fanova"]


@dataclass(frozen=True)
class Curve:
    number: int
    state: str
    epochs: list[int]
    values: list[float]


def learning_curves(trials: list[FrozenTrial]) -> list[Curve]:
    """Each trial's intermediate values (one per epoch), in epoch order."""
    curves = []
    for trial in trials:
        if not trial.intermediate_values:
            continue
        steps = sorted(trial.intermediate_values)
        curves.append(
            Curve(
                trial.number, trial.state.name, steps, [trial.intermediate_values[s] for s in steps]
            )
        )
    return curves


def rung_epoch(trials: list[FrozenTrial]) -> int | None:
    """The latest epoch every finished trial reached (at least 2 trials): ASHA has filtered
    nothing there yet."""
    finished = [
        t
        for t in trials
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and t.intermediate_values
    ]
    if len(finished) < 2:
        return None
    return min(max(t.intermediate_values) for t in finished)


def rung_view(study: optuna.Study, epoch: int) -> optuna.Study:
    """An in-memory study whose trials are those that reached ``epoch``, valued there."""
    view = optuna.create_study(direction=study.direction)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        if epoch not in trial.intermediate_values:
            continue
        view.add_trial(
            optuna.trial.create_trial(
                params=trial.params,
                distributions=trial.distributions,
                value=trial.intermediate_values[epoch],
                user_attrs={"number": trial.number},
            )
        )
    return view


def best_trials(study: optuna.Study, limit: int = 10) -> list[dict[str, Any]]:
    """COMPLETE trials, best first, as table rows (number, value, epochs, seconds, params)."""
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    reverse = study.direction == optuna.study.StudyDirection.MAXIMIZE
    complete.sort(key=lambda t: t.value, reverse=reverse)
    return [
        {
            "number": t.number,
            "value": t.value,
            "epochs": t.user_attrs.get(Attr.EPOCHS_DONE),
            "seconds": t.user_attrs.get(Attr.WALL_SECONDS),
            "params": dict(t.params),
        }
        for t in complete[:limit]
    ]


def learning_curve_figure(curves: list[Curve], metric: str) -> go.Figure:
    figure = go.Figure()
    shown: set[str] = set()
    for curve in curves:
        figure.add_trace(
            go.Scatter(
                x=curve.epochs,
                y=curve.values,
                mode="lines+markers",
                line={"color": STATE_COLOURS.get(curve.state, "#7f7f7f"), "width": 1.5},
                marker={"size": 4},
                name=curve.state,
                legendgroup=curve.state,
                showlegend=curve.state not in shown,
                hovertemplate=f"trial {curve.number} ({curve.state})<br>epoch %{{x}}: %{{y:.4f}}",
            )
        )
        shown.add(curve.state)
    figure.update_layout(
        title="Learning curves (every epoch of every trial, coloured by final state)",
        xaxis_title="epoch",
        yaxis_title=metric,
    )
    return figure


def _importance_figure(view: optuna.Study, importance: Importance, title: str) -> go.Figure:
    # Imported here: fANOVA's module pulls in scikit-learn (~1 s), needed only for this figure.
    from optuna.importance import FanovaImportanceEvaluator, PedAnovaImportanceEvaluator

    evaluator = (
        FanovaImportanceEvaluator() if importance == "fanova" else PedAnovaImportanceEvaluator()
    )
    figure = optuna.visualization.plot_param_importances(view, evaluator=evaluator)
    figure.update_layout(title=title)
    return figure


def _section(title: str, body: str) -> str:
    return f"<section><h2>{html.escape(title)}</h2>{body}</section>"


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _table(rows: list[dict[str, Any]], metric: str) -> str:
    if not rows:
        return _note("No COMPLETE trial yet.")
    params = sorted({name for row in rows for name in row["params"]})
    head = "".join(
        f"<th>{html.escape(h)}</th>" for h in ["trial", metric, "epochs", "seconds", *params]
    )
    body = []
    for row in rows:
        cells = [row["number"], f"{row['value']:.4f}", row["epochs"], row["seconds"]]
        cells += [_fmt(row["params"].get(name, "")) for name in params]
        body.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


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


def _ablation_table_html(rows: list[Any]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in HEADER)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in table_cells(row)) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _ablation_figures(study: optuna.Study, metric: str) -> list[tuple[str, go.Figure | str]]:
    rows = analyse(study)
    return [
        ("Ablation table", _ablation_table_html(rows)),
        ("Differences to the baseline", forest_figure(rows, metric)),
        ("Per-epoch curves per arm", arm_curve_figure(arm_curves(study.trials), metric)),
    ]


def _search_figures(
    study: optuna.Study, trials: list[FrozenTrial], metric: str, importance: Importance
) -> list[tuple[str, go.Figure | str]]:
    figures: list[tuple[str, go.Figure | str]] = []
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if complete:
        history = optuna.visualization.plot_optimization_history(study, target_name=metric)
        figures.append(("Optimization history (COMPLETE trials)", history))
    else:
        figures.append(("Optimization history", _note("No COMPLETE trial yet.")))

    epoch = rung_epoch(trials)
    if epoch is None:
        figures.append(("Parameter importance", _note("Needs at least 2 finished trials.")))
    else:
        view = rung_view(study, epoch)
        label = (
            f"{metric} at epoch {epoch}, the first rung: all {len(view.trials)} finished "
            "trials, before ASHA selected any"
        )
        try:
            figure = _importance_figure(view, importance, f"Importance ({importance}) of {label}")
            figures.append((f"Parameter importance ({importance})", figure))
        except (RuntimeError, ValueError, ZeroDivisionError) as error:
            figures.append(("Parameter importance", _note(f"Not computable yet: {error}")))
        parallel = optuna.visualization.plot_parallel_coordinate(view, target_name=metric)
        parallel.update_layout(title=f"Parallel coordinates: {label}")
        figures.append(("Parallel coordinates", parallel))
    return figures


def build_report(study: optuna.Study, importance: Importance = "ped-anova") -> str:
    """The whole report as one HTML string (plotly.js embedded once, opens offline)."""
    trials = study.get_trials(deepcopy=False)
    study_file = study.user_attrs.get(StudyAttr.STUDY_FILE, {})
    metric = study_file.get("objective", {}).get("metric", "objective")
    counts = {k: v for k, v in count_states(trials).items() if v}
    figures: list[tuple[str, go.Figure | str]] = []
    if StudyAttr.ABLATION in study.user_attrs:
        # An ablation is no search: history, importance and best trials would rank seeds.
        figures += _ablation_figures(study, metric)
    else:
        figures += _search_figures(study, trials, metric, importance)
    figures.append(("Learning curves", learning_curve_figure(learning_curves(trials), metric)))
    if StudyAttr.ABLATION not in study.user_attrs:
        figures.append(("Best trials", _table(best_trials(study), metric)))

    parts = []
    plotly_included = False
    for title, content in figures:
        if isinstance(content, go.Figure):
            body = content.to_html(full_html=False, include_plotlyjs=not plotly_included)
            plotly_included = True
        else:
            body = content
        parts.append(_section(title, body))
    summary = ", ".join(f"{state} {n}" for state, n in counts.items()) or "no trials"
    provenance = html.escape(
        f"package {study.user_attrs.get('package_version', '?')}, "
        f"git {study.user_attrs.get('git_sha') or '?'}"
    )
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>resnet-hpo report: {html.escape(study.study_name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; }}
table {{ border-collapse: collapse; font-size: 0.85rem; }}
th, td {{ border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: right; }}
.note {{ color: #555; font-style: italic; }}
</style></head><body>
<h1>Study {html.escape(study.study_name)}</h1>
<p>Objective: {html.escape(metric)} ({study.direction.name.lower()}).
Trials: {html.escape(summary)}. Provenance: {provenance}.</p>
{"".join(parts)}
</body></html>
"""


def write_report(
    study: optuna.Study, path: str | Path, importance: Importance = "ped-anova"
) -> Path:
    path = Path(path)
    text = build_report(study, importance)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as error:
        raise UserError(
            f"cannot write the report to {path}: {error.strerror}; pass -o with a writable path"
        ) from None
    return path
