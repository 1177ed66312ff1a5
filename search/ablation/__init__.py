"""Ablation studies: the design (arms x seeds), the queue of cells, the run on the search
engine, the statistics (paired tests, Holm) and the table; design: path's greedy ablation
path from a baseline to a target and its steps."""

from __future__ import annotations

from typing import TYPE_CHECKING

from search._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "._design": ("PATH", "AblationConfig", "Arm", "plan_arms", "validate_ablation"),
        "._queue": (
            "AblationPlan",
            "PathQueue",
            "resolve_baseline",
            "resolve_path",
            "resolve_target",
        ),
        "._analysis": ("AblationResult", "analyse"),
        "._path": (
            "PathDesign",
            "PathStep",
            "PathWalk",
            "greedy_path",
            "path_groups",
            "path_steps",
            "plan_path",
            "walk_path",
        ),
        "._run": ("run_ablation", "run_path"),
        "._stats": ("ArmRun", "ArmSummary", "holm", "summarise"),
        "._table": (
            "FORMATS",
            "HEADER",
            "PATH_HEADER",
            "path_cells",
            "path_to_markdown",
            "table_cells",
            "to_csv",
            "to_latex",
            "to_markdown",
        ),
    },
)

if TYPE_CHECKING:
    from search.ablation._analysis import AblationResult, analyse
    from search.ablation._design import PATH, AblationConfig, Arm, plan_arms, validate_ablation
    from search.ablation._path import (
        PathDesign,
        PathStep,
        PathWalk,
        greedy_path,
        path_groups,
        path_steps,
        plan_path,
        walk_path,
    )
    from search.ablation._queue import (
        AblationPlan,
        PathQueue,
        resolve_baseline,
        resolve_path,
        resolve_target,
    )
    from search.ablation._run import run_ablation, run_path
    from search.ablation._stats import ArmRun, ArmSummary, holm, summarise
    from search.ablation._table import (
        FORMATS,
        HEADER,
        PATH_HEADER,
        path_cells,
        path_to_markdown,
        table_cells,
        to_csv,
        to_latex,
        to_markdown,
    )
