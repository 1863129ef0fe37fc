"""The terminal view of ``fleetrl run``: per task and per robot, steps, episodes, success, latencies."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from rich.console import Group
from rich.table import Table

from fleetrl.platform.rollout_text import versions_text

MAX_ROBOT_ROWS = 24


LOSS_KEYS = (
    "policy_loss",
    "value_loss",
    "bc_loss",
    "critic_loss",
    "actor_loss",
    "q_loss",
    "v_loss",
    "adjoint_loss",
)


def _ms(p: dict[str, float] | None, key: str, scale: float = 1.0) -> str:
    return "-" if not p or p.get(key) is None else f"{p[key] * scale:.1f}"


def _rate(successes: int, episodes: int) -> str:
    return "-" if episodes == 0 else f"{100.0 * successes / episodes:.0f}%"


def task_rows(gateway_stats: dict[str, Any], snapshot: dict[str, Any]) -> list[dict[str, Any]]:
    """Aggregate the gateway's robot table per task and attach latency percentiles from the log server."""
    agg: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"online": 0, "robots": 0, "steps": 0, "episodes": 0, "successes": 0}
    )
    for r in gateway_stats.get("robots", []):
        a = agg[r["task"]]
        a["robots"] += 1
        a["online"] += int(r["online"])
        a["steps"] += r["steps"]
        a["episodes"] += r["episodes"]
        a["successes"] += r["successes"]
    for task in gateway_stats.get("pools", {}):
        agg[task]  # tasks without robots still get a row  # noqa: B018
    latency = snapshot.get("latency", {})
    rows = []
    for task, a in sorted(agg.items()):
        rows.append(
            {
                "task": task,
                **a,
                "e2e": latency.get(f"e2e_latency_seconds{{{task}}}"),
                "queue": latency.get(f"queue_wait_seconds{{{task}}}"),
                "queue_depth": gateway_stats.get("pools", {}).get(task, {}).get("queue_depth", 0),
                "versions": versions_text(gateway_stats.get("rollouts", {}).get(task)),
            }
        )
    return rows


def _losses(losses: dict[str, float], n: int = 3) -> str:
    keys = [k for k in LOSS_KEYS if k in losses][:n]
    return ", ".join(f"{k} {losses[k]:.3g}" for k in keys) or "-"


