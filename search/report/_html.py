"""The HTML report of a study: one self-contained file (plotly.js embedded once, compressed;
opens offline) drawn from the read layer's columns, so it stays small and quick at 10,000 trials."""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import html
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import plotly.graph_objects as go

from search.errors import UserError
from search.keys import Attr, StudyAttr
from search.report._data import (
    Compute,
    best_trials,
    compute,
    history,
    rung_epoch,
    rung_values,
    rung_view,
    timeline,
)
from search.report._figures import (
    history_figure,
    importance_figure,
    learning_curve_figure,
    parallel_figure,
    timeline_figure,
)
from search.report._importance import Importance, ImportanceEstimate, bootstrap_importance
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


# Estimates of the rung views drawn lately, by what they were computed from: a live
# dashboard redraws a study every few seconds, and the first rung changes only when a trial
# reaches it.
_ESTIMATES: OrderedDict[str, ImportanceEstimate] = OrderedDict()
_ESTIMATES_KEPT = 32
_ESTIMATES_LOCK = threading.Lock()


def _estimate(
    columns: TrialColumns, epoch: int, importance: Importance, replicates: int | None
) -> ImportanceEstimate:
    """``bootstrap_importance`` of the rung view at ``epoch``, computed once per content."""
    rows, values = rung_values(columns, epoch)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{columns.study_id} {epoch} {importance} {replicates}".encode())
    # Finished trials never change: their ids and values at the rung say what the view holds.
    digest.update(columns.trial_id[rows].tobytes())
    digest.update(values.tobytes())
    key = digest.hexdigest() if len(columns.trial_id) == len(columns) else None
    with _ESTIMATES_LOCK:
        if key is not None and key in _ESTIMATES:
            _ESTIMATES.move_to_end(key)
            return _ESTIMATES[key]
    estimate = bootstrap_importance(rung_view(columns, epoch), importance, replicates)
    if key is not None:
        with _ESTIMATES_LOCK:
            _ESTIMATES[key] = estimate
            while len(_ESTIMATES) > _ESTIMATES_KEPT:
                _ESTIMATES.popitem(last=False)
    return estimate


