"""A robot client written only from docs/protocol.md: msgpack, pyzmq, numpy and httpx, nothing from
``fleetrl.robots``. It registers over REST, says hello, runs episodes (observation → action chunk →
executed rows), ends them and waits for the ack; the episodes must then be stored exactly as it sent them.
If this test needs anything the document does not say, the document is incomplete."""

from __future__ import annotations

import time
import uuid

import httpx
import msgpack
import numpy as np
import ray
import zmq

from tests.conftest import ADMIN_TOKEN

ARRAY_EXT = 1  # docs/protocol.md, section 2: arrays are msgpack extension type 1
STEP_COLUMNS = {  # section 4, "Step columns"
    "reward": "float32",
    "intervention": "bool",
    "held": "bool",
    "policy_version": "int32",
    "obs_step": "int32",
    "log_prob": "float32",
    "obs_time": "float64",
    "action_start": "float64",
}


def _encode_array(arr: np.ndarray) -> msgpack.ExtType:
    arr = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
    return msgpack.ExtType(ARRAY_EXT, msgpack.packb([arr.dtype.name, list(arr.shape)]) + arr.tobytes())


def _decode_ext(code: int, data: bytes):
    assert code == ARRAY_EXT
    unpacker = msgpack.Unpacker()
    unpacker.feed(data)
    dtype, shape = unpacker.unpack()
    return np.frombuffer(data[unpacker.tell() :], dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape)


def _default(obj):
    if isinstance(obj, np.ndarray):
        return _encode_array(obj)
    raise TypeError(type(obj))


class DocClient:
    """One robot, one DEALER socket, one frame per message."""

    def __init__(self, endpoint: str, robot_id: str, token: str, curve: dict | None):
        self.robot_id, self.token = robot_id, token
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        if curve is not None:  # section 1: the keys from registration, set before connecting
            self.sock.curve_serverkey = curve["server_key"].encode()
            self.sock.curve_publickey = curve["public_key"].encode()
            self.sock.curve_secretkey = curve["secret_key"].encode()
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.IMMEDIATE, 1)
        self.sock.connect(endpoint)
        self.heartbeat_s = 1.0  # until the welcome says

    def send(self, kind: str, **fields) -> None:
        frame = {"v": 1, "kind": kind, "robot_id": self.robot_id, **fields}
        self.sock.send(msgpack.packb(frame, default=_default, use_bin_type=True))

    def recv(self, timeout_s: float) -> dict | None:
        if not self.sock.poll(int(timeout_s * 1000)):
            return None
        return msgpack.unpackb(self.sock.recv(), ext_hook=_decode_ext, raw=False)

    def request(self, kind: str, want: str, timeout_s: float = 20.0, **fields) -> dict:
        """Send, then read until a message of kind ``want``: ping every heartbeat while waiting (the
        lease), say hello again and re-send after ``unknown_session``; any other error fails the test."""
        self.send(kind, **fields)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            msg = self.recv(self.heartbeat_s)
            if msg is None:
                self.send("ping")
                continue
            if msg["kind"] == "error" and msg["code"] == "unknown_session" and kind != "hello":
                self.hello()
                self.send(kind, **fields)
                continue
            assert msg["kind"] != "error", msg
            if msg["kind"] == want:
                return msg
        raise AssertionError(f"no {want} for {kind} within {timeout_s} s")

    def hello(self) -> dict:
        welcome = self.request("hello", "welcome", token=self.token)
        self.heartbeat_s = welcome["heartbeat_s"]
        return welcome

    def run_episode(self, welcome: dict, n_steps: int, rng: np.random.Generator) -> dict:
        """Observation → chunk → execute it row by row, upload the rows, end, wait for the ack."""
        ((key, spec),) = welcome["observation_spec"].items()
        shape, dtype = tuple(spec["shape"]), spec["dtype"]
        act = welcome["action_spec"]
        episode_id = uuid.uuid4().hex
        obs, actions, rows = [], [], {c: [] for c in STEP_COLUMNS}
        step, state = 0, rng.standard_normal(shape).astype(dtype)
        while step < n_steps:
            t_obs = time.monotonic()
            reply = self.request("obs", "action", episode_id=episode_id, step=step, t_robot=t_obs,
                                 observation={key: state})  # fmt: skip
            assert reply["episode_id"] == episode_id and reply["step"] == step
            chunk = reply["actions"]
            assert chunk.shape == (welcome["chunk_len"], *act["shape"])
            for i, action in enumerate(chunk[: n_steps - step]):
                executed = np.clip(action, act.get("low", -np.inf), act.get("high", np.inf)).astype(
                    act["dtype"]
                )
                obs.append(state)
                actions.append(executed)
                values = {
                    "reward": -float(np.abs(state).sum()), "intervention": False, "held": False,
                    "policy_version": reply["policy_version"], "obs_step": step - i,
                    "log_prob": reply["log_prob"] if i == 0 else np.nan,
                    "obs_time": t_obs, "action_start": time.monotonic(),
                }  # fmt: skip
                for c, v in values.items():
                    rows[c].append(v)
                state = (0.9 * state + 0.1 * executed.sum()).astype(dtype)  # the "robot" moves
                step += 1
        columns = {c: np.array(v, dtype=STEP_COLUMNS[c]) for c, v in rows.items()}
        self.send("steps", episode_id=episode_id, first_step=0, observations={key: np.stack(obs)},
                  actions=np.stack(actions), columns=columns)  # fmt: skip
        ack = self.request("episode_end", "ack", episode_id=episode_id, outcome="timeout", steps=n_steps,
                           total_reward=float(columns["reward"].sum()), final_observation={key: state},
                           terminated=False, truncated=True)  # fmt: skip
        assert ack["episode_id"] == episode_id
        return {"episode_id": episode_id, "obs": np.stack(obs), "actions": np.stack(actions),
                "columns": columns, "final": state}  # fmt: skip


