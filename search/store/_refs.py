"""``pretrained: study:NAME``: start from the best trial's checkpoint of another study.

Resolved in the driver before the run writes anything: the trial process gets a checkpoint
path and never needs the database.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import TrialState

from model import CHECKPOINT_NAME
from search.errors import UserError
from search.keys import STUDY_PREFIX, Attr, StudyAttr
from search.store._locations import exists, join
from search.store._read import load_study_readonly
from spaces import Space


def study_references(fixed: dict[str, Any], space: Space) -> set[str]:
    """Every ``study:NAME`` value that ``pretrained`` can take in this study."""
    values = [fixed.get("pretrained"), *space.listed_values("pretrained")]
    return {v for v in values if isinstance(v, str) and v.startswith(STUDY_PREFIX)}


# What must match for a study's weights or chosen settings to be used by another: trained
# on another split, they have seen the validation images that judge the new study.
SPLIT_FIELDS = ("name", "val_fraction", "split_seed")


def check_same_split(
    field: str, reference: str, source: optuna.Study, dataset: dict[str, Any]
) -> None:
    """Refuse ``reference`` when its study used another data set or train/validation split,
    or is a final evaluation (its trials were ranked on the test split)."""
    if StudyAttr.EVALUATION in source.user_attrs or StudyAttr.EVALUATES in source.user_attrs:
        searched = source.user_attrs.get(StudyAttr.EVALUATES, "the search it evaluates")
        raise UserError(
            f"{field}: {reference} is a final evaluation (resnet-hpo evaluate): its trials are "
            "ranked on the test split (and with --refit train+val trained on the validation "
            f"images), so nothing may be chosen from it; use study:{searched}"
        )
    theirs = (source.user_attrs.get(StudyAttr.STUDY_FILE) or {}).get("dataset") or {}
    changed = [
        f"{key}: {theirs.get(key)!r} there, {dataset.get(key)!r} here"
        for key in SPLIT_FIELDS
        if theirs.get(key) != dataset.get(key)
    ]
    if changed:
        raise UserError(
            f"{field}: {reference} was run on another data set or split ({'; '.join(changed)});"
            " what it learned has seen this study's validation images. Use a study with the "
            "same dataset name, val_fraction and split_seed"
        )


def best_checkpoint(
    storage_url: str, reference: str, dataset: dict[str, Any] | None = None
) -> tuple[str, int]:
    """(checkpoint file, trial number) of the best COMPLETE trial of the referenced study;
    with ``dataset`` (the using study's), the data set and split must be the same."""
    name = reference[len(STUDY_PREFIX) :]
    study = load_study_readonly(name, storage_url)
    if dataset is not None:
        check_same_split("pretrained", reference, study, dataset)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise UserError(f"pretrained: {reference}: that study has no COMPLETE trial yet")
    best = study.best_trial
    folder = best.user_attrs.get(Attr.CHECKPOINT)
    path = join(folder, CHECKPOINT_NAME) if folder else None
    if path is None or not exists(path):
        raise UserError(
            f"pretrained: {reference}: the checkpoint of its best trial (#{best.number}) is "
            f"missing ({path}); was output_dir moved or cleaned?"
        )
    return path, best.number


def resolve_references(
    storage_url: str, references: set[str], dataset: dict[str, Any]
) -> dict[str, str]:
    """``{"study:NAME": "/abs/path/last.pt"}`` (or the checkpoint's URL in a study's
    ``checkpoint_storage``) for every reference, or a UserError (also when a referenced study
    used another data set or split than ``dataset``)."""
    return {ref: best_checkpoint(storage_url, ref, dataset)[0] for ref in sorted(references)}
