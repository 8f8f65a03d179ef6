"""Monitoring in tests: a service's /metrics (with prometheus_client's own text parser), the
alert rules and dashboard queries of deploy/, and a running Prometheus' HTTP API."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from services.cli.supervisor import TARGETS_FILE, Instance, prometheus_targets, write_atomically
from shared.settings import REPO_ROOT, SERVICE_NAMES, Settings


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def scrape(port: int, host: str = "127.0.0.1") -> list[Sample]:
    body = urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5).read().decode()
    return [
        Sample(sample.name, dict(sample.labels), sample.value)
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    ]


def matching(samples: list[Sample], name: str, **labels: str) -> list[Sample]:
    return [
        s
        for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]


def total(samples: list[Sample], name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (0 if there are none)."""
    return sum(s.value for s in matching(samples, name, **labels))


# ---------------------------------------------------------------- the monitoring configuration

DEPLOY = REPO_ROOT / "deploy"
ALERT_RULES = DEPLOY / "alerts.yml"
ALERT_TESTS = REPO_ROOT / "tests" / "unit" / "alerts_test.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "rlimpact.json"


def alert_rules() -> list[dict[str, Any]]:
    rules = yaml.safe_load(ALERT_RULES.read_text())
    return [rule for group in rules["groups"] for rule in group["rules"]]


@dataclass(frozen=True)
class PanelQuery:
    panel: str
    ref_id: str
    expr: str


def dashboard_queries() -> list[PanelQuery]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        PanelQuery(panel["title"], target["refId"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel["targets"]
    ]


# ---------------------------------------------------------------- a running Prometheus


def one_instance_each() -> list[Instance]:
    return [Instance(name, 0) for name in SERVICE_NAMES]


def write_scrape_targets(settings: Settings, instances: list[Instance]) -> Path:
    """The file_sd file deploy/prometheus.sh points Prometheus at, as the supervisor writes it
    for the instances it runs (the test stack runs the services without one)."""
    path = settings.run_dir / TARGETS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, json.dumps(prometheus_targets(settings, instances), indent=1) + "\n")
    return path


@dataclass(frozen=True)
class PrometheusAPI:
    """Prometheus' HTTP API (``/api/v1``) on 127.0.0.1."""

    port: int

    def get(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        body = json.loads(urllib.request.urlopen(url, timeout=10).read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector of ``expr`` now: ``[{"metric": {...}, "value": [t, "v"]}]``."""
        data = self.get("query", query=expr)
        assert data["resultType"] == "vector", data
        return data["result"]

    def active_targets(self) -> list[dict[str, Any]]:
        return self.get("targets", state="active")["activeTargets"]

    def rules(self) -> list[dict[str, Any]]:
        return [rule for group in self.get("rules")["groups"] for rule in group["rules"]]
