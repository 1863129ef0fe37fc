"""The learning loop on the session platform: learners on Ray Train publish versions the replicas serve,
algorithms switch over REST, a killed learner worker resumes from its checkpoint, PPO learns from robots."""

from __future__ import annotations

import os
import signal
import time

import httpx
import numpy as np
import pytest
import ray

from fleetrl.robots.demos import collect_scripted_demos, reacher_reach_policy
from fleetrl.testing.restarts import kill_and_await_restart
from tests.conftest import delete_task, reacher_task
from tests.integration.helpers import RunningFleet, wait_status

FLOW = "reach-flow"


@pytest.fixture(scope="module")
def flow_demos(platform):
    """Scripted Reacher demonstrations in the flow task's offline replay, so its learner has data."""
    episodes = collect_scripted_demos("Reacher-v5", reacher_reach_policy, 6, task=FLOW, seed=3)
    ray.get([platform.data.ingest.remote(e) for e in episodes])
    return episodes


def test_learner_publishes_versions_that_replicas_serve(api, platform, flow_demos):
    # "version" is the weight board's (fresh at publish), "step" the learner's last report (every 0.3 s):
    # wait for both rather than read one status where the report may lag the publication
    status = wait_status(
        api, FLOW, lambda s: s["version"] >= 2 and s["step"] >= 4, what="two published versions"
    )
    assert status["learner"]["state"] == "running"
    obs = {"state": flow_demos[0].observations["state"][:3]}
    result = ray.get(platform.replicas[FLOW][0].infer.remote(obs))
    assert result["version"] >= 2 and (result["versions"] == result["version"]).all()
    # Episode reload mode: a row pinned to the version its episode started with keeps it (the replica
    # keeps the two newest versions) while an unpinned row (a new episode) gets the newest one.
    replica = platform.replicas[FLOW][0]
    for _ in range(100):
        first = ray.get(replica.infer.remote(obs))["version"]
        time.sleep(0.25)  # the learner publishes about every 0.2 s
        pinned = ray.get(replica.infer.remote(obs, np.array([first, -1, first])))
        if pinned["version"] == first + 1 or (pinned["version"] > first and pinned["versions"][0] == first):
            break
    assert pinned["versions"][1] == pinned["version"] > first
    assert pinned["versions"][0] == pinned["versions"][2] == first
    metrics = httpx.get(f"{platform.rest_url}/metrics").text
    assert 'fleetrl_model_to_actor_seconds_count{task="reach-flow"}' in metrics


def test_algorithm_switch_over_rest(api, platform, flow_demos):
    wait_status(api, FLOW, lambda s: s["step"] >= 1, what="the learner running")
    r = api.put(f"/v1/tasks/{FLOW}/algorithm", json={"algorithm": "awr", "config": {"batch_size": 32}})
    assert r.status_code == 200, r.text
    step_at_switch = api.get(f"/v1/tasks/{FLOW}").json()["learner"]["step"]
    status = wait_status(
        api, FLOW, lambda s: s["algorithm"] == "awr" and "critic_loss" in s["losses"], what="AWR steps"
    )
    assert status["algorithm"] == "awr" and status["learner"]["step"] >= step_at_switch
    assert status["learner"]["algorithm_config"]["batch_size"] == 32
    # The policy family decides what can train it: PPO cannot train a flow policy, QAM not a Gaussian one.
    refused = api.put(f"/v1/tasks/{FLOW}/algorithm", json={"algorithm": "ppo"})
    assert refused.status_code == 409 and "flow_chunk" in refused.json()["detail"]
    assert api.put("/v1/tasks/reach/algorithm", json={"algorithm": "qam"}).status_code == 409
    assert api.put(f"/v1/tasks/{FLOW}/algorithm", json={"algorithm": "nope"}).status_code == 404
    bad = api.put(f"/v1/tasks/{FLOW}/algorithm", json={"algorithm": "bc", "config": {"lr": -1}})
    assert bad.status_code == 422 and "lr" in bad.json()["detail"]
    assert api.put("/v1/tasks/none/algorithm", json={"algorithm": "bc"}).status_code == 404
    # Back to BC: AWR's critics stay with the learner, so switching to AWR again resumes them.
    assert api.put(
        f"/v1/tasks/{FLOW}/algorithm", json={"algorithm": "bc", "config": {"batch_size": 32}}
    ).is_success
    status = wait_status(api, FLOW, lambda s: s["algorithm"] == "bc" and "bc_loss" in s["losses"], what="BC")
    assert set(status["learner"]["kept_algorithms"]) >= {"awr", "bc"}


