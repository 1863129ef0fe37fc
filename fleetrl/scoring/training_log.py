"""Running means of a training loop's scalars, written out every ``every`` steps.

Why: the offline trainers (value estimator, progress critic) log the same way: means since the last entry,
the step and the elapsed time, handed to a progress callback (the CLI's progress line) or the debug log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class TrainingLog:
    def __init__(
        self,
        steps: int,
        every: int,
        report: Callable[[int, dict[str, float]], None] | None = None,
        what: str = "training",
    ):
        self.steps, self.every, self.report, self.what = steps, every, report, what
        self.history: list[dict[str, float]] = []
        self._sums: dict[str, float] = {}
        self._since = 0
        self._t0 = time.perf_counter()

    def add(
        self, step: int, samples: int | None = None, latest: dict[str, float] | None = None, **values: float
    ) -> None:
        """Add one step's ``values`` (tensors or floats); on a logging step write an entry with their
        means, ``elapsed_s``, ``latest`` as given (e.g. the learning rate now) and, given the batch size
        ``samples``, ``samples_per_s``."""
        for k, v in values.items():
            self._sums[k] = self._sums.get(k, 0.0) + float(v)
        self._since += 1
        if step % self.every and step != self.steps:
            return
        elapsed = time.perf_counter() - self._t0
        entry = {
            "step": float(step),
            **{k: v / self._since for k, v in self._sums.items()},
            "elapsed_s": elapsed,
        }
        entry.update(latest or {})
        if samples is not None:
            entry["samples_per_s"] = step * samples / max(elapsed, 1e-9)
        self.history.append(entry)
        self._sums, self._since = {}, 0
        if self.report is not None:
            self.report(step, entry)
        else:
            log.debug("%s step %d: %s", self.what, step, entry)
