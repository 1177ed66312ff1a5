"""``resnet-hpo serve``: a live, read-only dashboard of a storage's studies (Dash).

Two pages: ``/`` lists every study (counts by state, best, how many run now) and ``/study/NAME``
shows one study's figures, the same ones the offline report draws from the same read layer.
Both redraw on a timer (``refresh_s``) from the database, so a running search fills in
without a reload. The storage is opened read-only and no route writes.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, unquote

import dash
from dash import dcc, html

from search.errors import UserError
from search.keys import Attr, StudyAttr
from search.report._data import best_trials, compute, history, rung_epoch, rung_view
from search.report._figures import (
    history_figure,
    importance_figure,
    learning_curve_figure,
    parallel_figure,
)
from search.store import (
    StudySummary,
    list_studies,
    load_study_readonly,
    open_storage_readonly,
    read_trials,
    reading,
)

STUDY_PATH = "/study/"
STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING")


def build_app(storage_url: str, refresh_s: float = 5.0) -> dash.Dash:
    """The Dash app over ``storage_url`` (checked readable now, so a bad URL fails at start)."""
    with reading(storage_url):
        open_storage_readonly(storage_url)
    app = dash.Dash(__name__, title="resnet-hpo", suppress_callback_exceptions=True)
    app.layout = html.Div(
        [
            dcc.Location(id="url"),
            dcc.Interval(id="tick", interval=int(refresh_s * 1000)),
            html.Div(id="page"),
        ],
        style={"fontFamily": "system-ui, sans-serif", "margin": "1rem auto", "maxWidth": "1100px"},
    )

    @app.callback(
        dash.Output("page", "children"),
        dash.Input("url", "pathname"),
        dash.Input("tick", "n_intervals"),
    )
    def _page(pathname: str | None, _tick: int | None) -> Any:
        return page(storage_url, pathname or "/")

    return app


def page(storage_url: str, pathname: str) -> Any:
    """The components of the page at ``pathname``, read from the database now."""
    try:
        with reading(storage_url):
            if pathname.startswith(STUDY_PATH):
                return study_page(storage_url, unquote(pathname[len(STUDY_PATH) :]))
            return studies_page(list_studies(storage_url))
    except UserError as error:
        return html.P(str(error), className="error")


def studies_page(rows: list[StudySummary]) -> Any:
    head = ["study", "direction", "trials", *STATES, "best (#)"]
    body = []
    for row in rows:
        best = f"{row.best_value:.4f} (#{row.best_number})" if row.best_value is not None else "-"
        cells = [
            html.A(row.name, href=STUDY_PATH + quote(row.name)),
            row.direction,
            row.total,
            *(row.counts.get(state, 0) for state in STATES),
            best,
        ]
        body.append(html.Tr([html.Td(cell) for cell in cells], id=f"study-{row.name}"))
    return html.Div(
        [
            html.H1("Studies"),
            html.Table(
                [html.Thead(html.Tr([html.Th(h) for h in head])), html.Tbody(body)], id="studies"
            ),  # fmt: skip
        ]
    )


def study_page(storage_url: str, name: str) -> Any:
    study = load_study_readonly(name, storage_url)
    columns = read_trials(
        open_storage_readonly(storage_url).engine,
        name,
        attr_keys=(Attr.EPOCHS_DONE, Attr.WALL_SECONDS, Attr.TRAIN_SECONDS),
    )
    study_file = study.user_attrs.get(StudyAttr.STUDY_FILE, {})
    metric = study_file.get("objective", {}).get("metric", "objective")
    counts = {state: int((columns.state == state).sum()) for state in STATES}
    parts: list[Any] = [
        html.A("all studies", href="/"),
        html.H1(f"Study {name}"),
        html.P(
            ", ".join(f"{state} {n}" for state, n in counts.items()) + f"; objective {metric}",
            id="counts",
        ),
    ]
    data = history(columns)
    if len(data.numbers):
        parts.append(dcc.Graph(figure=history_figure(data, metric), id="history"))
    epoch = rung_epoch(columns)
    if epoch is not None:
        view = rung_view(columns, epoch)
        label = f"{metric} at epoch {epoch} ({len(view.get_trials(deepcopy=False))} trials)"
        try:
            figure = importance_figure(view, "ped-anova", f"Importance of {label}")
            parts.append(dcc.Graph(figure=figure, id="importance"))
        except (RuntimeError, ValueError, ZeroDivisionError) as error:
            parts.append(html.P(f"Importance not computable yet: {error}"))
        title = f"Parallel coordinates: {label}"
        parts.append(dcc.Graph(figure=parallel_figure(columns, epoch, metric, title)))
    parts.append(dcc.Graph(figure=learning_curve_figure(columns, metric), id="curves"))
    parts.append(_best_table(best_trials(columns), metric))
    spent = compute(columns, None).spent_seconds
    parts.append(html.P(f"device time: {spent:,.0f} s", id="compute"))
    return html.Div(parts)


def _best_table(rows: list[dict[str, Any]], metric: str) -> Any:
    if not rows:
        return html.P("No COMPLETE trial yet.")
    params = sorted({name for row in rows for name in row["params"]})
    head = ["trial", metric, "epochs", *params]
    body = [
        html.Tr(
            [html.Td(row["number"]), html.Td(f"{row['value']:.4f}"), html.Td(row["epochs"])]
            + [html.Td(str(row["params"].get(name, ""))) for name in params]
        )
        for row in rows
    ]
    return html.Table([html.Thead(html.Tr([html.Th(h) for h in head])), html.Tbody(body)],
                      id="best")  # fmt: skip
