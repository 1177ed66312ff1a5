"""The function Ray Tune runs in each trial actor: unpack the config, call ``model.fit``."""

from __future__ import annotations

from typing import Any

import torch
from ray import tune

from model import DataSplits, fit
from search.engine._failures import error_text, failure_reason
from search.engine._faults import with_fault
from search.engine._payload import TrialPayload


def train_trial(config: dict[str, Any], data: DataSplits) -> None:
    """``config`` is a :class:`TrialPayload` (from the searcher's ``suggest``); ``data`` comes
    from the object store (``tune.with_parameters`` puts it there once per study)."""
    payload = TrialPayload.from_config(config)
    torch.set_num_threads(payload.cpu_threads)
    report = tune.report
    if payload.fault is not None:
        report = with_fault(payload.fault, report)
    try:
        fit(
            payload.settings,
            data,
            report,
            payload.checkpoint_dir,
            final_test=payload.final_test,
        )
    except Exception as error:  # noqa: BLE001 - every failure is reported, by type, below
        # Classified here, where every exception class is importable, and sent as the trial's
        # last result: the driver never has to unpickle it. (Tune stops a trial with
        # SystemExit, which is not an Exception and passes through.)
        tune.report({"failure": failure_reason(error), "error": error_text(error)})
