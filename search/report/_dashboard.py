"""``resnet-hpo serve``: a live, read-only dashboard of a storage's studies (Dash).

Two pages: ``/`` lists every study (counts by state, best) and ``/study/NAME`` shows one
study's report: the same sections the offline report draws, from the same read layer.
Both redraw on a timer (``refresh_s``) from the database, so a running search fills in
without a reload. The storage is opened read-only and no route writes.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, unquote

import dash
import optuna
import plotly.graph_objects as go
from dash import dcc, html

from search.errors import UserError
from search.report._html import report_content
from search.store import (
    LISTED_STATES,
    StudySummary,
    best_label,
    list_studies,
    open_storage_readonly,
    reading,
)

STUDY_PATH = "/study/"


def build_app(storage_url: str, refresh_s: float = 5.0) -> dash.Dash:
    """The Dash app over ``storage_url`` (checked readable now, so a bad URL fails at start)."""
    with reading(storage_url):
        open_storage_readonly(storage_url)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # each redraw builds in-memory studies
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
    head = ["study", "direction", "trials", *LISTED_STATES, "best (#)"]
    body = []
    for row in rows:
        cells = [
            html.A(row.name, href=STUDY_PATH + quote(row.name)),
            row.direction,
            row.total,
            *(row.counts.get(state, 0) for state in LISTED_STATES),
            best_label(row),
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
    """The offline report's sections (the same ``report_content``), as Dash components."""
    content = report_content(storage_url, name)
    parts: list[Any] = [
        html.A("all studies", href="/"),
        html.H1(f"Study {name}"),
        html.P(
            f"Objective: {content.metric} ({content.direction}). Trials: {content.summary}.",
            id="counts",
        ),
    ]
    for index, (title, section) in enumerate(content.sections):
        parts.append(html.H2(title))
        if isinstance(section, go.Figure):
            # Zoom, hover and brushing survive the redraws (plotly keeps the view while
            # uirevision stays the same).
            section.update_layout(uirevision=title)
            parts.append(dcc.Graph(figure=section, id=f"section-{index}"))
        else:
            # Our own escaped HTML (tables, notes), as in the offline report.
            parts.append(dcc.Markdown(section, dangerously_allow_html=True, id=f"section-{index}"))
    return html.Div(parts)
