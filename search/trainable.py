"""The function Ray Tune runs in each trial actor: unpack the config, call ``model.fit``."""

from __future__ import annotations

from typing import Any

import torch
from ray import tune

from model import DataSplits, fit
from search.failures import error_text, failure_reason
from search.faults import with_fault


def train_trial(config: dict[str, Any], data: DataSplits) -> None:
    """``config`` comes from :class:`search.searcher.StudySearcher.suggest`; ``data`` from
    the object store (``tune.with_parameters`` puts it there once per study)."""
    torch.set_num_threads(max(1, int(config.get("cpu_threads", 1))))
    report = tune.report
    if config.get("fault"):
        report = with_fault(config["fault"], report)
    try:
        fit(config["trial"], data, report, config["checkpoint_dir"])
    except Exception as error:  # noqa: BLE001 - every failure is reported, by type, below
        # Classified here, where every exception class is importable, and sent as the trial's
        # last result: the driver never has to unpickle it. (Tune stops a trial with
        # SystemExit, which is not an Exception and passes through.)
        tune.report({"failure": failure_reason(error), "error": error_text(error)})
