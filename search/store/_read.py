"""Reading studies back: listing them, loading one by name, counting trials by state."""

from __future__ import annotations

from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.errors import StudyNotFoundError
from search.store._open import open_storage_readonly, reading


@dataclass(frozen=True)
class StudyRow:
    name: str
    direction: str
    counts: dict[str, int]
    best_value: float | None
    best_number: int | None

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def count_states(trials: list[FrozenTrial]) -> dict[str, int]:
    counts = {state.name: 0 for state in TrialState}
    for trial in trials:
        counts[trial.state.name] += 1
    return counts


def list_studies(storage_url: str) -> list[StudyRow]:
    storage = open_storage_readonly(storage_url)
    with reading(storage_url):
        return _rows(storage)


def _rows(storage: optuna.storages.RDBStorage) -> list[StudyRow]:
    rows = []
    for frozen in storage.get_all_studies():
        study_id = storage.get_study_id_from_name(frozen.study_name)
        trials = storage.get_all_trials(study_id, deepcopy=False)
        direction = frozen.direction.name.lower()
        complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
        best = None
        if complete:
            pick = max if direction == "maximize" else min
            best = pick(complete, key=lambda t: t.value)
        rows.append(
            StudyRow(
                name=frozen.study_name,
                direction=direction,
                counts=count_states(trials),
                best_value=best.value if best else None,
                best_number=best.number if best else None,
            )
        )
    return sorted(rows, key=lambda row: row.name)


def load_study_readonly(name: str, storage_url: str) -> optuna.Study:
    storage = open_storage_readonly(storage_url)
    with reading(storage_url):
        names = [s.study_name for s in storage.get_all_studies()]
        if name not in names:
            raise StudyNotFoundError(
                f"no study named {name!r} in {storage_url}; studies there: "
                f"{sorted(names) or 'none'}"
            )
        return optuna.load_study(study_name=name, storage=storage)


def format_study_table(rows: list[StudyRow]) -> str:
    header = ("study", "direction", "trials", "COMPLETE", "PRUNED", "FAIL", "RUNNING", "best (#)")
    lines = [header]
    for row in rows:
        best = f"{row.best_value:.4f} (#{row.best_number})" if row.best_value is not None else "-"
        lines.append(
            (
                row.name,
                row.direction,
                str(row.total),
                str(row.counts["COMPLETE"]),
                str(row.counts["PRUNED"]),
                str(row.counts["FAIL"]),
                str(row.counts["RUNNING"]),
                best,
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines
    )
