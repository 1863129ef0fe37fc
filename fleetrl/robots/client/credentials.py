"""A robot's saved credentials: after its first registration (with the admin token) a robot PC keeps its
robot id, token and CURVE keys in a file of its own (mode 0600) and, at every later start, renews them with
its own token, so the arm keeps one identity and history across reboots and the admin token need not stay
on the robot. The file is rewritten atomically with each renewal (the old token stops working at once).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from fleetrl.robots.client.registration import RegistrationError, register, renew
from fleetrl.robots.client.robot import Robot

log = logging.getLogger(__name__)

FIELDS = ("robot_id", "name", "task", "token", "endpoint", "endpoints", "gateway", "chunk_len", "curve")


def credentials_path(directory: str | Path, name: str) -> Path:
    """Where a robot named ``name`` keeps its credentials in ``directory``."""
    return Path(directory).expanduser() / f"{name}.json"


def load_credentials(path: str | Path) -> dict[str, Any] | None:
    """The saved credentials, or None when there is no file; a damaged file raises naming it."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RegistrationError(
            f"{path}: not a credentials file ({exc}); delete it to register anew"
        ) from None
    if not isinstance(saved, dict):
        raise RegistrationError(
            f"{path}: not a credentials file (no JSON object); delete it to register anew"
        )
    missing = [k for k in ("robot_id", "token", "name", "task") if not isinstance(saved.get(k), str)]
    if missing:
        raise RegistrationError(f"{path}: credentials file lacks {missing}; delete it to register anew")
    return saved


def save_credentials(path: str | Path, credentials: dict[str, Any]) -> None:
    """Write ``credentials`` to ``path`` readable by this user only, atomically (a crash leaves the old file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump({k: credentials[k] for k in FIELDS if k in credentials}, f)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def register_or_renew(
    api_url: str,
    admin_token: str | None,
    name: str,
    task: str,
    robot: Robot,
    path: str | Path,
    wait_s: float = 120.0,
    gateway: int | None = None,
) -> dict[str, Any]:
    """Credentials for ``robot``, kept in ``path``: renewed with the saved token when the file exists (no
    admin token needed; the robot keeps its gateway), else registered with ``admin_token`` (``gateway``: pinned
    to that one). A saved robot registered for another name
    or task is refused; a saved token the platform no longer accepts (the robot was deleted) falls back to
    registering anew when an admin token is at hand."""
    saved = load_credentials(path)
    if saved is not None:
        if (saved["name"], saved["task"]) != (name, task):
            raise RegistrationError(
                f"{path} holds robot {saved['name']!r} of task {saved['task']!r}, not {name!r} of {task!r}"
            )
        try:
            fresh = renew(api_url, saved["robot_id"], saved["token"], wait_s=wait_s)
        except RegistrationError as exc:
            if exc.status not in (403, 404) or not admin_token:
                raise
            log.warning("%s: the saved credentials were refused (%s); registering anew", path, exc)
        else:
            save_credentials(path, fresh)
            return fresh
    if not admin_token:
        raise RegistrationError(
            f"robot {name!r} has no saved credentials in {path}: its first registration needs the admin token"
        )
    fresh = register(api_url, admin_token, name, task, robot, wait_s=wait_s, gateway=gateway)
    save_credentials(path, fresh)
    return fresh
