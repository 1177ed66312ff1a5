"""The service: study files, SQL storage, the Ray/Optuna searcher, reports and the CLI."""

from search.ablation_plan import AblationConfig, Arm, plan_arms
from search.ablation_run import AblationPlan, AblationResult, analyse, run_ablation
from search.ablation_stats import ArmRun, ArmSummary, holm, summarise
from search.ablation_table import to_csv, to_latex, to_markdown
from search.checkpoints import CheckpointPolicy
from search.config import DEFAULT_STORAGE, StudyConfig, load_study_file, parse_study
from search.errors import (
    ConfigError,
    RunAbortedError,
    StorageError,
    StudyNotFoundError,
    UserError,
)
from search.faults import Fault
from search.grid import GridPlan
from search.lease import DriverLease, LeaseHeldError, LeaseLostError
from search.report import best_trials, build_report, learning_curves, rung_epoch, write_report
from search.resume import IncompatibleStudyError, fork_trials, recover_lost_trials
from search.runner import RunSummary, run_study
from search.scheduler import StudyASHA
from search.searcher import SearchProgress, StudySearcher
from search.storage import open_storage, open_storage_readonly
from search.studies import StudyRow, list_studies, load_study_readonly

__all__ = [
    "DEFAULT_STORAGE",
    "AblationConfig",
    "AblationPlan",
    "AblationResult",
    "CheckpointPolicy",
    "GridPlan",
    "LeaseLostError",
    "RunAbortedError",
    "StudyASHA",
    "Arm",
    "ArmRun",
    "ArmSummary",
    "DriverLease",
    "Fault",
    "IncompatibleStudyError",
    "LeaseHeldError",
    "analyse",
    "fork_trials",
    "holm",
    "plan_arms",
    "recover_lost_trials",
    "run_ablation",
    "summarise",
    "to_csv",
    "to_latex",
    "to_markdown",
    "ConfigError",
    "RunSummary",
    "SearchProgress",
    "StorageError",
    "StudyConfig",
    "StudyNotFoundError",
    "StudyRow",
    "StudySearcher",
    "UserError",
    "best_trials",
    "build_report",
    "learning_curves",
    "list_studies",
    "load_study_file",
    "load_study_readonly",
    "open_storage",
    "open_storage_readonly",
    "parse_study",
    "run_study",
    "rung_epoch",
    "write_report",
]
