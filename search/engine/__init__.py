"""The search engine: a run's set-up and preflight checks, the Ray Tune run, the searcher that
keeps the study honest (its failure protocol and budget), ASHA rebuilt from the study, the
trainable, progress, checkpoint retention, recovery after a crash, and a fair share of a
cluster other jobs wait on."""

from __future__ import annotations

from typing import TYPE_CHECKING

from search._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "._run": (
            "QueuePlan",
            "RunSummary",
            "build_sampler",
            "prepare_study",
            "run_study",
            "trial_data",
        ),
        "._searcher": ("SearchProgress", "StudySearcher"),
        "._policy": ("RunPolicy",),
        "._payload": ("TrialFactory", "TrialPayload"),
        "._asha": ("RungLedger", "StudyASHA", "rung_keys_of", "study_history"),
        "._checkpoints": ("CheckpointPolicy",),
        "._grid": ("GridPlan",),
        "._faults": ("Fault",),
        "._interrupts": ("InterruptWatch", "Interrupted"),
        "._recovery": ("ForkResult", "check_compatible", "fork_trials", "recover_lost_trials"),
        "._sharing": ("ClusterDemand", "ClusterShare"),
    },
)

if TYPE_CHECKING:
    from search.engine._asha import RungLedger, StudyASHA, rung_keys_of, study_history
    from search.engine._checkpoints import CheckpointPolicy
    from search.engine._faults import Fault
    from search.engine._grid import GridPlan
    from search.engine._interrupts import Interrupted, InterruptWatch
    from search.engine._payload import TrialFactory, TrialPayload
    from search.engine._policy import RunPolicy
    from search.engine._recovery import (
        ForkResult,
        check_compatible,
        fork_trials,
        recover_lost_trials,
    )
    from search.engine._run import (
        QueuePlan,
        RunSummary,
        build_sampler,
        prepare_study,
        run_study,
        trial_data,
    )
    from search.engine._searcher import SearchProgress, StudySearcher
    from search.engine._sharing import ClusterDemand, ClusterShare
