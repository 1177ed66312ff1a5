"""``pretrained: study:NAME``: start from the best trial's checkpoint of another study.

Resolved in the driver before the run writes anything: the trial process gets a checkpoint
path and never needs the database.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from optuna.trial import TrialState

from model import CHECKPOINT_NAME
from search.errors import UserError
from search.studies import load_study_readonly
from spaces import Space

STUDY_PREFIX = "study:"


def study_references(fixed: dict[str, Any], space: Space) -> set[str]:
    """Every ``study:NAME`` value that ``pretrained`` can take in this study."""
    values = [fixed.get("pretrained"), *space.listed_values("pretrained")]
    return {v for v in values if isinstance(v, str) and v.startswith(STUDY_PREFIX)}


def best_checkpoint(storage_url: str, reference: str) -> tuple[Path, int]:
    """(checkpoint file, trial number) of the best COMPLETE trial of the referenced study."""
    name = reference[len(STUDY_PREFIX) :]
    study = load_study_readonly(name, storage_url)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise UserError(f"pretrained: {reference}: that study has no COMPLETE trial yet")
    best = study.best_trial
    folder = best.user_attrs.get("checkpoint")
    path = Path(folder) / CHECKPOINT_NAME if folder else None
    if path is None or not path.is_file():
        raise UserError(
            f"pretrained: {reference}: the checkpoint of its best trial (#{best.number}) is "
            f"missing ({path}); was output_dir moved or cleaned?"
        )
    return path, best.number


def resolve_references(storage_url: str, references: set[str]) -> dict[str, str]:
    """``{"study:NAME": "/abs/path/last.pt"}`` for every reference, or a UserError."""
    return {ref: str(best_checkpoint(storage_url, ref)[0]) for ref in sorted(references)}