def test_a_client_written_from_the_protocol_document_stores_episodes_as_sent(platform):
    body = {
        "name": "doc-client",
        "task": "reach",
        "observation_spec": {"state": {"shape": [10], "dtype": "float32"}},
        "action_spec": {"shape": [2], "dtype": "float32"},
    }
    creds = httpx.post(
        f"{platform.rest_url}/v1/robots", json=body, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    ).json()
    assert creds["curve"] is not None  # the default gateway speaks CURVE
    client = DocClient(creds["endpoint"], creds["robot_id"], creds["token"], creds["curve"])
    welcome = client.hello()
    assert welcome["task"] == "reach"
    rng = np.random.default_rng(0)
    sent = [client.run_episode(welcome, n, rng) for n in (13, 7)]
    client.hello()  # a fresh session: the refusal below must be about the id, not the lease
    bad = {"v": 1, "kind": "obs", "robot_id": creds["robot_id"], "episode_id": "not valid", "step": 0,
           "t_robot": 0.0, "observation": {}}  # fmt: skip
    client.sock.send(msgpack.packb(bad, use_bin_type=True))
    error = client.recv(10.0)
    assert (
        error is not None
        and error["kind"] == "error"
        and error["code"] == "bad_message"
        and error["episode_id"] == "not valid"
    )
    client.sock.close()
    for ep in sent:
        stored = ray.get(platform.data.get_episode.remote(ep["episode_id"], creds["robot_id"]))
        assert stored.outcome == "timeout" and stored.truncated and len(stored) == len(ep["actions"])
        np.testing.assert_array_equal(stored.observations["state"], ep["obs"])
        np.testing.assert_array_equal(stored.actions, ep["actions"])
        np.testing.assert_array_equal(stored.final_observation["state"], ep["final"])
        for c, values in ep["columns"].items():
            np.testing.assert_array_equal(stored.columns[c], values, err_msg=c)
