"""Reports of a study: the offline HTML file, its figures and the data they show."""

from __future__ import annotations

from typing import TYPE_CHECKING

from search._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "._html": ("build_report", "report_content", "write_report"),
        "._dashboard": ("build_app",),
        "._data": ("best_trials", "curve_bands", "history", "rung_epoch", "rung_view"),
        "._figures": ("learning_curve_figure", "parallel_figure"),
        "._importance": ("ImportanceEstimate", "bootstrap_importance"),
        "._ablation": ("arm_curves", "forest_figure"),
        "._evaluation": ("evaluation_figure", "evaluation_sections"),
    },
)

if TYPE_CHECKING:
    from search.report._ablation import arm_curves, forest_figure
    from search.report._dashboard import build_app
    from search.report._data import best_trials, curve_bands, history, rung_epoch, rung_view
    from search.report._evaluation import evaluation_figure, evaluation_sections
    from search.report._figures import learning_curve_figure, parallel_figure
    from search.report._html import build_report, report_content, write_report
    from search.report._importance import ImportanceEstimate, bootstrap_importance
