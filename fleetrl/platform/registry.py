"""Robots and tasks, persisted in SQLite so a restart keeps them. Robot tokens are stored hashed.

The platform runs one ``Registry`` as a Ray actor; the REST app and the gateway get its handle.
Tokens are 256-bit random strings, so a plain SHA-256 is the right hash (no password stretching needed);
comparison is constant-time. Each robot also has a CURVE public key (its link to the gateway is encrypted
and authenticated by it): a key pair issued at registration, whose secret half is returned once and not
kept, or the robot's own public key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    created REAL NOT NULL,
    config TEXT  -- a task created over REST: what re-creates it at the next start (NULL: the config file's)
);
CREATE TABLE IF NOT EXISTS robots (
    robot_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    task TEXT NOT NULL REFERENCES tasks(name),
    token_sha256 TEXT NOT NULL,
    observation_spec TEXT NOT NULL,
    action_spec TEXT NOT NULL,
    created REAL NOT NULL,
    curve_public_key TEXT,
    gateway INTEGER  -- the gateway it is assigned to (the one that last welcomed it)
);
CREATE INDEX IF NOT EXISTS robots_task ON robots(task);
CREATE TABLE IF NOT EXISTS rollouts (
    task TEXT PRIMARY KEY,  -- no foreign key: a task deleted and created again under its name starts afresh
    state TEXT NOT NULL     -- JSON: pinned and stable version, last rejected candidate, recent verdicts
);
CREATE TABLE IF NOT EXISTS evaluations (
    evaluation_id TEXT PRIMARY KEY,
    task TEXT NOT NULL,
    created REAL NOT NULL,
    record TEXT NOT NULL    -- JSON: the evaluation's summary (fleetrl.workers.gateway.rollout)
);
CREATE INDEX IF NOT EXISTS evaluations_task ON evaluations(task, created);
"""


