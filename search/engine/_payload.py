"""What crosses from the driver to a trial's worker, and how the driver builds it.

Ray Tune hands each trial a plain ``config`` dict (it logs and copies it); the payload is
typed at both ends: :meth:`TrialPayload.as_config` in the driver, :meth:`from_config` in the
worker, so no key is spelled twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from search.engine._faults import Fault
from search.store import join

# A trial's checkpoint folder under the study's checkpoint root.
CHECKPOINT_FOLDER = "trial_{number:05d}"


@dataclass(frozen=True)
class TrialPayload:
    """One trial's work: its settings (``model.TrialConfig`` fields), where it checkpoints,
    how many CPU threads it may use, whether it ends with the test split's one evaluation
    (final evaluation only), and a fault to inject (tests and drills only)."""

    number: int  # the study trial
    settings: dict[str, Any]
    checkpoint_dir: str
    cpu_threads: int = 1
    fault: Fault | None = None
    final_test: bool = False

    def as_config(self) -> dict[str, Any]:
        return {
            "study_trial_number": self.number,
            "trial": dict(self.settings),
            "checkpoint_dir": self.checkpoint_dir,
            "cpu_threads": self.cpu_threads,
            "fault": self.fault.as_config() if self.fault else None,
            "final_test": self.final_test,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> TrialPayload:
        fault = config.get("fault")
        return cls(
            number=int(config["study_trial_number"]),
            settings=dict(config["trial"]),
            checkpoint_dir=str(config["checkpoint_dir"]),
            cpu_threads=max(1, int(config.get("cpu_threads", 1))),
            fault=Fault(**fault) if fault else None,
            final_test=bool(config.get("final_test", False)),
        )

    def without_fault(self) -> TrialPayload:
        """The rerun of a trial whose worker died: a fault is injected on the first attempt
        only."""
        return replace(self, fault=None)


@dataclass(frozen=True)
class TrialFactory:
    """Turns a sampled configuration into a payload: the study's fixed settings under it,
    ``study:NAME`` weights resolved to files, a checkpoint folder per trial."""

    defaults: dict[str, Any]
    checkpoint_root: str | Path  # a local folder or a URL (see search.store._locations)
    cpu_threads: int = 1
    pretrained_paths: dict[str, str] = field(default_factory=dict)
    faults: dict[int, Fault] = field(default_factory=dict)
    final_test: bool = False

    def checkpoint_dir(self, number: int) -> str:
        return join(str(self.checkpoint_root), CHECKPOINT_FOLDER.format(number=number))

    def settings(self, params: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
        """The trial's settings, and the ``study:NAME`` its weights come from (if any): the
        trial gets a file path, the study keeps the readable reference."""
        settings = {**self.defaults, **params}
        reference = settings.get("pretrained")
        if reference in self.pretrained_paths:
            settings["pretrained"] = self.pretrained_paths[reference]
            return settings, reference
        return settings, None

    def payload(self, number: int, settings: dict[str, Any]) -> TrialPayload:
        return TrialPayload(
            number=number,
            settings=settings,
            checkpoint_dir=self.checkpoint_dir(number),
            cpu_threads=self.cpu_threads,
            fault=self.faults.get(number),
            final_test=self.final_test,
        )
