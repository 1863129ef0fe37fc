"""docs/monitoring: the Grafana dashboard and the Prometheus config name only metrics and labels the
platform exports (METRICS), so they cannot silently drift from the code."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from fleetrl.workers.metrics_server import METRICS

DOCS = Path(__file__).resolve().parents[2] / "docs" / "monitoring"
SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "counter": ("_total",), "gauge": ("",)}


def exported() -> dict[str, tuple[str, ...]]:
    """Every series name Prometheus sees -> its label names."""
    out = {}
    for name, (kind, _, labels) in METRICS.items():
        base = f"fleetrl_{name.removesuffix('_total')}"
        for suffix in SUFFIXES[kind]:
            out[base + suffix] = labels + (("le",) if suffix == "_bucket" else ())
    return out


def test_the_dashboard_queries_only_exported_metrics_and_labels():
    dashboard = json.loads((DOCS / "grafana-dashboard.json").read_text())
    series = exported()
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 12
    used = set()
    for expr in exprs:
        for name in re.findall(r"fleetrl_[a-z0-9_]+", expr):
            assert name in series, f"{name} in {expr!r} is not exported"
            used.add(name)
            for group in re.findall(r"by \(([^)]*)\)", expr):
                for label in (x.strip() for x in group.split(",")):
                    assert label in series[name], f"{name} has no label {label!r} ({expr!r})"
    assert {"fleetrl_queue_wait_seconds_bucket", "fleetrl_learner_loss", "fleetrl_robots_online"} <= used


def test_the_scrape_config_reads_the_metrics_path():
    cfg = yaml.safe_load((DOCS / "prometheus.yml").read_text())
    (job,) = cfg["scrape_configs"]
    assert job["metrics_path"] == "/metrics" and job["static_configs"][0]["targets"]
