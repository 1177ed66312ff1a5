"""A driver's share of a cluster other jobs wait on (engine._sharing), without Ray."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from search.engine._sharing import ClusterDemand, ClusterShare, cluster_demand


@dataclass
class _Controller:
    """What the share reads and sets on Tune's controller."""

    live: int
    _reuse_actors: bool = True

    def get_live_trials(self) -> list:
        return [object()] * self.live


def _share(capacity: int, demand: ClusterDemand) -> ClusterShare:
    return ClusterShare(
        capacity, check_every_s=0.0, demand=lambda job, kinds: demand, own_job="01000000"
    )


def test_alone_a_driver_uses_its_capacity_and_keeps_its_actors() -> None:
    share = _share(4, ClusterDemand(holding=frozenset({"02000000"})))  # holds, nobody waits
    assert share.share() == 4 and share.may_start(3) and not share.may_start(4)
    controller = _Controller(live=4)
    share.on_trial_complete(controller)
    assert controller._reuse_actors and share.actors_given_back == 0
    assert share.smallest_share == 4


def test_while_others_wait_the_capacity_is_split_and_actors_above_it_go_back() -> None:
    waiting = ClusterDemand(waiting=frozenset({"02000000"}), holding=frozenset({"03000000"}))
    share = _share(6, waiting)
    assert share.share() == 2  # 6 among this driver and two other jobs
    assert share.may_start(1) and not share.may_start(2)
    above = _Controller(live=4)  # 3 still live after this one: above the share
    share.on_trial_complete(above)
    assert not above._reuse_actors and share.actors_given_back == 1
    within = _Controller(live=2)  # 1 still live: the next trial reuses this actor
    share.on_trial_complete(within)
    assert within._reuse_actors and share.actors_given_back == 1
    assert share.smallest_share == 2
    assert _share(2, waiting).share() == 1  # never below one trial


def test_a_failed_look_at_the_cluster_runs_as_alone() -> None:
    def broken(job: str, kinds: frozenset[str]) -> ClusterDemand:
        raise ConnectionError("head busy")

    share = ClusterShare(3, check_every_s=0.0, demand=broken, own_job="01000000")
    assert share.share() == 3


def test_the_cluster_is_read_once_per_interval() -> None:
    calls: list[str] = []

    def counted(job: str, kinds: frozenset[str]) -> ClusterDemand:
        calls.append(job)
        return ClusterDemand(waiting=frozenset({"02000000"}))

    share = ClusterShare(2, check_every_s=3600, demand=counted, own_job="01000000")
    assert [share.share() for _ in range(5)] == [1] * 5
    assert calls == ["01000000"]


def test_placement_groups_are_told_apart_by_the_job_that_made_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import search.engine._sharing as sharing

    def group(state: str, scheduling: str = "NO_RESOURCES", **bundle: float) -> dict:
        return {"state": state, "bundles": {0: bundle or {"CPU": 1.0}},
                "stats": {"scheduling_state": scheduling}}  # fmt: skip

    table = {
        "aa" * 14 + "01000000": group("PENDING"),  # ours: not another job's demand
        "bb" * 14 + "02000000": group("PENDING"),
        "cc" * 14 + "02000000": group("CREATED"),
        "dd" * 14 + "03000000": group("CREATED"),
        "ee" * 14 + "04000000": group("REMOVED"),
        "ff" * 14 + "05000000": group("RESCHEDULING"),
        "a1" * 14 + "06000000": group("PENDING", GPU=1.0),  # a kind ours do not hold
        "a2" * 14 + "07000000": group("PENDING", "INFEASIBLE"),  # no node can hold it
    }
    monkeypatch.setattr(sharing, "placement_group_table", lambda: table)
    demand = cluster_demand("01000000", frozenset({"CPU"}))
    assert demand.waiting == {"02000000", "05000000"}
    assert demand.holding == {"02000000", "03000000"}
    with_gpus = cluster_demand("01000000", frozenset({"CPU", "GPU"}))
    assert with_gpus.waiting == {"02000000", "05000000", "06000000"}


def test_a_slow_read_of_the_cluster_stretches_the_interval() -> None:
    """Reading the placement groups costs more as Ray's table grows: the share looks again
    only after 20 times the last read's duration, whatever ``check_every_s`` says."""
    import time

    calls: list[str] = []

    def slow(job: str, kinds: frozenset[str]) -> ClusterDemand:
        calls.append(job)
        time.sleep(0.1)
        return ClusterDemand()

    share = ClusterShare(2, check_every_s=0.0, demand=slow, own_job="01000000")
    share.share()
    share.share()  # within 20 x 0.1 s of the first read
    assert calls == ["01000000"]
