"""Wire codec of robots/protocol/: round trips, zero-copy arrays, and every refusal code."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from fleetrl.robots import protocol as P


def _roundtrip(msg: P.Message) -> P.Message:
    frame = P.encode(msg)
    assert isinstance(frame, bytes)
    return P.decode(frame)


def _frame(obj) -> bytes:
    """A hand-made frame (plain msgpack, no numpy)."""
    return msgpack.packb(obj, use_bin_type=True)


def _array_ext(dtype, shape, raw: bytes, code: int = P.ARRAY_EXT) -> msgpack.ExtType:
    """An array extension built by hand: header msgpack([dtype, shape]) followed by the raw bytes."""
    return msgpack.ExtType(code, msgpack.packb([dtype, shape]) + raw)


def _obs_frame_with(value) -> bytes:
    return _frame({"v": P.PROTOCOL_VERSION, "kind": "obs", "robot_id": "r1", "observation": {"x": value}})


def _assert_code(frame: bytes, code: str, limits: P.Limits = P.DEFAULT_LIMITS) -> P.ProtocolError:
    with pytest.raises(P.ProtocolError) as info:
        P.decode(frame, limits)
    assert info.value.code == code, info.value
    return info.value


def _assert_readonly_view(arr: np.ndarray) -> None:
    assert arr.flags.writeable is False
    assert arr.base is not None


# --------------------------------------------------------------------------------------------------
# Round trips.

SIMPLE_MESSAGES = [
    P.Hello(robot_id="arm-1", token="s3cret"),
    P.Welcome(
        robot_id="arm-1",
        task="reach",
        observation_spec={"state": {"shape": [10], "dtype": "float32"}},
        action_spec={"shape": [2], "dtype": "float32", "low": -1.0, "high": 1.0},
        chunk_len=4,
        policy_version=7,
        heartbeat_s=0.5,
    ),
    P.EpisodeEnd(
        robot_id="arm-1",
        episode_id="ep-9",
        outcome="success",
        labelled_by="human",
        steps=120,
        total_reward=3.5,
        terminated=True,
    ),
    P.Control(robot_id="arm-1", episode_id="ep-9", step=40, mode="human", operator="alice"),
    P.Reset(robot_id="arm-1", state="initial", request_id="r-1"),
    P.Ack(robot_id="arm-1", episode_id="ep-9"),
    P.Ping(robot_id="arm-1"),
    P.Pong(robot_id="arm-1"),
    P.Error(robot_id="arm-1", code="bad_observation", message="state: wrong shape", step=12),
    P.Error(robot_id="arm-1", code="unknown_session", message="say hello", step=None),
]


@pytest.mark.parametrize("msg", SIMPLE_MESSAGES, ids=lambda m: f"{m.KIND}")
def test_roundtrip_plain_messages(msg):
    out = _roundtrip(msg)
    assert type(out) is type(msg)
    assert out == msg


def test_every_message_kind_is_covered_by_the_roundtrip_tests():
    covered = {m.KIND for m in SIMPLE_MESSAGES} | {"obs", "action", "steps"}
    assert covered == set(P.MESSAGE_TYPES)


def test_roundtrip_steps_and_episode_end_with_arrays():
    steps = P.Steps(
        robot_id="arm-1",
        episode_id="ep-9",
        first_step=64,
        observations={"state": np.ones((3, 10), np.float32), "image": np.zeros((3, 4, 4, 3), np.uint8)},
        actions=np.arange(6, dtype=np.float32).reshape(3, 2),
        columns={"reward": np.array([0.0, -1.0, 1.0], np.float32), "intervention": np.array([0, 1, 0], bool)},
    )
    out = _roundtrip(steps)
    assert out.first_step == 64 and out.episode_id == "ep-9"
    np.testing.assert_array_equal(out.actions, steps.actions)
    assert out.observations["image"].shape == (3, 4, 4, 3) and out.observations["image"].dtype == np.uint8
    assert out.columns["intervention"].dtype == bool and out.columns["intervention"].tolist() == [0, 1, 0]
    end = _roundtrip(
        P.EpisodeEnd(
            robot_id="r", episode_id="e", steps=3, final_observation={"state": np.ones(10, np.float32)}
        )
    )
    np.testing.assert_array_equal(end.final_observation["state"], np.ones(10, np.float32))


def test_roundtrip_obs_with_arrays_and_human_action():
    state = np.arange(10, dtype=np.float32) / 3
    image = np.arange(2 * 4 * 3, dtype=np.uint8).reshape(2, 4, 3)
    gripper = np.array([True, False])
    human = np.array([0.25, -0.5], dtype=np.float64)
    msg = P.Obs(
        robot_id="arm-1",
        episode_id="ep-1",
        step=41,
        t_robot=1234.5,
        observation={"state": state, "image": image, "gripper": gripper},
        human_action=human,
        last_latency_ms=12.5,
    )
    out = _roundtrip(msg)
    assert isinstance(out, P.Obs)
    assert (out.robot_id, out.episode_id, out.step, out.t_robot, out.last_latency_ms) == (
        "arm-1",
        "ep-1",
        41,
        1234.5,
        12.5,
    )
    assert set(out.observation) == {"state", "image", "gripper"}
    for name, original in msg.observation.items():
        got = out.observation[name]
        assert got.dtype == original.dtype
        assert got.shape == original.shape
        np.testing.assert_array_equal(got, original)
        _assert_readonly_view(got)
    assert out.human_action.dtype == np.float64
    np.testing.assert_array_equal(out.human_action, human)
    _assert_readonly_view(out.human_action)


def test_roundtrip_obs_without_human_action():
    msg = P.Obs(robot_id="r", episode_id="e", step=0, observation={"s": np.zeros(3, np.float32)})
    out = _roundtrip(msg)
    assert out.human_action is None
    assert out.last_latency_ms is None


def test_roundtrip_action_chunk():
    chunk = np.linspace(-1, 1, 4 * 2, dtype=np.float32).reshape(4, 2)
    msg = P.Action(
        robot_id="arm-1",
        episode_id="ep-1",
        step=41,
        actions=chunk,
        log_prob=-1.25,
        policy_version=3,
        replica="reach/1",
        timings={"queue_ms": 0.5, "infer_ms": 3.0},
    )
    out = _roundtrip(msg)
    assert isinstance(out, P.Action)
    assert out.actions.dtype == np.float32 and out.actions.shape == (4, 2)
    np.testing.assert_array_equal(out.actions, chunk)
    _assert_readonly_view(out.actions)
    assert (out.step, out.log_prob, out.policy_version, out.replica, out.timings) == (
        41,
        -1.25,
        3,
        "reach/1",
        {"queue_ms": 0.5, "infer_ms": 3.0},
    )


@pytest.mark.parametrize("dtype", sorted(P.ALLOWED_DTYPES))
def test_every_allowed_dtype_roundtrips(dtype):
    arr = (np.arange(6) % 2).astype(dtype).reshape(3, 2)
    out = _roundtrip(P.Action(robot_id="r", actions=arr)).actions
    assert out.dtype == np.dtype(dtype)
    assert out.shape == (3, 2)
    np.testing.assert_array_equal(out, arr)


@pytest.mark.parametrize(
    "arr",
    [
        np.array(2.5, dtype=np.float64),  # 0-d
        np.array(7, dtype=np.int32),  # 0-d
        np.zeros((0,), dtype=np.float32),  # empty
        np.zeros((3, 0, 2), dtype=np.int16),  # empty with other dims
        np.zeros((1, 1, 1, 1, 1, 1), dtype=np.uint8),  # max_ndim
    ],
    ids=["0d-float", "0d-int", "empty-1d", "empty-3d", "six-dims"],
)
def test_edge_shapes_keep_dtype_and_shape(arr):
    out = _roundtrip(P.Obs(robot_id="r", observation={"x": arr})).observation["x"]
    assert out.shape == arr.shape
    assert out.dtype == arr.dtype
    np.testing.assert_array_equal(out, arr)
    _assert_readonly_view(out)


def test_non_contiguous_and_big_endian_arrays_arrive_with_their_values():
    transposed = np.arange(12, dtype=np.int32).reshape(3, 4).T  # Fortran-ordered view
    big_endian = (np.arange(5) / 4).astype(">f4")
    assert big_endian.dtype.byteorder == ">"
    out = _roundtrip(P.Obs(robot_id="r", observation={"t": transposed, "b": big_endian})).observation
    np.testing.assert_array_equal(out["t"], transposed)
    assert out["t"].shape == (4, 3)
    np.testing.assert_array_equal(out["b"], big_endian)
    assert out["b"].dtype.name == "float32"


def test_numpy_scalars_are_sent_as_plain_numbers():
    out = _roundtrip(P.EpisodeEnd(robot_id="r", steps=np.int64(5), total_reward=np.float32(1.5)))
    assert out.steps == 5 and type(out.steps) is int
    assert out.total_reward == 1.5


def test_decoded_array_is_a_view_on_the_frame_not_a_copy():
    arr = np.arange(1000, dtype=np.float64)
    out = _roundtrip(P.Obs(robot_id="r", observation={"x": arr})).observation["x"]
    _assert_readonly_view(out)
    assert not out.flags.owndata
    with pytest.raises(ValueError):
        out[0] = 1.0


# --------------------------------------------------------------------------------------------------
# Refusals.


def test_frame_over_max_frame_bytes_is_refused():
    limits = P.Limits(max_frame_bytes=1024)
    small = P.encode(P.Obs(robot_id="r", observation={"x": np.zeros(16, np.float32)}))
    assert isinstance(P.decode(small, limits), P.Obs)
    big = P.encode(P.Obs(robot_id="r", observation={"x": np.zeros(1024, np.float32)}))
    assert len(big) > 1024
    _assert_code(big, "frame_too_large", limits)


def test_default_limit_refuses_a_frame_one_byte_over():
    frame = b"\x00" * (P.DEFAULT_LIMITS.max_frame_bytes + 1)
    _assert_code(frame, "frame_too_large")


@pytest.mark.parametrize(
    "frame",
    [b"\xc1", b"\x92\x01", b"\x81\xa1v", _frame({"v": 1, "kind": "ping", "robot_id": "r"}) + b"\x00"],
    ids=["never-used-byte", "truncated-array", "truncated-map", "trailing-bytes"],
)
def test_garbage_bytes_are_bad_frame(frame):
    _assert_code(frame, "bad_frame")


@pytest.mark.parametrize("top", [[1, "ping", "r"], "hello", 1, None])
def test_non_map_top_level_is_bad_frame(top):
    _assert_code(_frame(top), "bad_frame")


@pytest.mark.parametrize("version", [0, 2, "1", None], ids=["v0", "v2", "str", "none"])
def test_wrong_version_is_refused(version):
    _assert_code(_frame({"v": version, "kind": "ping", "robot_id": "r"}), "version_mismatch")


def test_missing_version_is_refused():
    _assert_code(_frame({"kind": "ping", "robot_id": "r"}), "version_mismatch")


@pytest.mark.parametrize("kind", ["subscribe", "", None, 3])
def test_unknown_kind_is_bad_message(kind):
    _assert_code(_frame({"v": 1, "kind": kind, "robot_id": "r"}), "bad_message")


def test_missing_kind_is_bad_message():
    _assert_code(_frame({"v": 1, "robot_id": "r"}), "bad_message")


@pytest.mark.parametrize("kind", sorted(P.MESSAGE_TYPES))
def test_missing_robot_id_is_bad_message(kind):
    err = _assert_code(_frame({"v": 1, "kind": kind}), "bad_message")
    assert "robot_id" in err.message


def test_unknown_extra_field_is_bad_message():
    err = _assert_code(_frame({"v": 1, "kind": "ping", "robot_id": "r", "priority": 9}), "bad_message")
    assert "priority" in err.message


@pytest.mark.parametrize(
    ("kind", "field", "value"),
    [
        ("obs", "step", "3"),
        ("obs", "step", True),
        ("obs", "step", 1.5),
        ("obs", "t_robot", "now"),
        ("obs", "t_robot", False),
        ("obs", "observation", [1, 2]),
        ("obs", "human_action", [0.1, 0.2]),
        ("obs", "last_latency_ms", "fast"),
        ("hello", "robot_id", 17),
        ("hello", "token", b"bytes"),
        ("action", "actions", "none"),
        ("error", "step", "3"),
        ("welcome", "chunk_len", 4.0),
    ],
)
def test_wrong_field_type_is_bad_message(kind, field, value):
    obj = {"v": 1, "kind": kind, "robot_id": "r", field: value}
    err = _assert_code(_frame(obj), "bad_message")
    assert field in err.message


def test_field_types_that_are_accepted():
    # an int is a valid float; None is valid for optional fields
    out = P.decode(_frame({"v": 1, "kind": "obs", "robot_id": "r", "t_robot": 3, "human_action": None}))
    assert out.t_robot == 3
    out = P.decode(_frame({"v": 1, "kind": "error", "robot_id": "r", "step": None}))
    assert out.step is None


@pytest.mark.parametrize("dtype", ["object", "complex64", "float128", "U4", "<f4", "datetime64[s]", 7])
def test_array_ext_with_disallowed_dtype_is_bad_frame(dtype):
    _assert_code(_obs_frame_with(_array_ext(dtype, [2], b"\x00" * 8)), "bad_frame")


def test_hand_made_array_ext_with_allowed_dtype_decodes():
    # control for the refusal tests: the same construction with a good header is accepted
    raw = np.array([1.5, -2.0], dtype=np.float32).tobytes()
    out = P.decode(_obs_frame_with(_array_ext("float32", [2], raw)))
    np.testing.assert_array_equal(out.observation["x"], [1.5, -2.0])


@pytest.mark.parametrize("nbytes", [0, 7, 9, 16], ids=["none", "short", "long", "double"])
def test_array_payload_length_not_matching_shape_is_bad_frame(nbytes):
    _assert_code(_obs_frame_with(_array_ext("float32", [2], b"\x00" * nbytes)), "bad_frame")


@pytest.mark.parametrize("ndim", [7, 8, 40])
def test_array_with_too_many_dims_is_bad_frame(ndim):
    _assert_code(_obs_frame_with(_array_ext("uint8", [1] * ndim, b"\x00")), "bad_frame")


def test_max_ndim_limit_is_configurable():
    frame = _obs_frame_with(_array_ext("uint8", [1, 1, 1], b"\x00"))
    assert P.decode(frame).observation["x"].shape == (1, 1, 1)
    _assert_code(frame, "bad_frame", P.Limits(max_ndim=2))


@pytest.mark.parametrize(
    "shape", [[-1], [2, "3"], "2", {"a": 1}, [1.0]], ids=["negative", "str-dim", "str", "map", "float-dim"]
)
def test_array_with_malformed_shape_is_bad_frame(shape):
    _assert_code(_obs_frame_with(_array_ext("uint8", shape, b"\x00")), "bad_frame")


@pytest.mark.parametrize("data", [b"", b"\xc1", msgpack.packb(["float32"]), msgpack.packb("float32")])
def test_array_with_malformed_header_is_bad_frame(data):
    _assert_code(_obs_frame_with(msgpack.ExtType(P.ARRAY_EXT, data)), "bad_frame")


@pytest.mark.parametrize("code", [0, 2, 42, 127])
def test_unknown_ext_code_is_bad_frame(code):
    raw = np.zeros(2, np.float32).tobytes()
    _assert_code(_obs_frame_with(_array_ext("float32", [2], raw, code=code)), "bad_frame")


def test_encoding_an_object_array_raises_and_never_pickles():
    class Boom:
        def __reduce__(self):  # pickling this would run this method
            raise AssertionError("the codec tried to pickle")

    arr = np.array([Boom(), 1], dtype=object)
    with pytest.raises(TypeError, match="object"):
        P.encode(P.Obs(robot_id="r", observation={"x": arr}))


@pytest.mark.parametrize("value", [{1, 2}, object(), np.array([1 + 2j])], ids=["set", "object", "complex"])
def test_encoding_a_non_wire_value_raises(value):
    with pytest.raises(TypeError):
        P.encode(P.Obs(robot_id="r", observation={"x": value}))


# --------------------------------------------------------------------------------------------------
# Array specs.


def test_array_spec_check_accepts_a_matching_array():
    spec = P.ArraySpec((4, 2), "float32")
    spec.check("state", np.zeros((4, 2), np.float32))


@pytest.mark.parametrize(
    "arr",
    [np.zeros((2, 4), np.float32), np.zeros((8,), np.float32), np.zeros((4, 2), np.float64), [[0.0] * 2] * 4],
    ids=["transposed-shape", "flat", "float64", "list"],
)
def test_array_spec_check_refuses_mismatch(arr):
    spec = P.ArraySpec((4, 2), "float32")
    with pytest.raises(P.ProtocolError) as info:
        spec.check("state", arr)
    assert info.value.code == "bad_observation"
    assert "state" in info.value.message


def test_array_spec_dict_roundtrip():
    spec = P.ArraySpec((2,), "float32", -1.0, 1.0)
    assert P.ArraySpec.from_dict(spec.to_dict()) == spec
    assert P.ArraySpec.from_dict({"shape": [3]}) == P.ArraySpec((3,), "float32")
    specs = {"state": P.ArraySpec((10,)), "img": P.ArraySpec((8, 8, 3), "uint8")}
    assert P.specs_from_dict(P.specs_to_dict(specs)) == specs


def test_array_spec_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown array-spec keys") as info:
        P.ArraySpec.from_dict({"shape": [2], "dtype": "float32", "units": "m"})
    assert "units" in str(info.value)


@pytest.mark.parametrize("dtype", ["object", "complex64", "float", "str"])
def test_array_spec_from_dict_rejects_bad_dtype(dtype):
    with pytest.raises(ValueError, match="not allowed"):
        P.ArraySpec.from_dict({"shape": [2], "dtype": dtype})


@pytest.mark.parametrize("d", [{"dtype": "float32"}, [2], "shape"], ids=["no-shape", "list", "str"])
def test_array_spec_from_dict_rejects_non_spec(d):
    with pytest.raises(ValueError):
        P.ArraySpec.from_dict(d)


def test_array_spec_rejects_negative_dims():
    with pytest.raises(ValueError):
        P.ArraySpec((2, -1))


def test_specs_from_dict_rejects_empty():
    with pytest.raises(ValueError):
        P.specs_from_dict({})
