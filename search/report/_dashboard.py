"""``resnet-hpo serve``: a live, read-only dashboard of a storage's studies (Dash).

Pages: ``/`` lists every study (counts by state, best, device time) and picks studies to
compare; ``/study/NAME`` shows one study's report (the sections the offline report draws,
from the same read layer; an ablation study's table, forest plot and per-arm curves);
``/compare?study=A&study=B`` puts studies side by side.

Each page redraws on a timer (``refresh_s``). A study's trials stay in memory between
redraws and only the trials that can have changed are read again (``read_changes``: new
ones and unfinished ones); where nothing changed since what the browser shows, the server
answers "no update" and the browser keeps its page (a 10,000-trial study page is megabytes
of figures, not worth sending every few seconds). The storage is opened read-only and no
route writes.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode

import dash
import numpy as np
import optuna
import plotly.graph_objects as go
from dash import dcc, html

from search.errors import UserError
from search.report._compare import compare_sections
from search.report._html import REPORT_ATTRS, objective_metric, report_content
from search.store import (
    LISTED_STATES,
    OPEN_STATES,
    Changes,
    StudySummary,
    TrialColumns,
    best_label,
    device_time_label,
    list_studies,
    load_study_readonly,
    open_storage_readonly,
    read_changes,
    read_trials,
    reading,
)

STUDY_PATH = "/study/"
COMPARE_PATH = "/compare"
# Studies whose trials stay in memory between redraws (each up to ~100 MB at 100,000 trials).
KEPT_STUDIES = 8


class LiveStudies:
    """The trials of the studies being watched, kept between redraws and brought up to date
    by reading only what changed. Shared by the server's threads."""

    def __init__(self, storage_url: str, keep: int = KEPT_STUDIES) -> None:
        self.storage_url = storage_url
        self.keep = keep
        self._columns: OrderedDict[str, TrialColumns] = OrderedDict()
        self._lock = threading.Lock()

    def read(self, name: str) -> Changes:
        engine = open_storage_readonly(self.storage_url).engine
        with self._lock:
            previous = self._columns.get(name)
        if previous is None:
            columns = read_trials(engine, name, attr_keys=REPORT_ATTRS)
            changes = Changes(columns, columns.number.copy(), full_read=True)
        else:
            changes = read_changes(engine, previous)
        with self._lock:
            self._columns[name] = changes.columns
            self._columns.move_to_end(name)
            while len(self._columns) > self.keep:
                self._columns.popitem(last=False)
        return changes


