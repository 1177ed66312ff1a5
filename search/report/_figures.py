"""The figures of a search study, drawn from what ``_data`` computes.

Traces with many points use WebGL (``Scattergl``): a browser draws 10,000 points in SVG
slowly and the page grows with every one.
"""

from __future__ import annotations

import numpy as np
import optuna
import plotly.graph_objects as go

from search.report._data import (
    ALL_CURVES_UP_TO,
    Band,
    History,
    Timeline,
    best_rows,
    busy_over_time,
    curve_bands,
    rung_values,
)
from search.report._importance import (
    MIN_REPLICATES,
    ImportanceEstimate,
    ParamImportance,
    bootstrap_limit,
)
from search.store import MISSING, TrialColumns

STATE_COLOURS = {
    "COMPLETE": "#2ca02c",
    "PRUNED": "#ff7f0e",
    "FAIL": "#d62728",
    "RUNNING": "#1f77b4",
    "WAITING": "#7f7f7f",
}
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
            draw_band(figure, band)
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


def draw_band(
    figure: go.Figure, band: Band, colour: str | None = None, label: str | None = None
) -> None:
    """The band's 10-90% area and its median (coloured by state unless ``colour`` says)."""
    colour = colour or STATE_COLOURS.get(band.state, "#999")
    label = label or band.state
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
            legendgroup=label,
            showlegend=False,
        )  # fmt: skip
    )
    figure.add_trace(
        go.Scatter(
            x=epochs, y=mid, mode="lines", line={"color": colour, "width": 2},
            name=f"{label} median ({band.trials} trials)", legendgroup=label,
            customdata=band.counts, hovertemplate="epoch %{x}: %{y:.4f} (%{customdata} trials)",
        )
    )  # fmt: skip


def importance_figure(estimate: ImportanceEstimate, title: str) -> go.Figure:
    """Importances (``bootstrap_importance``) as bars at the estimate on all trials, with
    their 95% bootstrap interval over trials and, beside each, the number of trials that
    have the parameter (a conditional one exists in only some of them)."""
    params = list(reversed(estimate.params))  # the most important on top
    names = [p.name for p in params]
    labels = [_importance_label(p, estimate) for p in params]
    figure = go.Figure(
        go.Bar(
            x=[p.estimate for p in params],
            y=names,
            orientation="h",
            customdata=labels,
            hovertemplate="%{y}: %{customdata}<extra></extra>",
            name="importance on all trials",
            showlegend=False,
        )
    )
    if estimate.has_interval:
        _interval(figure, params, names)
    # The label goes past the bar and its interval, whichever ends further right, so that
    # neither hides it.
    ends = [max(p.estimate, p.high) if estimate.has_interval else p.estimate for p in params]
    figure.add_trace(
        go.Scatter(
            x=[end + 0.02 for end in ends],
            y=names,
            mode="text",
            text=labels,
            textposition="middle right",
            hoverinfo="skip",
            showlegend=False,
        )
    )
    # Importances are normalized (each in [0, 1]); the room past 1 holds the labels.
    figure.update_layout(
        title=f"{title}<br><sup>{_importance_subtitle(estimate)}</sup>",
        xaxis={"title": "importance", "range": [0, 1.6], "tickvals": [0, 0.2, 0.4, 0.6, 0.8, 1]},
        margin={"t": 90},
    )
    return figure


def _importance_label(param: ParamImportance, estimate: ImportanceEstimate) -> str:
    """``0.48 [0.05, 0.71] · 5/11 trials``: estimate, interval, and the trials with it."""
    interval = f" [{param.low:.2f}, {param.high:.2f}]" if estimate.has_interval else ""
    return f"{param.estimate:.2f}{interval} · {param.support}/{estimate.trials} trials"


def _interval(figure: go.Figure, params: list[ParamImportance], names: list[str]) -> None:
    """The 2.5-97.5% percentiles as error bars around their own (unmarked) midpoint: the
    estimate on all trials can lie outside them (the bootstrap of a biased estimator), which
    error bars hung on the bar could not draw."""
    figure.add_trace(
        go.Scatter(
            x=[(p.low + p.high) / 2 for p in params],
            y=names,
            mode="markers",
            marker={"color": "rgba(0, 0, 0, 0)"},
            error_x={
                "type": "data",
                "symmetric": True,
                "array": [(p.high - p.low) / 2 for p in params],
                "color": "#222",
                "thickness": 1.5,
                "width": 6,
            },
            name="95% bootstrap interval over trials",
            hoverinfo="skip",
            showlegend=False,
        )
    )


