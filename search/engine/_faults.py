"""Fault injection for tests and drills: make a chosen trial fail the way real trials do.

Faults are given to :func:`search.engine._run.run_study` by Optuna trial number (Python API only;
study files cannot ask for them). The trial actor raises, after reporting the given epoch,
the same exception type the real failure raises, or kills its own process like the kernel's
OOM killer would.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch

Report = Callable[[dict[str, Any]], None]


class InjectedError(RuntimeError):
    """A plain exception raised on purpose."""


@dataclass(frozen=True)
class Fault:
    kind: Literal["oom", "exception", "kill"]
    epoch: int = 1

    def as_config(self) -> dict[str, Any]:
        return asdict(self)


def with_fault(fault: Fault, report: Report) -> Report:
    """``report``, but failing as ``fault`` says once the fault's epoch has been reported."""
    kind, epoch = fault.kind, fault.epoch

    def reporting(metrics: dict[str, Any]) -> None:
        report(metrics)
        if metrics.get("epoch") != epoch:
            return
        if kind == "oom":
            # The type torch raises when CUDA allocation fails.
            raise torch.OutOfMemoryError("CUDA out of memory. (injected)")
        if kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise InjectedError(f"injected failure after epoch {epoch}")

    return reporting
