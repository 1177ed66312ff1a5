"""The figures of a search study, drawn from what ``_data`` computes.

Traces with many points use WebGL (``Scattergl``): a browser draws 10,000 points in SVG
slowly and the page grows with every one.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import optuna
import plotly.graph_objects as go

from search.report._data import (
    ALL_CURVES_UP_TO,
    Band,
    History,
    best_rows,
    curve_bands,
    rung_values,
)
from search.store import MISSING, TrialColumns

STATE_COLOURS = {
    "COMPLETE": "#2ca02c",
    "PRUNED": "#ff7f0e",
    "FAIL": "#d62728",
    "RUNNING": "#1f77b4",
    "WAITING": "#7f7f7f",
}
Importance = Literal["ped-anova", "fanova"]
# Best trials whose own curves are drawn over the bands of a large study.
BEST_CURVES = 10


def history_figure(data: History, metric: str) -> go.Figure:
    figure = go.Figure()
    figure.add_trace(
        go.Scattergl(
            x=data.numbers,
            y=data.values,
            mode="markers",
            name=metric,
            marker={"size": 4, "color": STATE_COLOURS["COMPLETE"]},
        )  # fmt: skip
    )
    figure.add_trace(
        go.Scattergl(
            x=data.numbers,
            y=data.best_so_far,
            mode="lines",
            name="best so far",
            line={"color": "#444"},
        )  # fmt: skip
    )
    figure.update_layout(
        title=f"Optimization history: {len(data.numbers)} COMPLETE trials",
        xaxis_title="trial",
        yaxis_title=metric,
    )
    return figure


def learning_curve_figure(columns: TrialColumns, metric: str) -> go.Figure:
    """Every trial's curve coloured by state, or, above ``ALL_CURVES_UP_TO`` trials, the 10-90%
    band and median per state plus the best trials' own curves."""
    figure = go.Figure()
    with_curves = np.unique(columns.curve_row)
    if len(with_curves) <= ALL_CURVES_UP_TO:
        _each_curve(figure, columns, with_curves, show_state=True)
        title = "Learning curves (every epoch of every trial, coloured by final state)"
    else:
        for band in curve_bands(columns):
            _band(figure, band)
        best = best_rows(columns, BEST_CURVES)
        _each_curve(figure, columns, best, show_state=False)
        title = (
            f"Learning curves of {len(with_curves)} trials: median and 10-90% band per final "
            f"state, and the best {len(best)} COMPLETE trials"
        )
    figure.update_layout(title=title, xaxis_title="epoch", yaxis_title=metric)
    return figure


def _each_curve(
    figure: go.Figure, columns: TrialColumns, rows: np.ndarray, show_state: bool
) -> None:
    shown: set[str] = set()
    for row in rows:
        state = str(columns.state[row])
        steps, values = columns.curve(int(row))
        number = int(columns.number[row])
        figure.add_trace(
            go.Scattergl(
                x=steps,
                y=values,
                mode="lines+markers",
                line={"color": STATE_COLOURS.get(state, "#999"), "width": 1},
                marker={"size": 4},
                name=state if show_state else f"trial {number}",
                legendgroup=state if show_state else None,
                showlegend=not show_state or state not in shown,
                hovertemplate=f"trial {number} ({state})<br>epoch %{{x}}: %{{y:.4f}}",
            )
        )
        shown.add(state)


def _band(figure: go.Figure, band: Band) -> None:
    colour = STATE_COLOURS.get(band.state, "#999")
    low, mid, high = (band.quantiles[q] for q in sorted(band.quantiles))
    epochs = list(band.epochs)
    figure.add_trace(
        go.Scatter(
            x=epochs + epochs[::-1],
            y=list(high) + list(low[::-1]),
            fill="toself",
            fillcolor=colour,
            opacity=0.2,
            line={"width": 0},
            hoverinfo="skip",
            legendgroup=band.state,
            showlegend=False,
        )  # fmt: skip
    )
    figure.add_trace(
        go.Scatter(
            x=epochs, y=mid, mode="lines", line={"color": colour, "width": 2},
            name=f"{band.state} median ({band.trials} trials)", legendgroup=band.state,
            customdata=band.counts, hovertemplate="epoch %{x}: %{y:.4f} (%{customdata} trials)",
        )
    )  # fmt: skip


def importance_figure(view: optuna.Study, importance: Importance, title: str) -> go.Figure:
    """Optuna's importances of the rung view, as bars that also say how many trials have each
    parameter (a conditional one exists in only some of them)."""
    # Imported here: fANOVA's module pulls in scikit-learn (~1 s), needed only for this figure.
    from optuna.importance import (
        FanovaImportanceEvaluator,
        PedAnovaImportanceEvaluator,
        get_param_importances,
    )

    evaluator = (
        FanovaImportanceEvaluator() if importance == "fanova" else PedAnovaImportanceEvaluator()
    )
    importances = get_param_importances(view, evaluator=evaluator)
    trials = view.get_trials(deepcopy=False)
    support = {name: sum(name in t.params for t in trials) for name in importances}
    names = list(reversed(importances))  # the most important on top
    figure = go.Figure(
        go.Bar(
            x=[importances[n] for n in names],
            y=names,
            orientation="h",
            customdata=[support[n] for n in names],
            text=[f"{importances[n]:.2f}" for n in names],
            hovertemplate=f"%{{y}}: %{{x:.3f}} (in %{{customdata}} of {len(trials)} trials)"
            "<extra></extra>",
        )
    )
    figure.update_layout(title=title, xaxis_title="importance")
    return figure


def parallel_figure(columns: TrialColumns, epoch: int, metric: str, title: str) -> go.Figure:
    """One line per trial that reached ``epoch``: its parameters and its value there.
    Categorical parameters are drawn as indexes into their choices."""
    rows, values = rung_values(columns, epoch)
    dimensions = [{"label": f"{metric} @ {epoch}", "values": values}]
    for name in sorted(columns.params):
        column = columns.params[name][rows]
        present = np.array([v is not MISSING for v in column])
        if not present.any():
            continue
        distribution = columns.distributions[name]
        if isinstance(distribution, optuna.distributions.CategoricalDistribution):
            choices = list(distribution.choices)
            numeric = [choices.index(v) if v is not MISSING else np.nan for v in column]
            ticks = {"tickvals": list(range(len(choices))), "ticktext": [str(c) for c in choices]}
        else:
            numeric = [float(v) if v is not MISSING else np.nan for v in column]
            log = getattr(distribution, "log", False)
            numeric = list(np.log10(numeric)) if log else numeric
            ticks = {}
            name = f"log10 {name}" if log else name
        dimensions.append({"label": name, "values": numeric, **ticks})
    figure = go.Figure(
        go.Parcoords(
            line={"color": values, "colorscale": "Viridis", "showscale": True},
            dimensions=dimensions,
        )
    )
    figure.update_layout(title=title)
    return figure
