"""Sharing a Ray cluster with other drivers: a fair share while others wait.

Ray Tune with ``reuse_actors`` keeps a finished trial's actor (and its placement group) for
the driver's next trial. That saves an actor start per trial (measured: stock Tune runs 7x
more no-op trials per second with it), but a driver whose searcher always has a next trial
never lets go: a second study started on the same cluster waited until the first ended.
Giving a finished trial's actor back is not enough either: Ray places the driver's next
placement group, asked a moment later, before the other job's older waiting one (measured:
a driver that gave 17 actors back still got every slot back itself).

So the driver reads the cluster's placement groups (at most every :data:`CHECK_EVERY_S`).
While another job's group waits for resources of a kind this driver's trials hold (CPUs,
GPUs) and Ray has not judged it infeasible, this driver's share is its ``max_concurrent``
divided among itself and the other jobs that wait or hold resources (at least one trial):
it starts no trial beyond that share, and a finished trial's actor is kept for the next
trial only within it; above it, the actor goes back to the cluster for the waiting job.
Alone on the cluster, the driver uses ``max_concurrent`` and reuses its actors as before.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ray
from ray.tune.schedulers import FIFOScheduler
from ray.util.placement_group import placement_group_table

from search.engine._asha import StudyASHA

logger = logging.getLogger(__name__)

CHECK_EVERY_S = 2.0
# Ray keeps removed placement groups in its table: a read took 34 ms at 1,000 groups (grows
# with them), so the interval stretches to keep reading under 1/20 of the driver's time.
READ_SHARE = 20
_WAITING = ("PENDING", "RESCHEDULING")
# Waiting groups no node can ever hold: giving resources back would not help them.
_NEVER_PLACED = ("INFEASIBLE",)
_JOB_ID_HEX = 8  # a placement group's id ends with its job's id (4 bytes; Ray's id layout)


@dataclass(frozen=True)
class ClusterDemand:
    """Other jobs on the cluster, by what their placement groups do."""

    waiting: frozenset[str] = frozenset()  # a group waits for resources
    holding: frozenset[str] = frozenset()  # a group holds resources


def _asks_for(group: dict[str, Any], kinds: frozenset[str]) -> bool:
    """Whether a waiting group asks for a resource kind in ``kinds`` and may be placed."""
    if group.get("stats", {}).get("scheduling_state") in _NEVER_PLACED:
        return False
    bundles = group.get("bundles") or {}
    return any(
        amount and kind in kinds for bundle in bundles.values() for kind, amount in bundle.items()
    )


ALL_KINDS = frozenset({"CPU", "GPU"})


def cluster_demand(own_job: str, kinds: frozenset[str] = ALL_KINDS) -> ClusterDemand:
    """Other jobs' placement groups: ``waiting`` counts those that wait for a resource kind in
    ``kinds`` (what this driver's trials hold, so what it can give back)."""
    waiting: set[str] = set()
    holding: set[str] = set()
    for group_id, group in placement_group_table().items():
        job = group_id[-_JOB_ID_HEX:]
        if job == own_job:
            continue
        if group["state"] in _WAITING and _asks_for(group, kinds):
            waiting.add(job)
        elif group["state"] == "CREATED":
            holding.add(job)
    return ClusterDemand(frozenset(waiting), frozenset(holding))


class ClusterShare:
    """How many trials this driver may have under way, and whether to keep an actor."""

    def __init__(
        self,
        capacity: int,
        check_every_s: float = CHECK_EVERY_S,
        kinds: frozenset[str] = ALL_KINDS,
        demand: Callable[[str, frozenset[str]], ClusterDemand] = cluster_demand,
        own_job: str | None = None,
    ) -> None:
        self.capacity = capacity  # max_concurrent: what the driver runs alone
        self.kinds = kinds  # the resource kinds one trial holds (what it can give back)
        self.check_every_s = check_every_s
        self._interval = check_every_s  # check_every_s, or longer while reads are slow
        self._demand = demand
        self._checked_at = -float("inf")
        self._share = capacity
        self._job = own_job  # this driver's Ray job id, read when first needed
        self.actors_given_back = 0  # finished trials' actors returned to the cluster
        self.smallest_share = capacity  # the fewest trials at a time it ever held to
        self._warned: set[str] = set()  # what was warned about: once per kind of trouble

    def share(self) -> int:
        now = time.monotonic()
        if now - self._checked_at >= self._interval:
            self._checked_at = now
            try:
                if self._job is None:
                    self._job = ray.get_runtime_context().get_job_id()
                demand = self._demand(self._job, self.kinds)
                self._interval = max(self.check_every_s, READ_SHARE * (time.monotonic() - now))
            except Exception as error:  # a busy head must not end the run: run as alone
                self._warn_once("read", f"could not read the cluster's placement groups: {error}")
                demand = ClusterDemand()
            self._share = self.capacity
            if demand.waiting:
                others = len(demand.waiting | demand.holding)
                self._share = max(1, self.capacity // (1 + others))
            self.smallest_share = min(self.smallest_share, self._share)
        return self._share

    def _warn_once(self, kind: str, message: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            logger.warning(message)

    def may_start(self, under_way: int) -> bool:
        return under_way < self.share()

    def on_trial_complete(self, tune_controller: Any) -> None:
        """Before Tune decides whether to keep a finished trial's actor: sets Tune's own
        switch (``_reuse_actors``, read at each decision; Ray has no public hook for it)."""
        if not hasattr(tune_controller, "_reuse_actors"):  # another Ray: it keeps its choice
            self._warn_once(
                "switch",
                "this Ray Tune has no _reuse_actors switch; finished trials' actors are kept "
                "even while other jobs wait",
            )
            return
        still_live = len(tune_controller.get_live_trials()) - 1  # the finished one counts
        keep = still_live < self.share()
        tune_controller._reuse_actors = keep
        if not keep:
            self.actors_given_back += 1


class _GivesBackActors:
    """In front of a Tune scheduler: asks :class:`ClusterShare` before Tune keeps a finished
    trial's actor (Tune calls the scheduler's ``on_trial_complete`` with its controller just
    before it decides)."""

    share: ClusterShare

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        self.share.on_trial_complete(tune_controller)
        super().on_trial_complete(tune_controller, trial, result)  # type: ignore[misc]


class SharingFIFOScheduler(_GivesBackActors, FIFOScheduler):
    """Tune's FIFO scheduler (no early stopping), sharing the cluster."""

    def __init__(self, share: ClusterShare) -> None:
        super().__init__()
        self.share = share


class SharingStudyASHA(_GivesBackActors, StudyASHA):
    """The study's ASHA, sharing the cluster."""

    def __init__(self, share: ClusterShare, **asha: Any) -> None:
        super().__init__(**asha)
        self.share = share
