"""Alert rules and the Grafana dashboard must query series the services really export; the
alert rules and Prometheus configurations pass promtool, and every alert has unit tests
(tests/unit/alerts_test.yml, run by ``promtool test rules``)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
import yaml
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

from shared import metrics
from tests.support.prometheus import (
    ALERT_RULES,
    ALERT_TESTS,
    DEPLOY,
    alert_rules,
    dashboard_queries,
)

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
    return [rule["expr"] for rule in alert_rules()]


def dashboard_expressions() -> list[str]:
    return [query.expr for query in dashboard_queries()]


@pytest.mark.parametrize("source", [alert_expressions, dashboard_expressions])
def test_queries_use_exported_series(source):
    exported = exported_series()
    used = {name for expr in source() for name in SERIES.findall(expr)}
    assert used, "no rlimpact series queried"
    assert used <= exported, f"not exported by shared/metrics.py: {used - exported}"


def test_the_issue_s_alerts_exist():
    names = {rule["alert"] for rule in alert_rules()}
    expected = {"ConsumerLagGrowing", "HighErrorRate", "NoModelActive", "ServiceDown"}
    assert expected | {"LiveLatencyHigh"} <= names


def test_prometheus_loads_the_alert_rules():
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("promtool") is None:
        pytest.fail("promtool not found: install it with `bash deploy/prometheus.sh install`")
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120)


def test_the_alert_rules_pass_promtool_check():
    checked = promtool("check", "rules", str(ALERT_RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in checked.stdout


def test_the_alert_rules_pass_their_promtool_unit_tests():
    tested = promtool("test", "rules", str(ALERT_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_has_a_case_where_it_fires_and_one_where_it_does_not():
    cases = [
        case
        for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"]
        for case in test["alert_rule_test"]
    ]
    fires = {case["alertname"] for case in cases if case["exp_alerts"]}
    silent = {case["alertname"] for case in cases if not case["exp_alerts"]}
    names = {rule["alert"] for rule in alert_rules()}
    assert names <= fires, f"no firing case for {names - fires}"
    assert names <= silent, f"no case where it stays silent for {names - silent}"


def test_the_docker_compose_prometheus_config_passes_promtool():
    checked = promtool("check", "config", str(DEPLOY / "prometheus.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_local_prometheus_config_discovers_targets_from_the_run_dir(tmp_path):
    env = {**os.environ, "RLIMPACT_DATA_DIR": str(tmp_path)}
    written = subprocess.run(
        ["bash", str(DEPLOY / "prometheus.sh"), "config"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert written.returncode == 0, written.stdout + written.stderr
    config = yaml.safe_load((tmp_path / "prometheus" / "prometheus.yml").read_text())
    [job] = config["scrape_configs"]
    assert job["honor_labels"] is True
    [discovery] = job["file_sd_configs"]
    assert discovery["files"] == [str(tmp_path / "run/prometheus-targets.json")]
    assert config["rule_files"] == [str(ALERT_RULES)]


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
