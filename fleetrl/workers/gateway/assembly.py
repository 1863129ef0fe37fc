"""Episode assembly in the gateway: ``steps`` frames in order → one validated ``Episode``.

Rows must arrive contiguously (``first_step == expected``); anything else is answered with the row the
gateway still needs, and the robot re-sends from there. Every array is checked against the task's specs
before it is kept, so a malformed upload is refused without touching what was already assembled.
"""

from __future__ import annotations

import time

import numpy as np

from fleetrl.robots import protocol as P
from fleetrl.robots.episode import STEP_COLUMNS, Episode
from fleetrl.workers.gateway.rollout import UNASSIGNED, Assignment
from fleetrl.workers.task import TaskConfig


class EpisodeAssembly:
    def __init__(self, task: TaskConfig, robot_id: str, episode_id: str):
        self.task, self.robot_id, self.episode_id = task, robot_id, episode_id
        self.expected = 0  # next row the gateway needs
        self.nbytes = 0  # array bytes held
        self.asked_from: int | None = None  # row we last asked the robot to re-send from
        self.segment_from = 0  # first row not yet handed out in a segment (segments.py)
        self.assignment: Assignment = UNASSIGNED  # the version it runs, evaluation or canary (rollout.py)
        self._obs: dict[str, list[np.ndarray]] = {k: [] for k in task.observation}
        self._actions: list[np.ndarray] = []
        self._columns: dict[str, list[np.ndarray]] = {k: [] for k in STEP_COLUMNS}

    def add(self, msg: P.Steps) -> None:
        """Append rows; raises ``ProtocolError`` (nothing is kept) if any array is malformed."""
        if msg.actions is None:
            raise P.ProtocolError("bad_message", "steps without actions")
        n = int(msg.actions.shape[0]) if msg.actions.ndim >= 1 else -1
        if n <= 0:
            raise P.ProtocolError("bad_message", "steps must carry at least one row")
        action = self.task.action_spec
        if msg.actions.shape[1:] != action.shape or msg.actions.dtype.name != action.dtype:
            raise P.ProtocolError(
                "bad_observation",
                f"actions: expected [n, {list(action.shape)}] {action.dtype}, got "
                f"{list(msg.actions.shape)} {msg.actions.dtype.name}",
            )
        P.check_finite("actions", msg.actions)
        if set(msg.observations) != set(self._obs):
            raise P.ProtocolError("bad_observation", f"observation keys {sorted(msg.observations)}")
        for key, spec in self.task.observation_spec.items():
            arr = msg.observations[key] = P.decode_rows(
                spec, msg.observations[key], n, f"observations[{key!r}]"
            )
            if (
                not isinstance(arr, np.ndarray)
                or arr.shape != (n, *spec.shape)
                or arr.dtype.name != spec.dtype
            ):
                raise P.ProtocolError(
                    "bad_observation", f"observations[{key!r}]: expected [{n}, {list(spec.shape)}]"
                )
            P.check_finite(f"observations[{key!r}]", arr)
        if set(msg.columns) != set(STEP_COLUMNS):
            raise P.ProtocolError("bad_message", f"columns must be exactly {sorted(STEP_COLUMNS)}")
        for name, dtype in STEP_COLUMNS.items():
            col = msg.columns[name]
            if not isinstance(col, np.ndarray) or col.shape != (n,) or col.dtype != np.dtype(dtype):
                raise P.ProtocolError("bad_message", f"column {name!r}: expected {dtype}[{n}]")
            P.check_finite(
                f"column {name!r}", col, allow_nan=name == "log_prob"
            )  # NaN: no behaviour log-prob
        self.nbytes += msg.actions.nbytes + sum(a.nbytes for a in msg.observations.values())
        self.nbytes += sum(c.nbytes for c in msg.columns.values())
        for key in self._obs:
            self._obs[key].append(msg.observations[key])
        self._actions.append(msg.actions)
        for name in STEP_COLUMNS:
            self._columns[name].append(msg.columns[name])
        self.expected += n
        self.asked_from = None

    def arrays(self) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, np.ndarray]]:
        """The rows so far as (observations, actions, columns), one array each; kept joined, so the next
        call joins only the rows that came since. Needs at least one row."""
        for parts in (*self._obs.values(), self._actions, *self._columns.values()):
            if len(parts) > 1:
                parts[:] = [np.concatenate(parts)]
        return (
            {k: v[0] for k, v in self._obs.items()},
            self._actions[0],
            {k: v[0] for k, v in self._columns.items()},
        )

    def _episode(self, outcome: str, labelled_by: str, final: dict[str, np.ndarray], **flags) -> Episode:
        ep = Episode(
            episode_id=self.episode_id,
            task=self.task.name,
            robot_id=self.robot_id,
            outcome=outcome,
            observations={k: np.concatenate(v) for k, v in self._obs.items()},
            actions=np.concatenate(self._actions),
            columns={k: np.concatenate(v) for k, v in self._columns.items()},
            final_observation=final,
            labelled_by=labelled_by,
            **flags,
        )
        ep.validate()
        return ep

    def finish(self, end: P.EpisodeEnd) -> Episode:
        """The complete episode; ``end.steps`` must equal the rows received (check ``expected`` first)."""
        final = P.decode_observation(self.task.observation_spec, end.final_observation, "final_observation")
        if self.expected == 0:
            raise P.ProtocolError("bad_message", "an episode needs at least one step")
        if end.source not in P.EPISODE_SOURCES:
            raise P.ProtocolError("bad_message", f"source must be one of {P.EPISODE_SOURCES}")
        P.check_meta(end.meta)
        return self._episode(
            end.outcome,
            end.labelled_by,
            {k: np.array(v) for k, v in final.items()},
            terminated=end.terminated,
            truncated=end.truncated,
            source=end.source,
            meta={**end.meta, **self.assignment.meta(), "gateway_end_time": time.time()},
        )

    def abort(self) -> Episode | None:
        """What arrived of an episode that ended without an ``episode_end`` (lease expiry), or None."""
        if self.expected == 0:
            return None
        final = {k: v[-1][-1].copy() for k, v in self._obs.items()}
        return self._episode(
            "aborted",
            "gateway",
            final,
            truncated=True,
            meta={"final_observation": "last_row", **self.assignment.meta(), "gateway_end_time": time.time()},
        )
