"""The terminal view's run summary and plain line: the learning a run did is visible without the REST API."""

from __future__ import annotations

from rich.console import Console

from fleetrl.platform.live_view import RunSummary, render, summary_line


def status(step: int, version: int, success: float | None, ret: float | None, phase: str = "online") -> dict:
    rollout = {} if success is None else {"success_rate": success, "mean_return": ret}
    return {"algorithm": "ppo", "phase": phase, "step": step, "version": version, "rollout": rollout}


def rendered(table) -> str:
    console = Console(width=160, record=True)
    console.print(table)
    return console.export_text()


def test_run_summary_reports_first_and_last_recent_success_return_and_versions():
    summary = RunSummary()
    summary.observe({"reach": status(0, 0, None, None, "offline")})  # no episodes yet: not the start
    summary.observe({"reach": status(3, 3, 0.1, -30.0)})
    summary.observe({"reach": status(9, 9, 0.25, -21.5)})
    summary.observe({"reach": status(12, 12, 0.4, -18.25)})
    text = rendered(summary.table(300.0))
    assert "what this run learned (300 s)" in text
    row = next(line for line in text.splitlines() if "reach" in line)
    assert "10% → 40%" in row and "-30.0 → -18.2" in row and "online" in row and "12" in row


def test_a_task_without_episodes_shows_dashes():
    summary = RunSummary()
    summary.observe({"cube": status(0, 0, None, None, "offline")})
    row = next(line for line in rendered(summary.table(5.0)).splitlines() if "cube" in line)
    assert "- → -" in row and "offline" in row


def test_plain_line_shows_phase_and_return():
    gw = {
        "robots": [{"task": "reach", "online": True, "steps": 100, "episodes": 2, "successes": 1}],
        "pools": {},
    }
    line = summary_line(gw, {}, 12.0, {"reach": status(4, 4, 0.5, -20.0, "offline")})
    assert "ppo offline step 4 v4" in line and "recent success 50%" in line and "return -20.0" in line


def test_versions_text_says_what_the_fleet_runs():
    from fleetrl.platform.rollout_text import versions_text

    assert versions_text(None) == "-"
    assert versions_text({"mode": "follow", "stable": None, "pinned": None}) == "newest"
    assert versions_text({"mode": "follow", "pinned": 3}) == "pinned 3"
    trial = {"candidate": 5, "counts": {"canary": [4, 20], "stable": [6, 20]}}
    verdict = {"candidate": 4, "decision": "rolled_back", "canary_success": 0.2, "stable_success": 0.9}
    text = versions_text({"mode": "canary", "stable": 3, "trial": trial, "last_verdict": verdict})
    assert text == "stable 3 · canary 5: 4/20 vs 6/20 · last: 4 rolled back (20% vs 90%)"


def test_the_replay_refill_shows_until_it_is_done():
    gw = {"robots": [], "pools": {}}
    refilling = {"episodes": 5000, "loaded": 1200, "unreadable": 0, "done": False}
    assert "replay refill 1,200/5,000 episodes (24 %)" in summary_line(gw, {}, 3.0, {}, refilling)
    assert "replay refill" in rendered(render(gw, {}, 3.0, {}, refilling))
    finished = {**refilling, "loaded": 5000, "done": True}
    assert "refill" not in summary_line(gw, {}, 3.0, {}, finished)
    assert "refill" not in rendered(render(gw, {}, 3.0, {}, finished))


def test_several_gateways_show_each_ones_robots_or_that_it_is_down():
    one = {"robots": [], "pools": {}}
    assert "gateways" not in rendered(render(one, {}, 3.0))
    several = {**one, "gateways": [{"index": 0, "up": True, "robots_online": 7}, {"index": 1, "up": False}]}
    assert "gateways 0: 7 online, 1: DOWN" in rendered(render(several, {}, 3.0))
    assert "gateways 0: 7 online, 1: DOWN" in summary_line(several, {}, 3.0)
