"""Final evaluation (``resnet-hpo evaluate``): a search's best configurations retrained with
seeds and tested once each, stored as their own study linked to the search."""

from __future__ import annotations

from typing import TYPE_CHECKING

from search._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "._plan": ("Candidate", "EvaluationPlan", "ranked_candidates", "trial_settings"),
        "._table": ("EvaluationRow", "evaluation_rows", "evaluation_to_markdown"),
        "._run": ("EVALUATION_SUFFIX", "TABLE_ATTR", "EvaluationResult", "run_evaluation"),
    },
)

if TYPE_CHECKING:
    from search.evaluation._plan import (
        Candidate,
        EvaluationPlan,
        ranked_candidates,
        trial_settings,
    )
    from search.evaluation._run import (
        EVALUATION_SUFFIX,
        TABLE_ATTR,
        EvaluationResult,
        run_evaluation,
    )
    from search.evaluation._table import EvaluationRow, evaluation_rows, evaluation_to_markdown