def fingerprint(columns: TrialColumns) -> str:
    """A digest of what a study page shows: every trial's state, value, end and curve, and
    the attributes of unfinished trials (a finished trial's never change)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(str(columns.study_id).encode())
    for array in (columns.trial_id, columns.value, columns.curve_row, columns.curve_step,
                  columns.curve_value, columns.datetime_complete.view(np.int64)):  # fmt: skip
        digest.update(np.ascontiguousarray(array).tobytes())
    digest.update("\0".join(columns.state).encode())
    unfinished = np.isin(columns.state, OPEN_STATES)
    for key in sorted(columns.user_attrs):
        digest.update(repr(list(columns.user_attrs[key][unfinished])).encode())
    return digest.hexdigest()


# The offline report's look for tables and notes.
PAGE_STYLE = """<style>
table { border-collapse: collapse; font-size: 0.85rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: right; }
.note { color: #555; font-style: italic; }
.error { color: #b00020; }
</style>"""

# (what the page shows, as a key; how to draw it: the children and whether they drew)
Page = tuple[str, Callable[[], tuple[Any, bool]]]


def build_app(storage_url: str, refresh_s: float = 5.0) -> dash.Dash:
    """The Dash app over ``storage_url`` (checked readable now, so a bad URL fails at start)."""
    with reading(storage_url):
        open_storage_readonly(storage_url)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # each redraw builds in-memory studies
    # Loaded now, before serving: Optuna's importance module loads scikit-learn (1-2 s), which
    # the first study page would otherwise wait for, and plotly imports pandas on first use.
    # An import in two request threads at once can see a half-initialised module.
    importlib.import_module("optuna.importance")
    if importlib.util.find_spec("pandas") is not None:
        importlib.import_module("pandas")
    live = LiveStudies(storage_url)
    app = dash.Dash(__name__, title="resnet-hpo", suppress_callback_exceptions=True)
    app.index_string = app.index_string.replace("{%css%}", "{%css%}" + PAGE_STYLE)
    app.layout = html.Div(
        [
            dcc.Location(id="url"),
            dcc.Interval(id="tick", interval=int(refresh_s * 1000)),
            dcc.Store(id="shown"),  # the key of what the browser shows now
            html.Div(id="page"),
        ],
        style={"fontFamily": "system-ui, sans-serif", "margin": "1rem auto", "maxWidth": "1100px"},
    )

    @app.callback(
        dash.Output("page", "children"),
        dash.Output("shown", "data"),
        dash.Input("url", "pathname"),
        dash.Input("url", "search"),
        dash.Input("tick", "n_intervals"),
        dash.State("shown", "data"),
    )
    def _page(
        pathname: str | None, search: str | None, _tick: int | None, shown: str | None
    ) -> tuple[Any, Any]:
        key, draw = page(live, pathname or "/", search or "")
        if key == shown:
            raise dash.exceptions.PreventUpdate  # an empty answer (204): the page stays
        children, drawn = draw()
        # A page that failed to draw (a locked database, a lost connection) is not what the
        # key describes: store no key, so the next tick tries again.
        return children, key if drawn else None

    @app.callback(dash.Output("compare-link", "href"), dash.Input("compare-pick", "value"))
    def _compare_link(names: list[str] | None) -> str:
        return compare_href(names or [])

    return app


def compare_href(names: list[str]) -> str:
    return COMPARE_PATH + "?" + urlencode([("study", name) for name in names])


def page(live: LiveStudies, pathname: str, search: str = "") -> Page:
    """The page at ``pathname``: a key that changes when what it shows changes, and how to
    draw it (read from the database now)."""
    try:
        with reading(live.storage_url):
            if pathname.startswith(STUDY_PATH):
                key, draw = study_page(live, unquote(pathname[len(STUDY_PATH) :]))
            elif pathname == COMPARE_PATH:
                key, draw = compare_page(live, parse_qs(search.lstrip("?")).get("study", []))
            else:
                rows = list_studies(live.storage_url)
                key, draw = f"studies {rows!r}", lambda: studies_page(rows)
    except UserError as error:
        failure = error  # the except clause unbinds ``error`` when it ends
        return f"error {pathname} {failure}", lambda: (_error(failure), False)

    def guarded() -> tuple[Any, bool]:
        try:
            with reading(live.storage_url):
                return draw(), True
        except UserError as error:
            return _error(error), False

    return key, guarded


def _error(error: UserError) -> Any:
    return html.Div([html.A("all studies", href="/"), html.P(str(error), className="error")])


def studies_page(rows: list[StudySummary]) -> Any:
    head = ["study", "direction", "trials", *LISTED_STATES, "best (#)", "device time"]
    body = []
    for row in rows:
        cells = [
            html.A(row.name, href=STUDY_PATH + quote(row.name)),
            row.direction,
            row.total,
            *(row.counts.get(state, 0) for state in LISTED_STATES),
            best_label(row),
            device_time_label(row.device_seconds),
        ]
        body.append(html.Tr([html.Td(cell) for cell in cells], id=f"study-{row.name}"))
    return html.Div(
        [
            html.H1("Studies"),
            html.Table(
                [html.Thead(html.Tr([html.Th(h) for h in head])), html.Tbody(body)], id="studies"
            ),  # fmt: skip
            html.H2("Compare"),
            # The ticks survive the redraws (Dash keeps a user's choice of a persisted value).
            dcc.Checklist(
                id="compare-pick",
                options=[row.name for row in rows],
                value=[],
                persistence=True,
                inline=True,
                inputStyle={"marginRight": "0.3rem"},
                labelStyle={"marginRight": "1rem"},
            ),  # fmt: skip
            html.A("compare the ticked studies", id="compare-link", href=compare_href([])),
        ]
    )


def study_page(live: LiveStudies, name: str) -> Page:
    changes = live.read(name)
    key = f"study {name} {fingerprint(changes.columns)}"
    return key, lambda: _study_components(live.storage_url, name, changes.columns)


def _study_components(storage_url: str, name: str, columns: TrialColumns) -> Any:
    """The offline report's sections (the same ``report_content``), as Dash components."""
    content = report_content(storage_url, name, columns=columns)
    parts: list[Any] = [
        html.A("all studies", href="/"),
        html.H1(f"Study {name}"),
        html.P(
            f"Objective: {content.metric} ({content.direction}). Trials: {content.summary}.",
            id="counts",
        ),
    ]
    return html.Div(parts + _sections(content.sections))


def compare_page(live: LiveStudies, names: list[str]) -> Page:
    names = list(dict.fromkeys(names))
    if len(names) < 2:
        message = "Tick two or more studies on the studies page to compare them."
        return f"compare-help {names}", lambda: html.Div(
            [html.A("all studies", href="/"), html.P(message, className="error")]
        )
    columns = [live.read(name).columns for name in names]
    metrics = [objective_metric(load_study_readonly(name, live.storage_url)) for name in names]
    key = "compare " + " ".join(fingerprint(c) for c in columns) + " ".join(metrics)

    def draw() -> Any:
        links = [html.A("all studies", href="/"), html.Span(" · ")]
        for name in names:
            links += [html.A(name, href=STUDY_PATH + quote(name)), html.Span(" ")]
        return html.Div([*links, html.H1("Compare " + ", ".join(names)),
                         *_sections(compare_sections(columns, metrics))])  # fmt: skip

    return key, draw


def _sections(sections: list[tuple[str, go.Figure | str]]) -> list[Any]:
    parts: list[Any] = []
    for index, (title, section) in enumerate(sections):
        parts.append(html.H2(title))
        if isinstance(section, go.Figure):
            # Zoom, hover and brushing survive the redraws (plotly keeps the view while
            # uirevision stays the same).
            section.update_layout(uirevision=title)
            parts.append(dcc.Graph(figure=section, id=f"section-{index}"))
        else:
            # Our own escaped HTML (tables, notes), as in the offline report.
            parts.append(dcc.Markdown(section, dangerously_allow_html=True, id=f"section-{index}"))
    return parts