def _search_figures(
    columns: TrialColumns, metric: str, importance: Importance, replicates: int | None
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
        reached = len(rung_values(columns, epoch)[0])
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
            estimate = _estimate(columns, epoch, importance, replicates)
            figure = importance_figure(estimate, f"Importance ({importance}) of {label}")
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


def objective_metric(study: optuna.Study) -> str:
    """The metric the study's file optimises (``objective`` where no file is recorded)."""
    study_file = study.user_attrs.get(StudyAttr.STUDY_FILE, {})
    return str(study_file.get("objective", {}).get("metric", "objective"))


# Only the attributes the figures use: a trial also carries its whole config, paths and
# tracebacks, which would be decoded for nothing.
REPORT_ATTRS = (Attr.EPOCHS_DONE, Attr.WALL_SECONDS, Attr.TRAIN_SECONDS)


def report_content(
    storage_url: str,
    study_name: str,
    importance: Importance = "ped-anova",
    columns: TrialColumns | None = None,
    replicates: int | None = None,
) -> ReportContent:
    """The report of ``study_name``; ``columns`` (read with ``REPORT_ATTRS`` at least) saves
    reading the trials again where the caller holds them (the live dashboard does);
    ``replicates`` is the importance bootstrap's (None: what the time budget allows)."""
    study = load_study_readonly(study_name, storage_url)
    if columns is None:
        columns = read_trials(
            open_storage_readonly(storage_url).engine, study_name, attr_keys=REPORT_ATTRS
        )
    if columns.direction == MULTI_OBJECTIVE:
        raise UserError(
            f"study {study_name!r} has several objectives; reports draw single-objective "
            "studies (Optuna's optuna.visualization draws Pareto fronts)"
        )
    study_attrs = study.user_attrs
    study_file = study_attrs.get(StudyAttr.STUDY_FILE, {})
    metric = objective_metric(study)
    states, counts = np.unique(columns.state, return_counts=True)
    order = {state.name: index for index, state in enumerate(optuna.trial.TrialState)}
    summary = ", ".join(
        f"{state} {n}" for state, n in sorted(zip(states, counts, strict=True),
                                              key=lambda sn: order.get(sn[0], 99))
    ) or "no trials"  # fmt: skip
    sections: list[tuple[str, go.Figure | str]] = []
    evaluation = StudyAttr.EVALUATION in study_attrs
    if evaluation:
        # Imported here, like the ablation's: its statistics load scipy.
        from search.report._evaluation import evaluation_sections

        metric = str(study_attrs[StudyAttr.EVALUATION]["value"])
        sections += evaluation_sections(study)
    elif StudyAttr.ABLATION in study_attrs:
        # An ablation is no search: history, importance and best trials would rank seeds.
        # Imported here: the ablation statistics load scipy (~0.5 s), which a search's
        # report does not need.
        from search.report._ablation import ablation_figures

        sections += ablation_figures(study, metric)
    else:
        sections += _search_figures(columns, metric, importance, replicates)
    if not evaluation:  # its trials report the test metric once, at the end: no curve
        sections.append(("Learning curves", learning_curve_figure(columns, metric)))
    if StudyAttr.ABLATION not in study_attrs and not evaluation:
        sections.append(("Best trials", _table(best_trials(columns), metric)))
    asha = study_file.get("asha", {})
    pruning = asha.get("enabled", True) and asha.get("max_epochs")
    sections.append(("Compute", _compute_table(compute(columns, pruning or None))))
    now = np.datetime64(datetime.now(UTC).replace(tzinfo=None), "us")
    configured = study_file.get("max_concurrent")  # a number, or "auto" (from the cluster)
    slots = timeline(columns, now, configured if isinstance(configured, int) else None)
    sections.append(("Worker slots", timeline_figure(slots, columns.state, columns.number)))
    provenance = (
        f"package {study_attrs.get(StudyAttr.PACKAGE_VERSION, '?')}, "
        f"git {study_attrs.get(StudyAttr.GIT_SHA) or '?'}"
    )
    return ReportContent(study_name, metric, columns.direction, summary, provenance, sections)


# The figures' scripts wait for plotly.js, which the page unpacks first.
_DEFERRED = '<script type="text/x-plotly-figure">'
# Unpacks the gzip-compressed plotly.js embedded in the page (the browser's own
# DecompressionStream: Chromium 80+, Firefox 113+, Safari 16.4+), runs it, then runs each
# figure's script in page order. No network request: the report opens offline.
_LOADER = """<script>
(async () => {
  const packed = document.getElementById("plotly-js-gzip");
  if (typeof DecompressionStream === "undefined") {
    packed.insertAdjacentHTML("afterend",
      "<p class=note>This browser cannot unpack the figures (no DecompressionStream).</p>");
    return;
  }
  const bytes = Uint8Array.from(atob(packed.textContent.trim()), (c) => c.charCodeAt(0));
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
  const run = (code) => {
    const script = document.createElement("script");
    script.textContent = code;
    document.body.appendChild(script);
  };
  run(await new Response(stream).text());
  for (const figure of document.querySelectorAll('script[type="text/x-plotly-figure"]')) {
    run(figure.textContent);
  }
})();
</script>"""


@functools.cache
def _packed_plotly_js() -> str:
    """plotly.js (4.8 MB) gzip-compressed and base64-encoded: about 2 MB."""
    from plotly.offline import get_plotlyjs

    return base64.b64encode(gzip.compress(get_plotlyjs().encode(), 6, mtime=0)).decode()


def build_report(
    storage_url: str,
    study_name: str,
    importance: Importance = "ped-anova",
    replicates: int | None = None,
) -> str:
    """The whole report of ``study_name`` as one HTML string that opens offline: plotly.js
    embedded once, compressed."""
    content = report_content(storage_url, study_name, importance, replicates=replicates)
    parts = []
    for title, section in content.sections:
        if isinstance(section, go.Figure):
            body = section.to_html(full_html=False, include_plotlyjs=False)
            body = body.replace("<script>", _DEFERRED).replace(
                '<script type="text/javascript">', _DEFERRED
            )
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
<script id="plotly-js-gzip" type="application/octet-stream">{_packed_plotly_js()}</script>
{_LOADER}
</body></html>
"""


def write_report(
    storage_url: str,
    study_name: str,
    path: str | Path,
    importance: Importance = "ped-anova",
    replicates: int | None = None,
) -> Path:
    path = Path(path)
    text = build_report(storage_url, study_name, importance, replicates)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as error:
        raise UserError(
            f"cannot write the report to {path}: {error.strerror}; pass -o with a writable path"
        ) from None
    return path