def _importance_subtitle(estimate: ImportanceEstimate) -> str:
    """What the bars and lines are, how many replicates succeeded, and a warning where too
    few did for the interval to speak for all resamples."""
    trials = f"{estimate.trials:,}"
    limit = bootstrap_limit(estimate.importance)
    if not estimate.replicates:
        why = (
            f"computed up to {limit:,} trials: each replicate re-evaluates every trial, and "
            f"{MIN_REPLICATES} would not fit the report's time budget; "
            "resnet-hpo report --replicates N computes it at any size"
            if estimate.trials > limit
            else "none asked"
        )
        return f"Estimate on all {trials} trials only, no bootstrap interval ({why})"
    replicates = f"{estimate.succeeded} of {estimate.replicates} bootstrap replicates succeeded"
    if not estimate.has_interval:
        return f"Estimate on all {trials} trials only: {replicates}, too few for an interval"
    text = (
        f"Bars: estimate on all {trials} trials; lines: 95% bootstrap interval over trials "
        f"({replicates})"
    )
    if estimate.succeeded < 2 / 3 * estimate.replicates:
        text += (
            f"; {estimate.failed} resamples could not be ranked, so the interval describes "
            "only those that could: read it with care"
        )
    return text


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


# Up to this many trials, each is drawn as a bar on its slot; above, the mean number of slots
# busy over time (100,000 bars are megabytes of page and no longer readable one by one).
ALL_BARS_UP_TO = 2000


def timeline_figure(data: Timeline, states: np.ndarray, numbers: np.ndarray) -> go.Figure:
    """Trials on worker slots over time, and how busy the slots were."""
    figure = go.Figure()
    if len(data.rows) <= ALL_BARS_UP_TO:
        _slot_bars(figure, data, states, numbers)
        yaxis = {"title": "slot", "dtick": 1 if data.slots <= 16 else None}
        shown = "one bar per trial from its start to its end, on the lowest free slot"
    else:
        centres, busy = busy_over_time(data)
        figure.add_trace(
            go.Scatter(
                x=centres / 60, y=busy, mode="lines", name="slots busy (mean per bin)",
                line={"shape": "hvh"}, fill="tozeroy",
                hovertemplate="minute %{x:.1f}: %{y:.2f} slots busy<extra></extra>",
            )
        )  # fmt: skip
        figure.add_hline(y=data.slots, line_dash="dash", annotation_text=f"{data.slots} slots")
        yaxis = {"title": "trials running", "rangemode": "tozero"}
        shown = "trials running over time"
    started = "" if data.origin is None else f" from {str(data.origin)[:19].replace('T', ' ')} UTC"
    figure.update_layout(
        title=(
            f"{len(data.rows)} trials on {data.slots} worker slots: {data.utilisation:.0%} busy "
            f"while any trial ran ({data.active_s / 3600:.2f} h); {shown}"
        ),
        xaxis_title=f"minutes{started}",
        yaxis=yaxis,
    )
    return figure


def _slot_bars(figure: go.Figure, data: Timeline, states: np.ndarray, numbers: np.ndarray) -> None:
    laid_out = states[data.rows]
    width = max(1.0, min(8.0, 300.0 / max(data.slots, 1)))
    for state in dict.fromkeys(laid_out):
        mine = laid_out == state
        count = int(mine.sum())
        # Each trial is a segment [start, end] followed by a gap (NaN). float32 halves the
        # page's bytes (plotly sends typed arrays): 7 digits of minutes, trial numbers exact.
        x = np.full(3 * count, np.nan, dtype=np.float32)
        y = np.full(3 * count, np.nan, dtype=np.float32)
        trial = np.full(3 * count, np.nan, dtype=np.float32)
        for offset, seconds in ((0, data.start_s[mine]), (1, data.end_s[mine])):
            x[offset::3] = seconds / 60
            y[offset::3] = data.slot[mine]
            trial[offset::3] = numbers[data.rows[mine]]
        figure.add_trace(
            go.Scattergl(
                x=x, y=y, mode="lines", name=f"{state} ({count})", customdata=trial,
                line={"color": STATE_COLOURS.get(str(state), "#999"), "width": width},
                hovertemplate="trial %{customdata} on slot %{y}: minute %{x:.1f}<extra></extra>",
            )
        )  # fmt: skip
