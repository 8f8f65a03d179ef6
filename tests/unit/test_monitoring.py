"""Alert rules and the Grafana dashboard must query series the services really export."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

from shared import metrics
from shared.settings import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
SERIES = re.compile(r"\brlimpact_[a-z_]+")


def exported_series() -> set[str]:
    names: set[str] = set()
    for value in vars(metrics).values():
        if not isinstance(value, MetricWrapperBase):
            continue
        name = value._name
        if isinstance(value, Counter):
            names.add(f"{name}_total")
        elif isinstance(value, Histogram):
            names.update(f"{name}_{suffix}" for suffix in ("bucket", "sum", "count"))
        elif isinstance(value, Gauge):
            names.add(name)
    return names


def alert_expressions() -> list[str]:
    rules = yaml.safe_load((DEPLOY / "alerts.yml").read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def dashboard_expressions() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "rlimpact.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


@pytest.mark.parametrize("source", [alert_expressions, dashboard_expressions])
def test_queries_use_exported_series(source):
    exported = exported_series()
    used = {name for expr in source() for name in SERIES.findall(expr)}
    assert used, "no rlimpact series queried"
    assert used <= exported, f"not exported by shared/metrics.py: {used - exported}"


def test_the_issue_s_alerts_exist():
    rules = yaml.safe_load((DEPLOY / "alerts.yml").read_text())
    names = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    assert {"ConsumerLagGrowing", "HighErrorRate", "NoModelActive"} <= names


def test_prometheus_loads_the_alert_rules():
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]


KEY_SERIES = {
    "rlimpact_events_in_total",
    "rlimpact_events_out_total",
    "rlimpact_errors_total",
    "rlimpact_processing_seconds_bucket",
    "rlimpact_consumer_lag",
    "rlimpact_active_model_id",
    "rlimpact_live_matches",
    "rlimpact_live_latency_seconds_bucket",
    "rlimpact_worker_restarts_total",
}


def test_the_dashboard_shows_the_key_series():
    shown = {name for expr in dashboard_expressions() for name in SERIES.findall(expr)}
    assert shown >= KEY_SERIES, f"no dashboard panel for {KEY_SERIES - shown}"