def test_killed_learner_resumes_from_checkpoint(api, platform, flow_demos):
    before = wait_status(api, FLOW, lambda s: s["step"] >= 6 and s["pid"], what="a checkpoint")["learner"]
    os.kill(before["pid"], signal.SIGKILL)
    after = wait_status(
        api,
        FLOW,
        lambda s: (
            s["pid"] != before["pid"] and s["restored_step"] is not None and s["step"] > s["restored_step"]
        ),
        timeout=120,
        what="the restarted learner worker",
    )["learner"]
    # checkpoint_every = 5 (plus one after each switch): it resumed from a checkpoint, not from scratch
    assert after["restored_step"] >= 5
    assert after["version"] > before["version"]  # versions continue above what the fleet has seen
    assert after["algorithm"] == before["algorithm"]


def test_a_killed_weight_board_comes_back_with_its_pools_and_newest_version(api, platform, flow_demos):
    """Ray restarts the board; it finds the pools by the replicas' names and takes the newest version back
    from the replica serving it, so a replica restarting afterwards still serves trained weights, and the
    learner (not restarted) goes on publishing above it."""
    before = wait_status(api, FLOW, lambda s: s["version"] >= 2 and s["pid"], what="published versions")
    learner_pid = before["learner"]["pid"]
    assert kill_and_await_restart(platform.weights, lambda a: a.ready.remote(), 60) is not None
    pools = ray.get(platform.weights.pools.remote())
    ids = {t: [r._actor_id for r in pool] for t, pool in pools.items()}
    assert ids[FLOW] == [r._actor_id for r in platform.replicas[FLOW]]
    assert ids["reach"] == [r._actor_id for r in platform.replicas["reach"]]
    recovered = ray.get(platform.weights.latest.remote(FLOW))
    assert recovered is not None and recovered[0] >= before["learner"]["version"]
    replica = platform.replicas[FLOW][0]
    assert kill_and_await_restart(replica, lambda a: a.ready.remote(), 60) is not None
    served = ray.get(replica.served_version.remote())  # it loaded the version the recovered board holds
    assert served >= recovered[0] > 0
    deadline = time.monotonic() + 60
    while ray.get(platform.weights.latest.remote(FLOW))[0] <= recovered[0] and time.monotonic() < deadline:
        time.sleep(0.3)
    assert ray.get(platform.weights.latest.remote(FLOW))[0] > recovered[0]  # publishes land again
    assert api.get(f"/v1/tasks/{FLOW}").json()["learner"]["pid"] == learner_pid  # the learner did not restart


def test_while_a_learner_restarts_its_task_answers_503_not_404(api, platform, flow_demos):
    statuses = set()

    def restarted_and_described() -> bool:
        r = api.get(f"/v1/tasks/{FLOW}")
        statuses.add(r.status_code)
        return r.status_code == 200 and r.json()["learner"] is not None

    learner = platform.learner(FLOW)
    took = kill_and_await_restart(learner, lambda a: a.status.remote(), 90, then=restarted_and_described)
    assert took is not None
    assert statuses <= {200, 503}, statuses  # a restarting learner is not an unknown task


