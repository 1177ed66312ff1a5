"""The HTML report of a study: one self-contained file (plotly.js embedded once, opens
offline) drawn from the read layer's columns, so it stays small and quick at 10,000 trials."""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import plotly.graph_objects as go

from search.errors import UserError
from search.keys import Attr, StudyAttr
from search.report._data import Compute, best_trials, compute, history, rung_epoch, rung_view
from search.report._figures import (
    Importance,
    history_figure,
    importance_figure,
    learning_curve_figure,
    parallel_figure,
)
from search.store import (
    MULTI_OBJECTIVE,
    TrialColumns,
    load_study_readonly,
    open_storage_readonly,
    read_trials,
)

# Below this many trials per searched parameter, an importance ranking is mostly noise (on
# the quickstart's 11 trials PED-ANOVA ranked `momentum`, present in a minority of them, at
# 0.48).
TRIALS_PER_PARAM = 10


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


def _compute_table(data: Compute) -> str:
    """Device time per final state, and what ASHA saved."""
    if not data.spent_seconds:
        return _note("No device time recorded yet.")
    rows = [
        (state, str(data.trials_by_state[state]), f"{seconds:,.0f}",
         f"{seconds / data.timed_by_state[state]:,.1f}" if data.timed_by_state[state] else "")
        for state, seconds in data.seconds_by_state.items()
    ]  # fmt: skip
    rows.append(("all", str(sum(data.trials_by_state.values())), f"{data.spent_seconds:,.0f}", ""))
    head = "".join(
        f"<th>{h}</th>" for h in ("state", "trials", "device s", "s per trial with device time")
    )
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    saved = ""
    if data.max_epochs:
        saved = _note(
            f"ASHA saved about {data.saved_seconds:,.0f} device-seconds "
            f"({data.saved_fraction:.0%} of what the finished trials would have taken at "
            f"{data.max_epochs} epochs each): each pruned trial's remaining epochs at its own "
            "average seconds per epoch, an upper bound where a trial's first epoch carried "
            "one-time costs (compilation, autotuning)."
        )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{saved}"


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _search_figures(
    columns: TrialColumns, metric: str, importance: Importance
) -> list[tuple[str, go.Figure | str]]:
    figures: list[tuple[str, go.Figure | str]] = []
    data = history(columns)
    if len(data.numbers):
        figures.append(("Optimization history (COMPLETE trials)", history_figure(data, metric)))
    else:
        figures.append(("Optimization history", _note("No COMPLETE trial yet.")))

    epoch = rung_epoch(columns)
    if epoch is None:
        figures.append(("Parameter importance", _note("Needs at least 2 finished trials.")))
    else:
        view = rung_view(columns, epoch)
        reached = len(view.get_trials(deepcopy=False))
        label = (
            f"{metric} at epoch {epoch}, the first rung: all {reached} finished trials, "
            "before ASHA selected any"
        )
        params = len(columns.params)
        if reached < TRIALS_PER_PARAM * params:
            figures.append((
                "Parameter importance: read with care",
                _note(f"Only {reached} trials for {params} parameters (fewer than "
                      f"{TRIALS_PER_PARAM} per parameter): the ranking below can change with a "
                      "few more trials; do not narrow the space on it yet."),
            ))  # fmt: skip
        try:
            figure = importance_figure(view, importance, f"Importance ({importance}) of {label}")
            figures.append((f"Parameter importance ({importance})", figure))
        except (RuntimeError, ValueError, ZeroDivisionError) as error:
            figures.append(("Parameter importance", _note(f"Not computable yet: {error}")))
        title = f"Parallel coordinates: {label}"
        figures.append(("Parallel coordinates", parallel_figure(columns, epoch, metric, title)))
    return figures


@dataclass(frozen=True)
class ReportContent:
    """What a study's report shows: the header's facts and its sections, each a plotly
    figure or an HTML fragment. The offline file and the live dashboard draw the same."""

    study_name: str
    metric: str
    direction: str
    summary: str  # trials by state
    provenance: str
    sections: list[tuple[str, go.Figure | str]]


