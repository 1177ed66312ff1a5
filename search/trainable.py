"""The function Ray Tune runs in each trial actor: unpack the config, call ``model.fit``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from ray import tune

from model import DataSplits, fit
from search.faults import with_fault


def train_trial(config: dict[str, Any], data: DataSplits) -> None:
    """``config`` comes from :class:`search.searcher.StudySearcher.suggest`; ``data`` from
    the object store (``tune.with_parameters`` puts it there once per study)."""
    torch.set_num_threads(max(1, int(config.get("cpu_threads", 1))))
    report = tune.report
    if config.get("replay"):
        report = _tag_replayed(report)
    if config.get("fault"):
        report = with_fault(config["fault"], report)
    fit(config["trial"], data, report, config["checkpoint_dir"])


def _tag_replayed(report: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    """Mark restored epochs of a rerun: the scheduler saw them in the first attempt."""

    def tagged(metrics: dict[str, Any]) -> None:
        report({**metrics, "replay": True} if metrics.get("restored") else metrics)

    return tagged