def test_ppo_learns_from_the_fleet_with_recomputed_log_probs(api, platform):
    # stale: wait -- each update waits until every replica serves the newest version (it would hang here
    # if the board could not tell what the replicas serve).
    config = api.get("/v1/tasks/reach").json()["learner"]["algorithm_config"] | {"stale": "wait"}
    assert api.put("/v1/tasks/reach/algorithm", json={"algorithm": "ppo", "config": config}).is_success
    wait_status(api, "reach", lambda s: s["algorithm_config"]["stale"] == "wait", what="the new PPO config")
    start = api.get("/v1/tasks/reach").json()["learner"]
    with RunningFleet(platform, n=4, hz=100.0, seed=40) as fleet:
        status = wait_status(
            api, "reach", lambda s: s["step"] >= start["step"] + 2, timeout=90, what="two PPO updates"
        )["learner"]
        fleet.wait_for_actions_above(start["version"], what="a newly published version")
    losses = status["losses"]
    assert status["algorithm"] == "ppo" and losses["decisions"] > 0
    for _ in range(50):  # replicas load a just-published version within moments
        serving = ray.get(platform.weights.serving.remote("reach"))
        if serving == ray.get(platform.weights.latest.remote("reach"))[0]:
            break
        time.sleep(0.1)
    assert serving == ray.get(platform.weights.latest.remote("reach"))[0]
    assert status["fleet_waits"] >= 0 and status["algorithm_config"]["stale"] == "wait"
    # The learner recomputed the behaviour log-probs with the producing weights; fp32 torch inference
    # reports the same numbers, so the gap is tiny (it would be large with stale or wrong weights, or with
    # pieces of running episodes that lost a chunk's observation or pending actions at a cut).
    assert losses["logprob_gap"] < 1e-3
    # the task's learner trains on the gateway's pieces of running episodes (segment_steps 24 of 50 rows)
    pieces = ray.get(platform.data.sample_segments.remote("reach", 0)).episodes
    assert any(p.meta["first_row"] > 0 for p in pieces)
    assert any(p.meta["context_rows"] > 0 for p in pieces)  # 100 Hz robots ask ahead: chunks span cuts
    assert np.isfinite(losses["approx_kl"]) and 0.0 <= losses["clip_fraction"] <= 1.0


def test_live_switch_to_rlpd_trains_the_robots_policy_and_back_to_ppo(api, platform):
    """PPO -> RLPD -> PPO over REST while robots run: RLPD takes over the task's Gaussian policy (no new
    family, no restart), trains it off-policy from the replay the fleet fills, its versions reach the
    robots, and PPO takes the policy back."""
    ppo_config = api.get("/v1/tasks/reach").json()["learner"]["algorithm_config"]
    rlpd = {"batch_size": 32, "utd": 2, "critic": {"n_critics": 4, "hidden": [32, 32]}}
    with RunningFleet(platform, n=2, hz=100.0, seed=90) as fleet:
        r = api.put("/v1/tasks/reach/algorithm", json={"algorithm": "rlpd", "config": rlpd})
        assert r.status_code == 200, r.text
        status = wait_status(
            api, "reach", lambda s: s["algorithm"] == "rlpd" and "alpha" in s["losses"], what="RLPD steps"
        )["learner"]
        fleet.wait_for_actions_above(status["version"], what="a version RLPD published")
        losses = status["losses"]
        assert losses["critic_updates"] == 2 and np.isfinite(losses["critic_loss"])
        # RLPD's symmetric sampling: half of every batch offline where the task has offline episodes (earlier
        # tests may have given it demos), all of it from the fleet where it has none
        has_offline = ray.get(platform.data.stats.remote("reach"))["replay"]["offline_episodes"] > 0
        assert losses["offline_fraction"] == (0.5 if has_offline else 0.0)
        assert status["algorithm_config"]["critic"]["n_critics"] == 4
        assert api.put(
            "/v1/tasks/reach/algorithm", json={"algorithm": "ppo", "config": ppo_config}
        ).is_success
        back = wait_status(
            api, "reach", lambda s: s["algorithm"] == "ppo" and s["step"] > status["step"], what="PPO again"
        )["learner"]
    assert set(back["kept_algorithms"]) >= {"ppo", "rlpd"}


