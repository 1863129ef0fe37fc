"""The platform on a multi-node Ray cluster (``ray.cluster_utils.Cluster`` on this machine): actors land
where their configured resources are, and a worker node lost under load costs no acked episode.

The scenario runs once, in its own process (this session's driver is attached to the test platform's
Ray), and both tests read its result.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


@pytest.fixture(scope="module")
def node_failure(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("cluster") / "node_failure.json"
    proc = subprocess.run(
        [sys.executable, "-m", "fleetrl.testing.node_failure", "--quick", "--out", str(out)],
        env={**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")},
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert proc.returncode == 0, f"scenario failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return json.loads(out.read_text())


def test_actors_land_on_the_nodes_that_have_their_resources(node_failure):
    where = node_failure["placement"]
    head, node_a = where["head"], where["node_a"]
    assert where["gateway"] == head  # {"robot_gateway": 1} exists only on the head
    assert where["data"] == node_a and where["learner_worker"] == node_a  # {"worker": 1}: only A at start
    # SPREAD puts the two replicas on different nodes; they ask for a GPU and run on CPU (cpu_fallback)
    assert sorted(where["replicas"]) == sorted([head, node_a])


def test_losing_a_worker_node_loses_no_acked_episode_and_training_resumes(node_failure):
    r = node_failure
    lost = set(r["removed_node_ran"])
    assert (
        {"data", "learner_worker"} <= lost
        and len(lost) == 3
        and len([x for x in lost if "replica" in x]) == 1
    )
    node_b = r["placement"]["node_b"]
    # the data server was rebuilt from its store on B and still has every episode a robot saw acked
    assert r["data_node_after"] == node_b
    assert r["episodes_acked"] > 0 and r["episodes_lost"] == 0 and r["episodes_unacked_at_end"] == 0
    # the learner resumed from its checkpoint on B and published new versions
    assert r["learner_node_after"] == node_b
    assert r["learner_restored_step"] is not None and r["learner_restored_step"] >= 1
    assert r["version_after"] > r["version_at_failure"]
    # every robot kept getting action chunks after the recovery
    assert all(n > 0 for n in r["replies_after_recovery"])