class NotFound(KeyError):
    pass


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Registry:
    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(SCHEMA)
        columns = {r["name"] for r in self._db.execute("PRAGMA table_info(tasks)")}
        if "config" not in columns:  # a registry written before tasks created over REST were kept
            self._db.execute("ALTER TABLE tasks ADD COLUMN config TEXT")
        columns = {r["name"] for r in self._db.execute("PRAGMA table_info(robots)")}
        if "curve_public_key" not in columns:  # robots registered before CURVE: token mode only until
            self._db.execute("ALTER TABLE robots ADD COLUMN curve_public_key TEXT")  # re-registered
        if "gateway" not in columns:  # a registry written before several gateways: assigned at next hello
            self._db.execute("ALTER TABLE robots ADD COLUMN gateway INTEGER")
        self._db.execute(
            "CREATE UNIQUE INDEX IF NOT EXISTS robots_curve_key ON robots(curve_public_key)"
            " WHERE curve_public_key IS NOT NULL"
        )

    def ready(self) -> str:
        return str(self.path)

    # -- tasks ---------------------------------------------------------------------------------------
    def upsert_task(self, name: str, spec: dict[str, Any], config: dict[str, Any] | None = None) -> None:
        """``config``: what re-creates a task created at runtime; None for a task the config file defines
        (the file wins over a runtime task of the same name)."""
        self._db.execute(
            "INSERT INTO tasks(name, spec, created, config) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(name) DO UPDATE SET spec=excluded.spec, config=excluded.config",
            (name, json.dumps(spec), time.time(), None if config is None else json.dumps(config)),
        )

    def task_configs(self) -> dict[str, dict[str, Any] | None]:
        """Every task by name, oldest first: the stored config of one created over REST, None for one the
        config file defines. An actor that (re)starts serves these (see ``workers.task.registered_tasks``)."""
        rows = self._db.execute("SELECT name, config FROM tasks ORDER BY created").fetchall()
        return {r["name"]: None if r["config"] is None else json.loads(r["config"]) for r in rows}

    def delete_task(self, name: str) -> list[str]:
        """Forget a task, unless robots are registered for it (their records would point at nothing):
        returns their ids, empty when the task was deleted. The foreign key makes the check and the delete
        one step. ``NotFound`` if there is no such task."""
        try:
            deleted = self._db.execute("DELETE FROM tasks WHERE name = ?", (name,)).rowcount
        except sqlite3.IntegrityError:
            return [r["robot_id"] for r in self.list_robots(name)]
        if deleted == 0:
            raise NotFound(f"no task named {name!r}")
        self._db.execute("DELETE FROM rollouts WHERE task = ?", (name,))
        return []

    def forget_config_tasks(self, keep: list[str]) -> list[str]:
        """At start: delete the rows of config-file tasks the config no longer has, except those robots
        are still registered for. Returns those (listed, not served, until their robots are deleted)."""
        rows = self._db.execute("SELECT name FROM tasks WHERE config IS NULL").fetchall()
        return [name for name in sorted({r["name"] for r in rows} - set(keep)) if self.delete_task(name)]

    def list_tasks(self) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT t.name, t.spec, (SELECT COUNT(*) FROM robots r WHERE r.task = t.name) AS robots "
            "FROM tasks t ORDER BY t.name"
        ).fetchall()
        return [{**json.loads(r["spec"]), "name": r["name"], "robots": r["robots"]} for r in rows]

    def get_task(self, name: str) -> dict[str, Any]:
        for t in self.list_tasks():
            if t["name"] == name:
                return t
        raise NotFound(f"no task named {name!r}")

    # -- robots --------------------------------------------------------------------------------------
    def register_robot(
        self,
        name: str,
        task: str,
        observation_spec: dict[str, Any],
        action_spec: dict[str, Any],
        curve_public_key: str | None = None,
        gateways: list[int] | None = None,
        gateway: int | None = None,
    ) -> dict[str, Any]:
        """Create a robot, or re-register one: a name already registered for ``task`` keeps its robot id
        (and so its episodes and statistics) and gets a new token and CURVE key pair, the old ones no longer
        valid (an arm that reboots stays one robot). A name registered for another task is refused
        (ValueError). The returned record carries the plain token and, unless the robot brought its own
        ``curve_public_key``, its CURVE secret key: neither is stored; ``reregistered`` says which case.

        Its gateway: ``gateway`` if given (pinned), else the one it had if that is among ``gateways`` (the
        indices of the gateways answering now), else the one of ``gateways`` with the fewest robots."""
        import zmq

        if self._db.execute("SELECT 1 FROM tasks WHERE name = ?", (task,)).fetchone() is None:
            raise NotFound(f"no task named {task!r}")
        known = self._db.execute(
            "SELECT robot_id, task FROM robots WHERE name = ? ORDER BY created DESC", (name,)
        ).fetchone()
        if known is not None and known["task"] != task:
            raise ValueError(
                f"robot name {name!r} is registered for task {known['task']!r} ({known['robot_id']}): delete "
                "that robot first, or register under another name"
            )
        robot_id = known["robot_id"] if known is not None else f"rbt_{uuid.uuid4().hex[:16]}"
        token = secrets.token_urlsafe(32)
        secret = None
        if curve_public_key is None:
            public, secret_key = zmq.curve_keypair()
            curve_public_key, secret = public.decode("ascii"), secret_key.decode("ascii")
        elif self.robot_for_curve_key(curve_public_key) not in (None, robot_id):
            raise ValueError("that CURVE public key belongs to another robot: every robot needs its own")
        specs = (json.dumps(observation_spec), json.dumps(action_spec))
        if known is None:
            self._db.execute(
                "INSERT INTO robots (robot_id, name, task, token_sha256, observation_spec, action_spec, created,"
                " curve_public_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (robot_id, name, task, hash_token(token), *specs, time.time(), curve_public_key),
            )
        else:
            self._db.execute(
                "UPDATE robots SET token_sha256 = ?, observation_spec = ?, action_spec = ?, curve_public_key = ?"
                " WHERE robot_id = ?",
                (hash_token(token), *specs, curve_public_key, robot_id),
            )
        if gateway is None and gateways:
            current = self.get_robot(robot_id)["gateway"]
            gateway = current if current in gateways else self._least_loaded(gateways)
        if gateway is not None:
            self.assign_gateway(robot_id, gateway)
        record = {**self.get_robot(robot_id), "token": token, "reregistered": known is not None}
        return record | ({"curve_secret_key": secret} if secret is not None else {})

    def robot_for_curve_key(self, public_key: str) -> str | None:
        """The robot whose CURVE public key (Z85) this is, or None."""
        r = self._db.execute(
            "SELECT robot_id FROM robots WHERE curve_public_key = ?", (public_key,)
        ).fetchone()
        return r["robot_id"] if r is not None else None

    def _least_loaded(self, gateways: list[int]) -> int:
        rows = self._db.execute("SELECT gateway, COUNT(*) AS n FROM robots GROUP BY gateway").fetchall()
        load = {r["gateway"]: r["n"] for r in rows}
        return min(gateways, key=lambda k: (load.get(k, 0), k))

    def assign_gateway(self, robot_id: str, gateway: int) -> None:
        """The robot is now ``gateway``'s (registration, or another gateway welcomed it)."""
        self._db.execute("UPDATE robots SET gateway = ? WHERE robot_id = ?", (int(gateway), robot_id))

    def robot_gateways(self, robot_ids: list[str]) -> dict[str, int | None]:
        """The gateway each of ``robot_ids`` is assigned to (unknown ids left out)."""
        marks = ",".join("?" * len(robot_ids))
        rows = self._db.execute(
            f"SELECT robot_id, gateway FROM robots WHERE robot_id IN ({marks})", tuple(robot_ids)
        ).fetchall()
        return {r["robot_id"]: r["gateway"] for r in rows}

    def _row(self, r: sqlite3.Row) -> dict[str, Any]:
        return {
            "robot_id": r["robot_id"],
            "name": r["name"],
            "task": r["task"],
            "observation_spec": json.loads(r["observation_spec"]),
            "action_spec": json.loads(r["action_spec"]),
            "created": r["created"],
            "curve_public_key": r["curve_public_key"],
            "gateway": r["gateway"],
        }

    def list_robots(self, task: str | None = None) -> list[dict[str, Any]]:
        if task is None:
            rows = self._db.execute("SELECT * FROM robots ORDER BY created").fetchall()
        else:
            rows = self._db.execute(
                "SELECT * FROM robots WHERE task = ? ORDER BY created", (task,)
            ).fetchall()
        return [self._row(r) for r in rows]

    def get_robot(self, robot_id: str) -> dict[str, Any]:
        r = self._db.execute("SELECT * FROM robots WHERE robot_id = ?", (robot_id,)).fetchone()
        if r is None:
            raise NotFound(f"no robot with id {robot_id!r}")
        return self._row(r)

    def delete_robot(self, robot_id: str) -> None:
        if self._db.execute("DELETE FROM robots WHERE robot_id = ?", (robot_id,)).rowcount == 0:
            raise NotFound(f"no robot with id {robot_id!r}")

    def verify(self, robot_id: str, token: str) -> dict[str, Any] | None:
        """The robot's record if ``token`` is its token, else None."""
        if not isinstance(robot_id, str) or not isinstance(token, str):
            return None
        r = self._db.execute("SELECT * FROM robots WHERE robot_id = ?", (robot_id,)).fetchone()
        if r is None or not hmac.compare_digest(r["token_sha256"], hash_token(token)):
            return None
        return self._row(r)

    # -- rollouts and evaluations (the gateway writes them, so a restart keeps pins and results) ----------
    def save_rollout(self, task: str, state: dict[str, Any]) -> None:
        self._db.execute(
            "INSERT INTO rollouts(task, state) VALUES (?, ?) ON CONFLICT(task) DO UPDATE SET state=excluded.state",
            (task, json.dumps(state)),
        )

    def rollouts(self) -> dict[str, dict[str, Any]]:
        return {r["task"]: json.loads(r["state"]) for r in self._db.execute("SELECT * FROM rollouts")}

    def save_evaluation(self, record: dict[str, Any]) -> None:
        self._db.execute(
            "INSERT INTO evaluations(evaluation_id, task, created, record) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(evaluation_id) DO UPDATE SET record=excluded.record",
            (record["evaluation_id"], record["task"], record["created"], json.dumps(record)),
        )

    def list_evaluations(self, task: str) -> list[dict[str, Any]]:
        """A task's evaluations, newest first."""
        rows = self._db.execute(
            "SELECT record FROM evaluations WHERE task = ? ORDER BY created DESC", (task,)
        ).fetchall()
        return [json.loads(r["record"]) for r in rows]

    def interrupt_evaluations(self, gateway: str | None = None) -> int:
        """At a gateway's (re)start: evaluations that were running on it (``gateway``: its name; None: on any)
        are over (the episodes they had handed out ran unmarked after the restart). Returns how many."""
        count = 0
        for r in self._db.execute("SELECT evaluation_id, record FROM evaluations").fetchall():
            record = json.loads(r["record"])
            if record.get("status") == "running" and gateway in (None, record.get("gateway", gateway)):
                record["status"] = "interrupted"
                self.save_evaluation(record)
                count += 1
        return count

    def stop(self) -> None:
        self._db.close()
