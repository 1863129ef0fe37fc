"""The metrics and log server: one actor that every other actor reports to (VLAC's log server).

Actors buffer their observations locally (``MetricsBuffer``) and flush them in one call every half
second, so the hot paths never make a Ray call per event. The server keeps Prometheus metrics (served
as text at ``/metrics``), a recent window of raw values per series for percentiles in the live view,
the latest state snapshot each source published, and a ring of recent log lines.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict, deque
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.5,
    1.0,
    2.0,
    5.0,
    10.0,
    30.0,
    120.0,
)

# name -> (kind, help, label names). The one list of what the platform measures.
METRICS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "queue_wait_seconds": (
        "histogram",
        "Observation arrival at the gateway to dispatch to a replica.",
        ("task",),
    ),
    "inference_seconds": ("histogram", "Forward-pass time measured inside the replica.", ("task",)),
    "service_seconds": ("histogram", "Dispatch to completion of a batch (Ray call + compute).", ("task",)),
    "e2e_latency_seconds": ("histogram", "Robot-measured observation sent to action received.", ("task",)),
    "batch_size": ("histogram", "Observations per replica batch.", ("task",)),
    "frames_refused_total": ("counter", "Frames refused by the gateway, by reason.", ("reason",)),
    "observations_total": ("counter", "Observations accepted by the gateway.", ("task",)),
    "episodes_total": ("counter", "Episodes ended, by outcome.", ("task", "outcome")),
    "replica_failures_total": (
        "counter",
        "Inference batches lost to a dead or unresponsive replica (re-queued).",
        ("task",),
    ),
    "takeovers_total": ("counter", "Times an operator took over a robot.", ("task",)),
    "stale_chunks_dropped_total": (
        "counter",
        "Action chunks not sent: the robot was under human control or handed back after the observation.",
        ("task",),
    ),
    "episode_to_learner_seconds": (
        "histogram",
        "Episode end received by the gateway to the episode being in replay (includes commit retries).",
        ("task",),
    ),
    "episodes_ingested_total": (
        "counter",
        "Episodes offered to the data server, by result.",
        ("task", "result"),
    ),
    "episode_resends_total": ("counter", "Rows or ends a robot had to send again, by reason.", ("reason",)),
    "segments_total": (
        "counter",
        "Pieces of running episodes handed to on-policy learners (segment_steps), by result.",
        ("task", "result"),
    ),
    "replay_transitions": ("gauge", "Transitions in replay, by partition.", ("task", "partition")),
    "robots_online": ("gauge", "Robots with a live session.", ("task",)),
    "model_to_actor_seconds": (
        "histogram",
        "Weights published by the learner to the replica serving them.",
        ("task",),
    ),
    "weight_version": ("gauge", "Weight version a replica serves (its newest).", ("replica",)),
    "learner_steps_total": ("counter", "Learner updates, by algorithm.", ("task", "algorithm")),
    "learner_updates_per_second": ("gauge", "Learner updates per second (last report window).", ("task",)),
    "learner_loss": ("gauge", "Latest learner losses, by name.", ("task", "loss")),
    "queue_depth": ("gauge", "Observations waiting for a replica.", ("task",)),
    "replicas_available": ("gauge", "Replicas the scheduler can dispatch to.", ("task",)),
}


STALE_GAUGE_S = 5.0  # a gauge sender (a gateway) silent this long no longer counts in the sum


class MetricsBuffer:
    """Local accumulation of metric events in an actor; ``drain()`` hands them to ``MetricsServer.ingest``.
    Counters are summed and observations grouped per series here, so a flush carries one entry per series
    (at 128 robots the gateway observes several values per observation: one entry each was half the
    metrics server's work). Safe to fill from one thread while another drains it."""

    def __init__(self) -> None:
        self._observed: dict[tuple[str, tuple[str, ...]], list[float]] = {}
        self._counted: dict[tuple[str, tuple[str, ...]], float] = {}
        self._gauges: dict[tuple[str, tuple[str, ...]], float] = {}
        self._lock = threading.Lock()

    def observe(self, name: str, labels: tuple[str, ...], value: float) -> None:
        with self._lock:
            values = self._observed.get((name, labels))
            if values is None:
                values = self._observed[(name, labels)] = []
            values.append(value)

    def inc(self, name: str, labels: tuple[str, ...], value: float = 1.0) -> None:
        key = (name, labels)
        with self._lock:
            self._counted[key] = self._counted.get(key, 0.0) + value

    def set(self, name: str, labels: tuple[str, ...], value: float) -> None:
        with self._lock:
            self._gauges[(name, labels)] = value

    def drain(self) -> tuple[list, list]:
        """``(events, gauges)``: an event is ``(name, labels, values)`` for a histogram's observations since
        the last drain, ``(name, labels, total)`` for a counter's increments."""
        with self._lock:
            observed, counted, self._observed, self._counted = self._observed, self._counted, {}, {}
            gauges = [(n, lab, v) for (n, lab), v in self._gauges.items()]
        events = [(n, lab, v) for (n, lab), v in observed.items()] + [
            (n, lab, v) for (n, lab), v in counted.items()
        ]
        return events, gauges


class RemoteLogHandler(logging.Handler):
    """Ships an actor's log records to the log server in batches, from a daemon thread (never blocks)."""

    def __init__(self, server: Any, source: str, level: int = logging.INFO, flush_s: float = 1.0):
        super().__init__(level)
        self.server, self.source = server, source
        self._buffer: deque[tuple[float, str, str]] = deque(maxlen=1000)
        threading.Thread(
            target=self._flush_forever, args=(flush_s,), name="fleetrl-log-flush", daemon=True
        ).start()

    def emit(self, record: logging.LogRecord) -> None:
        self._buffer.append((record.created, record.levelname, self.format(record)))

    def _flush_forever(self, flush_s: float) -> None:
        while True:
            time.sleep(flush_s)
            batch = [self._buffer.popleft() for _ in range(len(self._buffer))]
            if batch:
                try:
                    self.server.log.remote(self.source, batch)
                except Exception:  # noqa: BLE001 - the log server is gone; drop rather than block
                    pass

    @classmethod
    def install(cls, server: Any, source: str) -> RemoteLogHandler:
        """Attach to the ``fleetrl`` logger of this process (once per source)."""
        logger = logging.getLogger("fleetrl")
        for h in logger.handlers:
            if isinstance(h, cls) and h.source == source:
                return h
        handler = cls(server, source)
        logger.addHandler(handler)
        logger.setLevel(min(logger.level or logging.INFO, logging.INFO))
        return handler


class MetricsServer:
    """Aggregates metrics, snapshots and logs from every actor. Run as a Ray actor."""

    def __init__(self, window: int = 4096, log_lines: int = 2000):
        self.registry = CollectorRegistry()
        self._metrics: dict[str, Any] = {}
        for name, (kind, doc, labels) in METRICS.items():
            full = f"fleetrl_{name}"
            if kind == "histogram":
                buckets = (1, 2, 4, 8, 16, 32, 64, 128, 256) if name == "batch_size" else LATENCY_BUCKETS
                m = Histogram(full, doc, labels, registry=self.registry, buckets=buckets)
            elif kind == "counter":
                m = Counter(full.removesuffix("_total"), doc, labels, registry=self.registry)
            else:
                m = Gauge(full, doc, labels, registry=self.registry)
            self._metrics[name] = (kind, m)
        self._windows: dict[tuple[str, tuple[str, ...]], deque[float]] = defaultdict(
            lambda: deque(maxlen=window)
        )
        self._snapshots: dict[str, dict[str, Any]] = {}
        # (gauge, labels) -> sender -> (its latest value, when it came)
        self._gauge_parts: dict[tuple[str, tuple[str, ...]], dict[str, tuple[float, float]]] = defaultdict(
            dict
        )
        self._logs: deque[dict[str, Any]] = deque(maxlen=log_lines)

    def ready(self) -> bool:
        return True

    def ingest(self, events: list, gauges: list, source: str | None = None) -> None:
        """``source``: a gauge of one of several senders (each gateway) is the sum of their latest values,
        leaving out a sender silent for ``STALE_GAUGE_S`` (a gateway that is gone)."""
        for (
            name,
            labels,
            value,
        ) in events:  # value: a histogram's list of observations (or one), a counter's sum
            kind, m = self._metrics[name]
            series = m.labels(*labels)
            if kind == "histogram":
                values = value if isinstance(value, list) else [value]
                for v in values:
                    series.observe(v)
                self._windows[(name, tuple(labels))].extend(values)
            else:
                series.inc(value)
        for name, labels, value in gauges:
            if source is not None:
                parts = self._gauge_parts[(name, tuple(labels))]
                parts[source] = (value, now := time.monotonic())
                value = sum(v for v, at in parts.values() if now - at < STALE_GAUGE_S)
            self._metrics[name][1].labels(*labels).set(value)

    def publish(self, source: str, snapshot: dict[str, Any]) -> None:
        """Replace the state snapshot of one source (e.g. the gateway's robot table)."""
        self._snapshots[source] = snapshot

    def log(self, source: str, records: list[tuple[float, str, str]]) -> None:
        """Append ``(unix time, level, message)`` records from one source."""
        for t, level, message in records:
            self._logs.append({"t": t, "source": source, "level": level, "message": message})

    def logs(self, n: int = 100) -> list[dict[str, Any]]:
        return list(self._logs)[-n:]

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def percentiles(self, name: str, labels: tuple[str, ...], qs=(50, 99)) -> dict[str, float] | None:
        win = self._windows.get((name, tuple(labels)))
        if not win:
            return None
        arr = np.fromiter(win, dtype=np.float64)
        out = {f"p{q}": float(np.percentile(arr, q)) for q in qs}
        out["max"] = float(arr.max())
        out["n"] = len(arr)
        return out

    def snapshot(self) -> dict[str, Any]:
        """Everything the live view needs in one call: source snapshots and latency percentiles."""
        latency = {
            f"{name}{{{','.join(labels)}}}": self.percentiles(name, labels)
            for (name, labels) in self._windows
        }
        return {"sources": dict(self._snapshots), "latency": latency, "t": time.time()}

    def stop(self) -> None:
        pass
