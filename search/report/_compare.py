"""Two or more studies side by side: their counts, best values and device time in one table,
their best-so-far curves and their learning curves on shared axes."""

from __future__ import annotations

import html

import numpy as np
import plotly
import plotly.graph_objects as go

from search.report._data import compute, curve_bands, history
from search.report._figures import draw_band
from search.store import TrialColumns, device_time_label


def compare_table(columns: list[TrialColumns], metrics: list[str]) -> str:
    head = ("study", "metric", "direction", "trials", "COMPLETE", "PRUNED", "FAIL", "RUNNING",
            "best (#)", "device time")  # fmt: skip
    body = []
    for study, metric in zip(columns, metrics, strict=True):
        best = history(study)
        label = "-"
        if len(best.numbers):
            index = int(np.flatnonzero(best.values == best.best_so_far[-1])[0])
            label = f"{best.values[index]:.4f} (#{best.numbers[index]})"
        cells = [study.study_name, metric, study.direction, str(len(study))]
        cells += [str(int(np.sum(study.state == state)))
                  for state in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")]  # fmt: skip
        cells += [label, device_time_label(compute(study, None).spent_seconds)]
        body.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    header = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    return f"<table><thead><tr>{header}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def best_so_far_figure(columns: list[TrialColumns], metrics: list[str]) -> go.Figure:
    """Each study's best value so far against its trial number."""
    figure = go.Figure()
    for index, study in enumerate(columns):
        data = history(study)
        figure.add_trace(
            go.Scattergl(
                x=data.numbers, y=data.best_so_far, mode="lines", line={"shape": "hv"},
                name=study.study_name, line_color=_colour(index),
            )
        )  # fmt: skip
    figure.update_layout(
        title="Best value so far (COMPLETE trials)",
        xaxis_title="trial",
        yaxis_title=" / ".join(dict.fromkeys(metrics)),
    )
    return figure


def curves_figure(columns: list[TrialColumns], metrics: list[str]) -> go.Figure:
    """Per study, the median and 10-90% band over its finished trials at each epoch."""
    figure = go.Figure()
    for index, study in enumerate(columns):
        for band in curve_bands(study, by_state=False):
            draw_band(figure, band, _colour(index), study.study_name)
    figure.update_layout(
        title="Learning curves of the finished trials: median and 10-90% band per study",
        xaxis_title="epoch",
        yaxis_title=" / ".join(dict.fromkeys(metrics)),
    )
    return figure


def compare_sections(
    columns: list[TrialColumns], metrics: list[str]
) -> list[tuple[str, go.Figure | str]]:
    sections: list[tuple[str, go.Figure | str]] = [("Studies", compare_table(columns, metrics))]
    if len(set(metrics)) > 1 or len({c.direction for c in columns}) > 1:
        sections.append((
            "Read with care",
            '<p class="note">These studies optimise different metrics or directions: their '
            "values share an axis but do not compare.</p>",
        ))  # fmt: skip
    sections.append(("Best so far", best_so_far_figure(columns, metrics)))
    sections.append(("Learning curves", curves_figure(columns, metrics)))
    return sections


def _colour(index: int) -> str:
    palette = plotly.colors.qualitative.Plotly
    return palette[index % len(palette)]
