"""Plain-Python stand-ins for what a gateway part is given: the wire (``send``/``refuse``), Ray-style remote
methods, a task and a connected robot. No socket, no Ray: each part's own code runs against these."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np

from fleetrl.robots import protocol as P
from fleetrl.robots.episode import empty_columns
from fleetrl.workers.gateway.session import RobotState
from fleetrl.workers.task import TaskConfig

OBS_DIM, ACT_DIM, CHUNK = 3, 2, 2


def task(name: str = "reach", **fields: Any) -> TaskConfig:
    return TaskConfig(
        name=name,
        observation={"state": {"shape": [OBS_DIM]}},
        action={"shape": [ACT_DIM], "low": -1, "high": 1},
        chunk_len=CHUNK,
        **fields,
    )


def robot(robot_id: str, on: TaskConfig, ident: bytes | None = None) -> RobotState:
    """A robot with a live session (``ident`` defaults to ``b"id-" + robot_id``)."""
    return RobotState(robot_id, on, ident=ident or f"id-{robot_id}".encode(), online=True)


class Wire:
    """``send`` and ``refuse`` as the gateway gives them to its parts: frames are collected per routing id,
    a refusal is counted and answered with an ``error`` frame."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, P.Message]] = []
        self.refused: Counter = Counter()

    def send(self, ident: bytes, msg: P.Message) -> None:
        self.sent.append((ident, msg))

    def refuse(
        self,
        ident: bytes,
        code: str,
        message: str,
        robot_id: str | None,
        step: int | None = None,
        episode_id: str | None = None,
    ) -> None:
        self.refused[code] += 1
        self.send(
            ident,
            P.Error(robot_id=robot_id or "", code=code, message=message, step=step, episode_id=episode_id),
        )

    def to(self, ident: bytes, kind: type[P.Message] | None = None) -> list[P.Message]:
        """What went to ``ident`` (only frames of ``kind`` when given)."""
        return [m for i, m in self.sent if i == ident and (kind is None or isinstance(m, kind))]


class Ref:
    """What ``actor.method.remote(...)`` returns: awaitable, and ``future()`` like an ObjectRef. Unless it
    is ``settled_by_hand`` the call runs at once; then the test resolves ``pending`` itself."""

    def __init__(self, fn: Callable[..., Any], args: tuple, settled_by_hand: bool = False):
        self.pending: concurrent.futures.Future = concurrent.futures.Future()
        if not settled_by_hand:
            try:
                self.pending.set_result(fn(*args))
            except Exception as exc:  # noqa: BLE001 - an actor's exception surfaces on the ref
                self.pending.set_exception(exc)

    def future(self) -> concurrent.futures.Future:
        return self.pending

    def __await__(self):
        return asyncio.wrap_future(self.pending).__await__()


def replica_result(batch: dict[str, np.ndarray], version: int, compute_s: float = 0.002) -> dict:
    """What a replica answers for ``batch``: every row's actions are its observation's first value."""
    rows = batch["state"].shape[0]
    return {
        "actions": np.repeat(batch["state"][:, :1, None], CHUNK, axis=1).repeat(ACT_DIM, axis=2),
        "log_probs": np.zeros(rows, np.float32),
        "versions": np.full(rows, version, np.int64),
        "version": version,
        "replica": "reach/0",
        "compute_s": compute_s,
        "t_start": 0.0,
    }


class RemoteMethod:
    """A Ray actor method stand-in: records every call's arguments and answers with ``fn(*args)``."""

    def __init__(self, fn: Callable[..., Any] = lambda *args: None, settled_by_hand: bool = False):
        self.fn, self.settled_by_hand = fn, settled_by_hand
        self.calls: list[tuple] = []
        self.refs: list[Ref] = []

    def remote(self, *args: Any) -> Ref:
        self.calls.append(args)
        self.refs.append(Ref(self.fn, args, self.settled_by_hand))
        return self.refs[-1]


async def settle(rounds: int = 20) -> None:
    """Let the loop run what the part started (tasks it created, futures just resolved)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


def obs(robot_id: str, step: int, value: float, episode_id: str = "ep-1") -> P.Obs:
    return P.Obs(
        robot_id=robot_id,
        episode_id=episode_id,
        step=step,
        observation={"state": np.full(OBS_DIM, value, np.float32)},
    )


def steps(robot_id: str, episode_id: str, first: int, n: int) -> P.Steps:
    """Rows ``first .. first + n - 1``; row t's observation is all t (so assembled episodes can be checked)."""
    rows = np.arange(first, first + n, dtype=np.float32)
    columns = empty_columns(n)
    columns["reward"][:] = 1.0
    return P.Steps(
        robot_id=robot_id,
        episode_id=episode_id,
        first_step=first,
        observations={"state": np.repeat(rows[:, None], OBS_DIM, axis=1)},
        actions=np.zeros((n, ACT_DIM), np.float32),
        columns=columns,
    )


def end(robot_id: str, episode_id: str, n: int, outcome: str = "success", **fields: Any) -> P.EpisodeEnd:
    return P.EpisodeEnd(
        robot_id=robot_id,
        episode_id=episode_id,
        outcome=outcome,
        steps=n,
        final_observation={"state": np.full(OBS_DIM, n, np.float32)},
        **fields,
    )
