"""The service: study files, the SQL store, the search engine, ablations, reports, the CLI.

Layers, each importing only those below it: ``cli`` -> ``study_file``, ``report`` ->
``ablation`` -> ``engine`` -> ``config``, ``store`` -> ``keys``, ``errors`` (and ``model``,
``spaces``). Exports are imported on first use (see ``search._lazy``), so ``resnet-hpo
--help`` loads none of torch, Ray or plotly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from search._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        ".ablation": (
            "AblationConfig",
            "AblationPlan",
            "AblationResult",
            "Arm",
            "ArmRun",
            "ArmSummary",
            "analyse",
            "holm",
            "plan_arms",
            "run_ablation",
            "summarise",
            "to_csv",
            "to_latex",
            "to_markdown",
        ),
        ".config": ("StudyConfig", "parse_study"),
        ".engine": (
            "CheckpointPolicy",
            "Fault",
            "GridPlan",
            "RunPolicy",
            "RunSummary",
            "RungLedger",
            "SearchProgress",
            "StudyASHA",
            "StudySearcher",
            "TrialFactory",
            "TrialPayload",
            "fork_trials",
            "recover_lost_trials",
            "run_study",
        ),
        ".errors": (
            "ConfigError",
            "IncompatibleStudyError",
            "RunAbortedError",
            "StorageError",
            "StudyNotFoundError",
            "UserError",
        ),
        ".keys": ("DEFAULT_STORAGE", "Attr", "Reason", "StudyAttr"),
        ".report": ("build_report", "curve_bands", "rung_epoch", "write_report"),
        ".store": (
            "DriverLease",
            "LeaseHeldError",
            "LeaseLostError",
            "StudySummary",
            "TrialColumns",
            "list_studies",
            "load_study_readonly",
            "open_storage",
            "open_storage_readonly",
            "read_trials",
        ),
        ".study_file": ("load_study_file", "parse_ablation"),
    },
)

if TYPE_CHECKING:
    from search.ablation import (
        AblationConfig,
        AblationPlan,
        AblationResult,
        Arm,
        ArmRun,
        ArmSummary,
        analyse,
        holm,
        plan_arms,
        run_ablation,
        summarise,
        to_csv,
        to_latex,
        to_markdown,
    )
    from search.config import StudyConfig, parse_study
    from search.engine import (
        CheckpointPolicy,
        Fault,
        GridPlan,
        RungLedger,
        RunPolicy,
        RunSummary,
        SearchProgress,
        StudyASHA,
        StudySearcher,
        TrialFactory,
        TrialPayload,
        fork_trials,
        recover_lost_trials,
        run_study,
    )
    from search.errors import (
        ConfigError,
        IncompatibleStudyError,
        RunAbortedError,
        StorageError,
        StudyNotFoundError,
        UserError,
    )
    from search.keys import DEFAULT_STORAGE, Attr, Reason, StudyAttr
    from search.report import build_report, curve_bands, rung_epoch, write_report
    from search.store import (
        DriverLease,
        LeaseHeldError,
        LeaseLostError,
        StudySummary,
        TrialColumns,
        list_studies,
        load_study_readonly,
        open_storage,
        open_storage_readonly,
        read_trials,
    )
    from search.study_file import load_study_file, parse_ablation
