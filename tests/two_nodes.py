"""A two-node Ray cluster on this machine, in its own process (``python -m tests.two_nodes``):
a head and a worker node of one CPU each. It prints ``{"address", "worker"}`` as one JSON
line, then obeys lines on stdin: ``kill-worker`` (the worker node dies, no clean-up) and
``stop``. Its own process, because a cluster started inside the test process leaves Ray
state there that later in-process runs trip over."""

from __future__ import annotations

import json
import sys

from ray.cluster_utils import Cluster


def main() -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        worker = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        print(json.dumps({"address": cluster.address, "worker": worker.node_id}), flush=True)
        for line in sys.stdin:
            if line.strip() == "kill-worker":
                cluster.remove_node(worker, allow_graceful=False)
                print("killed", flush=True)
            elif line.strip() == "stop":
                break
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    main()
