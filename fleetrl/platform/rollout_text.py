"""Which versions a task's robots run, in a few words, for the live view and ``fleetrl rollout``: plain
Python, so the rollout commands also run from a robot-only install."""

from __future__ import annotations

from typing import Any


def _percent(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def versions_text(summary: dict[str, Any] | None) -> str:
    """Which versions a task's robots run, in a few words: "newest", "pinned 3", "stable 3 · canary 5: 4/20
    vs 6/20", "stable 5 · last: 6 rolled back (20% vs 90%)" (the gateway's rollout summary)."""
    if not summary:
        return "-"
    parts = []
    if summary.get("pinned") is not None:
        parts.append(f"pinned {summary['pinned']}")
    if summary.get("mode") == "canary" and summary.get("stable") is not None:
        parts.append(f"stable {summary['stable']}")
    trial = summary.get("trial")
    if trial:
        (cs, cn), (ss, sn) = trial["counts"]["canary"], trial["counts"]["stable"]
        parts.append(f"canary {trial['candidate']}: {cs}/{cn} vs {ss}/{sn}")
    last = summary.get("last_verdict")
    if last:
        parts.append(f"last: {last['candidate']} {last['decision'].replace('_', ' ')} "
                     f"({_percent(last['canary_success'])} vs {_percent(last['stable_success'])})")  # fmt: skip
    if summary.get("evaluations_running"):
        parts.append(f"{summary['evaluations_running']} evaluation(s) running")
    return " · ".join(parts) or "newest"