def test_create_task_over_rest(api, platform):
    body = reacher_task("reach-new", chunk_len=2)
    r = api.post("/v1/tasks", json=body, timeout=120)
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "reach-new" and r.json()["learner"] is None
    assert api.post("/v1/tasks", json=body).status_code == 409
    bad = {"task": {**body["task"], "name": "x", "learner": {"algorithm": "qam"}}}
    assert api.post("/v1/tasks", json=bad).status_code == 422
    robot = {
        "name": "new-1",
        "task": "reach-new",
        "observation_spec": body["task"]["observation"],
        "action_spec": body["task"]["action"],
    }
    assert api.post("/v1/robots", json=robot).status_code == 201
    assert "reach-new" in [t["name"] for t in api.get("/v1/tasks").json()]


def test_token_policy_ppo_runs_through_the_platform_on_a_bf16_backend(api, platform):
    """A token_lm task created over REST, served by torch-fast (bf16) replicas and trained by PPO: the
    robots get template-decoded actions and the learner recomputes fp32 log-probs, which differ from the
    ones the backend reported (the ratio spread itself is measured in benchmarks/logprob_mismatch.py)."""
    body = reacher_task(
        "reach-token",
        policy={"family": "token_lm", "number_range": 10, "hidden_size": 32, "intermediate_size": 64},
        inference={"replicas": 1, "num_cpus": 0, "backend": "torch-fast"},
        learner={
            "algorithm": "ppo",
            "config": {"steps_per_update": 200, "epochs": 2, "batch_size": 32, "lr": 3e-4},
            "publish_every": 1,
            "num_cpus": 0.5,
        },
    )
    assert api.post("/v1/tasks", json=body, timeout=120).status_code == 201
    learner = platform.learner("reach-token")
    with RunningFleet(platform, n=3, hz=100.0, seed=70, task="reach-token") as fleet:
        status = wait_status(api, "reach-token", lambda s: s["step"] >= 1, timeout=150, what="a PPO update")
        fleet.wait_for_actions_above(0, what="a published version")
    losses = status["learner"]["losses"]
    assert losses["decisions"] > 0 and np.isfinite(losses["policy_loss"])
    assert 0 < losses["logprob_gap"] < 0.5  # bf16 serving numerics are not the learner's fp32
    assert losses["mismatch_ratio_p01"] < 1.0 < losses["mismatch_ratio_p99"]  # off both ways, per chunk
    assert np.isfinite([losses[k] for k in ("ratio_p01", "ratio_p99", "clip_fraction_first_epoch")]).all()
    levels = {round(float(a), 6) for c in fleet.clients for e in c.episodes for a in np.ravel(e.actions)}
    assert levels <= {round(n / 10, 6) for n in range(-10, 11)}  # only template numbers reach the robots
    # Deleting the task stops its learner (after a last checkpoint) along with the rest of it.
    deleted = delete_task(api, "reach-token")
    assert deleted["learner"]["algorithm"] == "ppo" and deleted["learner"]["step"] >= 1
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(learner.status.remote(), timeout=30)


def test_a_learner_that_cannot_be_placed_says_what_it_waits_for_and_its_task_deletes_at_once(api, platform):
    """Ray Train waits silently for resources no node has; the learner's status names them (REST, live view,
    console), and deleting the task does not wait for a loop that never ran."""
    body = reacher_task(
        "reach-unplaced", learner={"algorithm": "ppo", "resources": {"fleetrl_test_nowhere": 1}}
    )
    assert api.post("/v1/tasks", json=body, timeout=120).status_code == 201
    status = wait_status(
        api, "reach-unplaced", lambda s: "waiting" in s, timeout=30, what="the starting learner's reason"
    )["learner"]
    assert status["state"] == "starting"
    assert (
        "fleetrl_test_nowhere 1" in status["waiting"] and "now: fleetrl_test_nowhere 0" in status["waiting"]
    )
    t0 = time.monotonic()
    deleted = delete_task(api, "reach-unplaced")
    assert deleted["learner"]["state"] == "starting" and time.monotonic() - t0 < 20
