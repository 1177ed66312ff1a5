"""Reading studies back: listing them, loading one by name, counting trials by state."""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.errors import StudyNotFoundError
from search.store._columns import StudySummary, study_summaries
from search.store._open import open_storage_readonly, reading, safe_url


def count_states(trials: list[FrozenTrial]) -> dict[str, int]:
    counts = {state.name: 0 for state in TrialState}
    for trial in trials:
        counts[trial.state.name] += 1
    return counts


def list_studies(storage_url: str) -> list[StudySummary]:
    """Every study of the storage with its counts by state and best value, counted in SQL
    (no trial is loaded)."""
    storage = open_storage_readonly(storage_url)
    with reading(storage_url):
        return study_summaries(storage.engine)


def load_study_readonly(name: str, storage_url: str) -> optuna.Study:
    storage = open_storage_readonly(storage_url)
    with reading(storage_url):
        names = [s.study_name for s in storage.get_all_studies()]
        if name not in names:
            raise StudyNotFoundError(
                f"no study named {name!r} in {safe_url(storage_url)}; studies there: "
                f"{sorted(names) or 'none'}"
            )
        return optuna.load_study(study_name=name, storage=storage)


# The states a listing shows, in its column order (the CLI's table and the dashboard's).
LISTED_STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING")


def best_label(row: StudySummary) -> str:
    return f"{row.best_value:.4f} (#{row.best_number})" if row.best_value is not None else "-"


def device_time_label(seconds: float) -> str:
    """Device time at a readable scale: seconds, minutes or hours."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def format_study_table(rows: list[StudySummary]) -> str:
    header = ("study", "direction", "trials", *LISTED_STATES, "best (#)", "device time")
    lines = [header]
    for row in rows:
        counts = (str(row.counts.get(state, 0)) for state in LISTED_STATES)
        lines.append((row.name, row.direction, str(row.total), *counts, best_label(row),
                      device_time_label(row.device_seconds)))  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )
