"""The ``fleetrl`` command's user-facing edges: one-line errors that say what to do, where the admin token
comes from, defaults in ``--help``, ``--version``, and SIGHUP stopping a run like Ctrl-C."""

from __future__ import annotations

import argparse
import os
import signal
import threading

import pytest

from fleetrl.cli import main
from fleetrl.cli.common import add_api_arguments, admin_token, install_stop_handlers
from fleetrl.testing.net import free_port


def test_an_unreachable_platform_is_one_line_that_says_what_to_check(capsys):
    port = free_port()  # nothing listens there
    argv = ["robot", "--sim", "Reacher-v5", "--task", "reach", "--api", f"http://127.0.0.1:{port}"]
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        assert main([*argv, "--token", "t", "--wait", "0"]) == 3
    finally:  # the command installs its stop handlers in this process
        for s, h in handlers.items():
            signal.signal(s, h)
    (line,) = capsys.readouterr().err.strip().splitlines()  # no traceback
    assert line.startswith(
        f"error: registration of 'reach-0': the platform at http://127.0.0.1:{port} was not reachable"
    )
    assert "Connection refused" in line


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_api_arguments(parser)
    return parser.parse_args(["--api", "http://x", *argv])


def test_the_admin_token_comes_from_flag_then_env_then_the_state_dir(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("FLEETRL_ADMIN_TOKEN", raising=False)
    assert admin_token(parse(["--state-dir", str(tmp_path)])) is None
    err = capsys.readouterr().err
    assert "no admin token" in err and str(tmp_path / "admin_token") in err
    (tmp_path / "admin_token").write_text("from-file\n")  # what a platform on this machine writes
    assert admin_token(parse(["--state-dir", str(tmp_path)])) == "from-file"
    monkeypatch.setenv("FLEETRL_ADMIN_TOKEN", "from-env")
    assert admin_token(parse(["--state-dir", str(tmp_path)])) == "from-env"
    assert admin_token(parse(["--state-dir", str(tmp_path), "--token", "from-flag"])) == "from-flag"


def test_help_shows_defaults_and_version_prints(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # no wrapping inside a default
    with pytest.raises(SystemExit):
        main(["demos", "collect", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: cube-single-singletask-task1-v0)" in text and "(default: 20)" in text
    assert "(default: None)" not in text
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.startswith("fleetrl ")


def test_sighup_asks_for_a_graceful_stop_and_a_second_signal_interrupts():
    stop = threading.Event()
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        install_stop_handlers(stop)
        os.kill(os.getpid(), signal.SIGHUP)
        assert stop.wait(5)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGHUP)
            signal.sigtimedwait([], 0.5)  # let the handler run
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def test_the_robot_command_reports_a_readable_line():
    from fleetrl.cli.run import fleet_line

    line = fleet_line({"steps": 3100, "episodes": 62, "successes": 18, "holds": 21, "errors": 0}, 3, 62.4)
    assert line == (
        "3 robots, 62 s: 3,100 steps, 62 episodes, 18 successful (29 %), 21 held steps (0.7 %), 0 errors"
    )
    assert "none finished" in fleet_line({"steps": 5}, 1, 1.0)


def test_progress_falls_back_to_plain_lines_without_rich(monkeypatch, capsys):
    import sys

    from fleetrl.cli.progress import progress_bar

    monkeypatch.setitem(sys.modules, "rich.progress", None)  # a robot-only install has no rich
    with progress_bar("evaluating", 20) as update:
        for done in range(21):
            update(done, "ok")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "evaluating: 0/20 ok" and lines[-1] == "evaluating: 20/20 ok" and len(lines) == 11
