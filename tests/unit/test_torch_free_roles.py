"""The roles that only route, store or describe (gateway, data server, REST app, task manager, weight board,
the replica actor's module) import without torch: each of their processes would otherwise load it at start
(~1 s of CPU and ~200 MB each). Replicas and learners import torch when they build a policy."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODULES = (
    "fleetrl.workers.gateway.actor",
    "fleetrl.workers.data.server",
    "fleetrl.serving.app",
    "fleetrl.workers.task_manager",
    "fleetrl.workers.weights",
    "fleetrl.workers.inference.replica",
    "fleetrl.workers.task",
    "fleetrl.models.configs",
)


def test_imports_without_torch():
    code = textwrap.dedent(
        f"""
        import importlib, sys
        class Blocker:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "torch":
                    raise ImportError("torch")
        sys.meta_path.insert(0, Blocker())
        for module in {MODULES!r}:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                sys.exit(f"{{module}} imports torch ({{exc}})")
        """
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
