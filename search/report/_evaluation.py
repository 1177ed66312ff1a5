"""The sections of an evaluation study (``resnet-hpo evaluate``): its table, and each
configuration's value in the search against its test metric over seeds with the interval."""

from __future__ import annotations

import html
import math

import optuna
import plotly.graph_objects as go

from search.evaluation import EvaluationRow, evaluation_rows
from search.evaluation._table import evaluation_cells, evaluation_header
from search.keys import StudyAttr
from search.report._ablation import html_table


def evaluation_table_html(rows: list[EvaluationRow], metric: str, test: str) -> str:
    """The same columns as the table ``resnet-hpo evaluate`` prints."""
    return html_table(evaluation_header(metric, test), (evaluation_cells(r) for r in rows))


def evaluation_figure(rows: list[EvaluationRow], metric: str, test: str) -> go.Figure:
    """Per configuration: the search's (selected, so optimistic) value and the test mean with
    its 95% interval; no bar where there is no interval."""
    labels = [r.arm for r in rows]
    figure = go.Figure()
    figure.add_trace(
        go.Scatter(
            x=[r.search_value for r in rows],
            y=labels,
            mode="markers",
            marker={"symbol": "diamond", "size": 11, "color": "#7f7f7f"},
            name=f"{metric} in the search (one seed, the best of many trials)",
        )
    )
    figure.add_trace(
        go.Scatter(
            x=[r.mean for r in rows],
            y=labels,
            mode="markers",
            marker={"size": 11, "color": "#1f77b4"},
            error_x={
                "type": "data",
                "array": [0.0 if math.isnan(r.ci_high) else r.ci_high - r.mean for r in rows],
                "arrayminus": [0.0 if math.isnan(r.ci_low) else r.mean - r.ci_low for r in rows],
                "visible": True,
            },
            name=f"{test}: mean over seeds, 95% CI",
            hovertemplate="%{y}: %{x:.4f}<extra></extra>",
        )
    )
    figure.update_layout(
        title=f"{metric} in the search against {test} after retraining",
        xaxis_title="value",
        yaxis={"autorange": "reversed"},
        legend={"orientation": "h", "y": -0.25},
    )
    return figure


def evaluation_sections(study: optuna.Study) -> list[tuple[str, go.Figure | str]]:
    plan = study.user_attrs[StudyAttr.EVALUATION]
    metric, test = str(plan["metric"]), str(plan["value"])
    rows = evaluation_rows(study)
    refit = "training + validation" if plan.get("refit") == "train+val" else "training"
    note = (
        f'<p class="note">Evaluates the search {html.escape(str(plan["evaluates"]))}: its best '
        f"{len(rows)} configurations, each retrained on the {refit} split for "
        f"{plan.get('epochs')} epochs with seeds {plan.get('seed_list')} and tested once. The "
        f"test split was {html.escape(str(plan.get('test_split')))}. The gap is how much "
        "better the search's value looked than the test mean (search - test for accuracies, "
        "test - search for losses): a configuration chosen as the best of many noisy trials "
        "looks better in the search than it is.</p>"
    )
    return [
        ("Final evaluation", evaluation_table_html(rows, metric, test) + note),
        ("Search against test", evaluation_figure(rows, metric, test)),
    ]
