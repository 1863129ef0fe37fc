"""The CLI's progress display for long work (demo collection, imports, critic and value training,
evaluations): one rich bar with the count, the time so far and the time left, and a short status text
(the latest loss, say). On a terminal it redraws in place; in a log file rich writes the final state once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

Update = Callable[..., None]  # update(done, status="") -> None


@contextmanager
def progress_bar(what: str, total: int | None, *, transient: bool = False) -> Iterator[Update]:
    """A bar for ``total`` units of ``what`` (None: unknown, a pulsing bar with the elapsed time); yields
    ``update(done, status="")``. Without rich (a robot-only install runs ``fleetrl rollout evaluate``) it
    prints a plain line at every tenth of the work instead."""
    try:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
    except ImportError:
        yield _plain_lines(what, total)
        return

    columns: list[Any] = [TextColumn(what), BarColumn()]
    if total is not None:
        columns += [MofNCompleteColumn(), TimeRemainingColumn()]
    columns += [TimeElapsedColumn(), TextColumn("{task.fields[status]}")]
    with Progress(*columns, transient=transient) as progress:
        bar = progress.add_task(what, total=total, status="")

        def update(done: int, status: str = "") -> None:
            progress.update(bar, completed=done, status=status)

        yield update


def metrics_text(metrics: dict[str, float], keys: tuple[str, ...] | None = None) -> str:
    """``loss 0.123  value_mae 0.04``: the chosen entries of a training log line (all when ``keys`` None)."""
    shown = metrics if keys is None else {k: v for k, v in metrics.items() if k in keys}
    return "  ".join(f"{k} {v:.4g}" for k, v in shown.items() if isinstance(v, int | float))


def _plain_lines(what: str, total: int | None) -> Update:
    """``update`` for a console without rich: one line per tenth of ``total`` (per call when unknown)."""
    shown = -1

    def update(done: int, status: str = "") -> None:
        nonlocal shown
        tenth = done * 10 // total if total else done
        if tenth != shown:
            shown = tenth
            print(f"{what}: {done}/{total if total else '?'} {status}".rstrip(), flush=True)

    return update
