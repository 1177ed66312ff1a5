"""Ablation studies: the design (arms x seeds), the queue of cells, the run on the search
engine, the statistics (paired tests, Holm) and the table."""

from __future__ import annotations

from typing import TYPE_CHECKING

from search._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "._design": ("AblationConfig", "Arm", "plan_arms", "validate_ablation"),
        "._queue": ("AblationPlan", "resolve_baseline"),
        "._analysis": ("AblationResult", "analyse"),
        "._run": ("run_ablation",),
        "._stats": ("ArmRun", "ArmSummary", "holm", "summarise"),
        "._table": ("FORMATS", "HEADER", "table_cells", "to_csv", "to_latex", "to_markdown"),
    },
)

if TYPE_CHECKING:
    from search.ablation._analysis import AblationResult, analyse
    from search.ablation._design import AblationConfig, Arm, plan_arms, validate_ablation
    from search.ablation._queue import AblationPlan, resolve_baseline
    from search.ablation._run import run_ablation
    from search.ablation._stats import ArmRun, ArmSummary, holm, summarise
    from search.ablation._table import (
        FORMATS,
        HEADER,
        table_cells,
        to_csv,
        to_latex,
        to_markdown,
    )