def report_content(
    storage_url: str, study_name: str, importance: Importance = "ped-anova"
) -> ReportContent:
    study = load_study_readonly(study_name, storage_url)
    # Only the attributes the figures use: a trial also carries its whole config, paths and
    # tracebacks, which would be decoded for nothing.
    columns = read_trials(
        open_storage_readonly(storage_url).engine,
        study_name,
        attr_keys=(Attr.EPOCHS_DONE, Attr.WALL_SECONDS, Attr.TRAIN_SECONDS),
    )
    if columns.direction == MULTI_OBJECTIVE:
        raise UserError(
            f"study {study_name!r} has several objectives; reports draw single-objective "
            "studies (Optuna's optuna.visualization draws Pareto fronts)"
        )
    study_attrs = study.user_attrs
    study_file = study_attrs.get(StudyAttr.STUDY_FILE, {})
    metric = study_file.get("objective", {}).get("metric", "objective")
    states, counts = np.unique(columns.state, return_counts=True)
    order = {state.name: index for index, state in enumerate(optuna.trial.TrialState)}
    summary = ", ".join(
        f"{state} {n}" for state, n in sorted(zip(states, counts, strict=True),
                                              key=lambda sn: order.get(sn[0], 99))
    ) or "no trials"  # fmt: skip
    sections: list[tuple[str, go.Figure | str]] = []
    if StudyAttr.ABLATION in study_attrs:
        # An ablation is no search: history, importance and best trials would rank seeds.
        # Imported here: the ablation statistics load scipy (~0.5 s), which a search's
        # report does not need.
        from search.report._ablation import ablation_figures

        sections += ablation_figures(study, metric)
    else:
        sections += _search_figures(columns, metric, importance)
    sections.append(("Learning curves", learning_curve_figure(columns, metric)))
    if StudyAttr.ABLATION not in study_attrs:
        sections.append(("Best trials", _table(best_trials(columns), metric)))
    asha = study_file.get("asha", {})
    pruning = asha.get("enabled", True) and asha.get("max_epochs")
    sections.append(("Compute", _compute_table(compute(columns, pruning or None))))
    provenance = (
        f"package {study_attrs.get(StudyAttr.PACKAGE_VERSION, '?')}, "
        f"git {study_attrs.get(StudyAttr.GIT_SHA) or '?'}"
    )
    return ReportContent(study_name, metric, columns.direction, summary, provenance, sections)


def build_report(storage_url: str, study_name: str, importance: Importance = "ped-anova") -> str:
    """The whole report of ``study_name`` as one HTML string (plotly.js embedded once)."""
    content = report_content(storage_url, study_name, importance)
    parts = []
    plotly_included = False
    for title, section in content.sections:
        if isinstance(section, go.Figure):
            body = section.to_html(full_html=False, include_plotlyjs=not plotly_included)
            plotly_included = True
        else:
            body = section
        parts.append(_section(title, body))
    name = html.escape(study_name)
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>resnet-hpo report: {name}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; }}
table {{ border-collapse: collapse; font-size: 0.85rem; }}
th, td {{ border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: right; }}
.note {{ color: #555; font-style: italic; }}
</style></head><body>
<h1>Study {name}</h1>
<p>Objective: {html.escape(content.metric)} ({content.direction}).
Trials: {html.escape(content.summary)}. Provenance: {html.escape(content.provenance)}.</p>
{"".join(parts)}
</body></html>
"""


def write_report(
    storage_url: str, study_name: str, path: str | Path, importance: Importance = "ped-anova"
) -> Path:
    path = Path(path)
    text = build_report(storage_url, study_name, importance)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as error:
        raise UserError(
            f"cannot write the report to {path}: {error.strerror}; pass -o with a writable path"
        ) from None
    return path