def learner_rows(learners: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for task, s in sorted(learners.items()):
        rollout = s.get("rollout") or {}
        rows.append(
            {
                "task": task,
                "algorithm": s.get("algorithm", "-"),
                "state": s.get("waiting") or s.get("error") or s.get("state", "-"),
                "phase": s.get("phase", "-"),
                "step": s.get("step", 0),
                "version": s.get("version", 0),
                "updates_per_s": s.get("updates_per_s") or 0.0,
                "recent_success": rollout.get("success_rate"),
                "recent_return": rollout.get("mean_return"),
                "losses": _losses(s.get("losses") or {}),
            }
        )
    return rows


def refill_text(refill: dict[str, Any] | None) -> str | None:
    """``replay refill 1,200/5,000 episodes (24 %)`` while the data server refills its replay after a start
    (learners sample from what is loaded so far); None once done or unknown."""
    if not refill or refill.get("done"):
        return None
    loaded, total = refill.get("loaded", 0), max(1, refill.get("episodes", 0))
    return f"replay refill {loaded:,}/{total:,} episodes ({100 * loaded / total:.0f} %)"


def render(
    gateway_stats: dict[str, Any],
    snapshot: dict[str, Any],
    elapsed_s: float,
    learners: dict[str, dict[str, Any]] | None = None,
    refill: dict[str, Any] | None = None,
) -> Group:
    tasks = Table(title=f"fleetrl — tasks ({elapsed_s:.0f} s)", expand=False)
    for col in (
        "task",
        "robots online",
        "steps",
        "episodes",
        "success",
        "obs→action p50/p99 ms",
        "queue wait p50/p99 ms",
        "queued",
        "versions",
    ):
        tasks.add_column(col, justify="left" if col in ("task", "versions") else "right")
    for r in task_rows(gateway_stats, snapshot):
        tasks.add_row(
            r["task"],
            f"{r['online']}/{r['robots']}",
            str(r["steps"]),
            str(r["episodes"]),
            _rate(r["successes"], r["episodes"]),
            f"{_ms(r['e2e'], 'p50', 1e3)} / {_ms(r['e2e'], 'p99', 1e3)}",
            f"{_ms(r['queue'], 'p50', 1e3)} / {_ms(r['queue'], 'p99', 1e3)}",
            str(r["queue_depth"]),
            r["versions"],
        )
    robots = Table(title="robots", expand=False)
    for col in ("robot", "task", "state", "steps", "episodes", "success", "latency p50/p99 ms", "version"):
        robots.add_column(col, justify="left" if col in ("robot", "task", "state") else "right")
    rows = gateway_stats.get("robots", [])
    for r in rows[:MAX_ROBOT_ROWS]:
        robots.add_row(
            f"{r['name']} ({r['robot_id']})",
            r["task"],
            "online" if r["online"] else "offline",
            str(r["steps"]),
            str(r["episodes"]),
            _rate(r["successes"], r["episodes"]),
            f"{_ms(r['latency_ms'], 'p50')} / {_ms(r['latency_ms'], 'p99')}",
            "-" if r.get("policy_version") is None else str(r["policy_version"]),
        )
    if len(rows) > MAX_ROBOT_ROWS:
        robots.caption = f"… and {len(rows) - MAX_ROBOT_ROWS} more robots"
    learn = Table(title="learners", expand=False)
    for col in (
        "task",
        "algorithm",
        "phase",
        "step",
        "weights v",
        "updates/s",
        "success (last 50)",
        "return",
        "losses",
        "state",
    ):
        learn.add_column(
            col, justify="left" if col in ("task", "algorithm", "phase", "losses", "state") else "right"
        )
    for r in learner_rows(learners or {}):
        learn.add_row(
            r["task"],
            r["algorithm"],
            r["phase"],
            str(r["step"]),
            str(r["version"]),
            f"{r['updates_per_s']:.1f}",
            "-" if r["recent_success"] is None else f"{100 * r['recent_success']:.0f}%",
            "-" if r["recent_return"] is None else f"{r['recent_return']:.1f}",
            r["losses"],
            str(r["state"])[:60],
        )
    refused = gateway_stats.get("refused") or {}
    footer = Table.grid()
    footer.add_row(f"frames refused: {dict(refused) if refused else 0}    Ctrl-C to stop")
    if several := gateways_text(gateway_stats):
        footer.add_row(several)
    if refilling := refill_text(refill):
        footer.add_row(refilling)
    return Group(tasks, learn, robots, footer)


def gateways_text(gateway_stats: dict[str, Any]) -> str | None:
    """With several gateways: each one's robots online, or that it is down (None with one gateway)."""
    gateways = gateway_stats.get("gateways")
    if not gateways:
        return None
    each = ", ".join(
        f"{g['index']}: {g['robots_online']} online" if g["up"] else f"{g['index']}: DOWN" for g in gateways
    )
    return f"gateways {each}"


def summary_line(
    gateway_stats: dict[str, Any],
    snapshot: dict[str, Any],
    elapsed_s: float,
    learners: dict[str, dict[str, Any]] | None = None,
    refill: dict[str, Any] | None = None,
) -> str:
    """One line per refresh for non-interactive output (logs, CI)."""
    parts = []
    by_task = {r["task"]: r for r in learner_rows(learners or {})}
    for r in task_rows(gateway_stats, snapshot):
        parts.append(
            f"{r['task']}: {r['online']}/{r['robots']} online, {r['steps']} steps, {r['episodes']} episodes, "
            f"success {_rate(r['successes'], r['episodes'])}, obs→action p50 {_ms(r['e2e'], 'p50', 1e3)} ms "
            f"p99 {_ms(r['e2e'], 'p99', 1e3)} ms"
        )
        learner = by_task.get(r["task"])
        if learner is not None:
            parts[-1] += (
                f", {learner['algorithm']} {learner['phase']} step {learner['step']} v{learner['version']}"
                f" recent success {_pct(learner['recent_success'])} return {_num(learner['recent_return'])}"
            )
        if r["versions"] not in ("-", "newest"):
            parts[-1] += f", versions: {r['versions']}"
    if several := gateways_text(gateway_stats):
        parts.append(several)
    if refilling := refill_text(refill):
        parts.append(refilling)
    return f"[{elapsed_s:5.0f}s] " + " | ".join(parts)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


class RunSummary:
    """What a run changed, per task with a learner: the first and the last recent success and return the
    learner reported (its window of recent episodes), the phase it reached and the versions it published,
    so the end of ``fleetrl run`` says in one screen whether learning happened."""

    def __init__(self) -> None:
        self.first: dict[str, dict[str, Any]] = {}
        self.last: dict[str, dict[str, Any]] = {}

    def observe(self, learners: dict[str, dict[str, Any]]) -> None:
        for row in learner_rows(learners):
            if row["recent_success"] is not None or row["recent_return"] is not None:
                self.first.setdefault(row["task"], row)
            self.last[row["task"]] = row

    def table(self, elapsed_s: float) -> Table:
        table = Table(title=f"fleetrl — what this run learned ({elapsed_s:.0f} s)", expand=False)
        for col in ("task", "algorithm", "phase", "success start → end", "return start → end", "versions"):
            table.add_column(col)
        for task, end in sorted(self.last.items()):
            start = self.first.get(task, {})
            table.add_row(
                task,
                end["algorithm"],
                end["phase"],
                f"{_pct(start.get('recent_success'))} → {_pct(end['recent_success'])}",
                f"{_num(start.get('recent_return'))} → {_num(end['recent_return'])}",
                str(end["version"]),
            )
        return table
