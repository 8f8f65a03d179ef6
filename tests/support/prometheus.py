"""Reading a service's /metrics in tests, with prometheus_client's own text parser."""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families


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
