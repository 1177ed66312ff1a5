"""The study database: opening it (read-write or read-only), its schema, the driver lease,
read-only study queries, provenance and ``study:NAME`` references between studies; and where
checkpoints live (a local folder or a URL every node reaches)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from search._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "._open": (
            "check_storage",
            "close_readonly_storages",
            "close_storage",
            "open_storage",
            "open_storage_readonly",
            "reading",
            "safe_url",
        ),
        "._schema": ("SCHEMA_VERSION", "check_schema", "ensure_schema"),
        "._lease": ("DriverLease", "LeaseHeldError", "LeaseHolder", "LeaseLostError"),
        "._read": (
            "LISTED_STATES",
            "best_label",
            "count_states",
            "device_time_label",
            "format_study_table",
            "list_studies",
            "load_study_readonly",
        ),
        "._provenance": ("git_sha", "host", "package_version"),
        "._columns": (
            "MISSING",
            "MULTI_OBJECTIVE",
            "OPEN_STATES",
            "Changes",
            "StudySummary",
            "TrialColumns",
            "read_changes",
            "read_trials",
            "study_summaries",
        ),
        "._locations": (
            "copy_files",
            "delete_files",
            "delete_folder",
            "download",
            "exists",
            "folder_size",
            "is_url",
            "join",
            "probe",
            "rotate",
            "split",
            "upload",
        ),
        "._refs": (
            "best_checkpoint",
            "check_same_split",
            "resolve_references",
            "study_references",
        ),
    },
)

if TYPE_CHECKING:
    from search.store._columns import (
        MISSING,
        MULTI_OBJECTIVE,
        OPEN_STATES,
        Changes,
        StudySummary,
        TrialColumns,
        read_changes,
        read_trials,
        study_summaries,
    )
    from search.store._lease import DriverLease, LeaseHeldError, LeaseHolder, LeaseLostError
    from search.store._locations import (
        copy_files,
        delete_files,
        delete_folder,
        download,
        exists,
        folder_size,
        is_url,
        join,
        probe,
        rotate,
        split,
        upload,
    )
    from search.store._open import (
        check_storage,
        close_readonly_storages,
        close_storage,
        open_storage,
        open_storage_readonly,
        reading,
        safe_url,
    )
    from search.store._provenance import git_sha, host, package_version
    from search.store._read import (
        LISTED_STATES,
        best_label,
        count_states,
        device_time_label,
        format_study_table,
        list_studies,
        load_study_readonly,
    )
    from search.store._refs import (
        best_checkpoint,
        check_same_split,
        resolve_references,
        study_references,
    )
    from search.store._schema import SCHEMA_VERSION, check_schema, ensure_schema
