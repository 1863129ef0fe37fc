"""The robot side (protocol + SDK) installs on a robot PC: no Ray, no torch, nothing that unpickles."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import fleetrl.robots

ROBOTS_DIR = Path(fleetrl.robots.__file__).parent
REPO_ROOT = ROBOTS_DIR.parents[1]

BLOCKER = textwrap.dedent(
    """
    import sys

    BLOCKED = ("ray", "torch")

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is not installed on a robot PC")
            return None

    sys.meta_path.insert(0, Blocker())
    assert not any(m.split(".")[0] in BLOCKED for m in sys.modules), "already imported at start-up"
    """
)


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCKER + textwrap.dedent(code)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_blocker_really_blocks_ray_and_torch():
    # without this control, a broken blocker would make the next test pass whatever the client imports
    proc = _run(
        """
        for name in ("ray", "torch", "torch.nn", "ray.util"):
            try:
                __import__(name)
            except ImportError:
                continue
            raise SystemExit(f"{name} imported despite the blocker")
        print("blocked")
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "blocked"


def test_protocol_and_client_import_without_ray_or_torch():
    proc = _run(
        """
        import fleetrl.robots.protocol
        import fleetrl.robots.client
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        assert not leaked, leaked
        print("ok")
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


PICKLE_MODULES = {"pickle", "_pickle", "cPickle", "cloudpickle", "dill", "joblib", "shelve"}


def test_robot_modules_never_import_pickle():
    files = sorted(ROBOTS_DIR.rglob("*.py"))
    present = {f.relative_to(ROBOTS_DIR).as_posix() for f in files}
    assert {
        "protocol/__init__.py",
        "protocol/codec.py",
        "client/__init__.py",
        "client/transport.py",
    } <= present
    offenders = []
    for path in files:
        rel = path.relative_to(ROBOTS_DIR).as_posix()
        source = path.read_text()
        for node in ast.walk(ast.parse(source, filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "__import__"
            ):
                names = [a.value for a in node.args[:1] if isinstance(a, ast.Constant)]
            else:
                continue
            offenders += [f"{rel}:{node.lineno} {n}" for n in names if n.split(".")[0] in PICKLE_MODULES]
        if "allow_pickle=True" in source.replace(" ", ""):
            offenders.append(f"{rel}: allow_pickle=True")
    assert not offenders, offenders
