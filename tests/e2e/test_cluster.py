"""The platform scaled out on a 3-node Ray cluster (``ray.cluster_utils.Cluster`` on this machine): two
gateways, two data shards and a two-worker learner land where their configured resources are, and a node
lost under load moves its robots to the other gateway and costs no acked episode.

The scenario runs once, in its own process (this session's driver is attached to the test platform's
Ray), started when the tests are collected (``background.py``), and both tests read its result.
"""

from __future__ import annotations

import json

import pytest

from tests.e2e.background import finished


@pytest.fixture(scope="module")
def node_failure(request) -> dict:
    code, out, err, folder = finished(request.config, "test_cluster.py")
    assert code == 0, f"scenario failed ({code}):\n{out[-3000:]}\n{err[-6000:]}"
    return json.loads((folder / "node_failure.json").read_text())


def test_actors_land_on_the_nodes_that_have_their_resources(node_failure):
    where = node_failure["placement"]
    nodes = where["nodes"]  # A and B offer {robot_gateway: 1, worker: 4}; the head offers neither
    assert sorted(where["gateways"]) == sorted(nodes)  # one gateway per node
    assert sorted(where["data_shards"]) == sorted(nodes)  # shards spread over the nodes that offer workers
    assert where["learner_worker"] in nodes
    # SPREAD puts a task's three replicas on the three nodes; they ask for a GPU and run on CPU (cpu_fallback)
    for replicas in where["replicas"].values():
        assert sorted(replicas) == sorted([where["head"], *nodes])


def test_losing_a_node_moves_its_robots_to_the_other_gateway_loses_no_acked_episode_and_training_resumes(
    node_failure,
):
    r = node_failure
    assert (r["gateways"], r["data_shards"], r["learner_workers"], r["robots"]) == (2, 2, 2, 16)
    lost = set(r["removed_node_ran"])
    assert {"learner worker"} <= lost and sum(x.startswith("gateway") for x in lost) == 1
    assert sum(x.startswith("data shard") for x in lost) == 1
    survivor = next(n for n in r["placement"]["nodes"] if n != r["failed_node"])
    # robots were split over the gateways; the lost gateway's robots moved and the other took them over
    assert r["robots_per_gateway_before"] == [8, 8]
    assert sorted(r["robots_per_gateway_after"]) == [0, 16]
    assert r["robots_reassigned"] == 8 and r["gateway_moves"] >= 8
    # the lost shard was rebuilt from its store on the surviving node and has every episode a robot saw acked
    assert r["data_shard_nodes_after"] == [survivor, survivor]
    assert r["episodes_acked"] > 0 and r["episodes_lost"] == 0 and r["episodes_unacked_at_end"] == 0
    # the learner's two workers resumed from its checkpoint on the surviving node and published new versions
    assert r["learner_node_after"] == survivor
    assert r["learner_restored_step"] is not None and r["learner_restored_step"] >= 1
    assert r["version_after"] > r["version_at_failure"]
    # every robot kept getting action chunks after the recovery
    assert all(n > 0 for n in r["replies_after_recovery"])
