"""Connecting to the Ray cluster a run uses, checked before the run writes anything.

``ray.init(address=...)`` of an address that is not a Ray cluster's head waits for minutes
(measured with Ray 2.60: a PostgreSQL port still hung after 2 minutes), and an unreachable
one only after its own retries. So a named cluster is probed first, in a child process that
is killed after :data:`PROBE_TIMEOUT_S`: one clear error within seconds, before any write.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys

import ray

from search.config import ResourcesConfig, StudyConfig
from search.errors import ConfigError

# "auto" joins the cluster this machine started or joined (``ray start``).
AUTO = "auto"
PROBE_TIMEOUT_S = 20.0
CONNECT_TIMEOUT_S = 5.0
_PROBE = (
    "import json, sys, ray\n"
    "ray.init(address=sys.argv[1], logging_level='ERROR', log_to_driver=False)\n"
    "print(json.dumps(ray.cluster_resources()))\n"
)


def cluster_address(config: StudyConfig) -> tuple[str | None, str]:
    """The address a run connects to and where it came from (for messages): the study's
    ``ray.address`` (or ``--ray-address``), else Ray's ``RAY_ADDRESS``, else None (a new
    local Ray)."""
    if config.ray.address:
        return config.ray.address, "ray.address"
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"], "RAY_ADDRESS"
    return None, ""


def _reachable(address: str, field: str, source: str | None) -> None:
    """A HOST:PORT address answers TCP (fails in seconds, not after Ray's retries)."""
    if address == AUTO:
        # ray.init(address="auto") joins RAY_ADDRESS where it is set: check that instead.
        address = os.environ.get("RAY_ADDRESS", AUTO)
        field = f"{field} (auto: RAY_ADDRESS)"
        if address == AUTO:
            return
    if "://" in address:
        # ray:// is Ray Client: Tune would then run this driver's searcher, lease and study
        # writes in an actor on the head, out of the driver's reach.
        raise ConfigError(
            field,
            f"{address!r}: give the head's HOST:PORT (its GCS address, e.g. 10.0.0.5:6379) "
            "and run resnet-hpo on a machine that reaches it; Ray Client (ray://) is not "
            "supported",
            source,
        )
    host, _, port = address.rpartition(":")
    host = host.strip("[]")  # an IPv6 address is written [::1]:6379
    if not host or not port.isdigit():
        raise ConfigError(
            field, f"{address!r} is not HOST:PORT (the head's address, e.g. 10.0.0.5:6379)", source
        )
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as error:
        raise ConfigError(
            field,
            f"no Ray cluster answers at {address} ({error.strerror or error}); start its head "
            "with `ray start --head` there, or fix the address",
            source,
        ) from None


def probe_cluster(address: str, field: str, source: str | None) -> dict[str, float]:
    """The cluster's total resources, from a child process that joins it; a ConfigError if
    it cannot within :data:`PROBE_TIMEOUT_S` (not a Ray head, auth refused, versions...)."""
    _reachable(address, field, source)
    try:
        # The same environment as the run's own ray.init (RAY_ADDRESS included: "auto"
        # reads it), so the cluster probed is the cluster joined.
        probe = subprocess.run(
            [sys.executable, "-c", _PROBE, address],
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        raise ConfigError(
            field,
            f"{address} answers but did not accept a Ray driver within {PROBE_TIMEOUT_S:g} s: "
            "is it a Ray head's GCS port (6379 unless --port said otherwise)? With token "
            "authentication on (RAY_AUTH_MODE=token), this machine needs the cluster's token "
            "(RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH)",
            source,
        ) from None
    lines = probe.stdout.strip().splitlines()
    if probe.returncode != 0 or not lines:
        detail = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        raise ConfigError(
            field,
            f"cannot join the Ray cluster at {address}: {detail} (with token authentication "
            "on, this machine needs RAY_AUTH_MODE=token and the cluster's RAY_AUTH_TOKEN)",
            source,
        )
    return {str(k): float(v) for k, v in json.loads(lines[-1]).items()}


def connect(config: StudyConfig) -> bool:
    """Join the run's Ray cluster (or start a local one); True if this call started Ray (the
    run then shuts it down). A named cluster is probed first (see the module's text)."""
    if ray.is_initialized():
        return False
    address, field = cluster_address(config)
    options = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
    if address is None:
        ray.init(**options)
        return True
    probe_cluster(address, field, config.source)
    options.pop("include_dashboard")  # a driver joining a cluster cannot configure it
    ray.init(address=address, **options)
    return True


def concurrent_trials(config: StudyConfig) -> int:
    """``max_concurrent``, with ``auto`` resolved against the connected cluster: how many
    trials its CPUs (and GPUs, where trials ask for them) hold at once."""
    if config.max_concurrent != "auto":
        return int(config.max_concurrent)
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    return fitting_trials(nodes, config.resources)


def fitting_trials(nodes: list[dict[str, float]], resources: ResourcesConfig) -> int:
    """How many trials fit at once: per node (a trial cannot span two), summed."""
    total = 0
    for node in nodes:
        fits = math.floor(node.get("CPU", 0.0) / resources.cpu + 1e-9)
        if resources.gpu > 0:
            fits = min(fits, math.floor(node.get("GPU", 0.0) / resources.gpu + 1e-9))
        total += fits
    return max(1, total)
