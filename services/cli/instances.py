"""What ``rlimpact supervise`` runs (the instances of each service, their command and
environment) and its files in ``$DATA_DIR/run/`` (pid files, state, Prometheus targets)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared import process
from shared.settings import SERVICE_NAMES, Settings

SUPERVISOR = "supervisor"
STATE_FILE = "supervisor.json"
TARGETS_FILE = "prometheus-targets.json"
# The bridge follows every SOS feed it is given: a second instance would forward each frame
# twice, and would want the same plugin port.
SINGLE_INSTANCE = ("bridge",)


# ---------------------------------------------------------------- what runs


@dataclass(frozen=True)
class Instance:
    service: str
    index: int

    @property
    def label(self) -> str:
        """Its name in logs, pid files and status: ``parser`` for instance 0, ``parser-1``…"""
        return self.service if self.index == 0 else f"{self.service}-{self.index}"

    @property
    def module(self) -> str:
        return f"services.{self.service}"


def parse_services(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if unknown := [name for name in names if name not in SERVICE_NAMES]:
        raise argparse.ArgumentTypeError(
            f"unknown service {', '.join(unknown)}; the services are {', '.join(SERVICE_NAMES)}"
        )
    if not names:
        raise argparse.ArgumentTypeError("no service named")
    return names


def parse_scale(text: str) -> dict[str, int]:
    """``parser=2,scorer=2`` → ``{"parser": 2, "scorer": 2}``."""
    scale: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, count = item.partition("=")
        if not sep or not count.strip().isdigit() or int(count) < 1:
            raise argparse.ArgumentTypeError(f"{item!r}: expected SERVICE=N with N ≥ 1")
        scale[parse_services(name)[0]] = int(count)
    return scale


def plan(services: list[str], scale: dict[str, int]) -> list[Instance]:
    """Every instance to run, in the order of ``SERVICE_NAMES``."""
    if missing := [name for name in scale if name not in services]:
        raise ValueError(f"--scale names {', '.join(missing)}, which --services leaves out")
    for name in SINGLE_INSTANCE:
        if scale.get(name, 1) > 1:
            raise ValueError(f"the {name} runs as one instance (it follows every live feed)")
    return [
        Instance(name, index)
        for name in SERVICE_NAMES
        if name in services
        for index in range(scale.get(name, 1))
    ]


def instance_environment(settings: Settings, instance: Instance) -> dict[str, str]:
    """What an instance's environment adds to the supervisor's: its number, and ports of its
    own where a service listens on a configured port (instance i of live: the page on +i)."""
    env = {"RLIMPACT_INSTANCE": str(instance.index)}
    if instance.service == "live" and instance.index:
        env["RLIMPACT_LIVE_HTTP_PORT"] = str(settings.live_http_port + instance.index)
    return env


def service_command(instance: Instance) -> list[str]:
    return [sys.executable, "-m", instance.module]


# ---------------------------------------------------------------- files in run/


def pid_file(run_dir: Path, label: str) -> Path:
    return run_dir / f"{label}.pid"


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def is_supervisor(args: list[str]) -> bool:
    """The arguments of ``python -m services.cli supervise`` or ``rlimpact supervise``."""
    started = process.runs_module(args, "services.cli") or any(
        Path(arg).name == "rlimpact" for arg in args[:2]
    )
    return started and "supervise" in args


def live_pid(run_dir: Path, label: str, is_it: Callable[[list[str]], bool]) -> int | None:
    """The pid in ``<label>.pid`` if that process runs and ``is_it(its arguments)``; else None
    (no file, a dead process, a zombie, or a pid reused by another program)."""
    pid = read_pid(pid_file(run_dir, label))
    if pid is None or not process.alive(pid) or not is_it(process.cmdline(pid)):
        return None
    return pid


def supervisor_pid(settings: Settings) -> int | None:
    return live_pid(settings.run_dir, SUPERVISOR, is_supervisor)


def service_pid(settings: Settings, label: str, service: str) -> int | None:
    return live_pid(
        settings.run_dir, label, lambda args: process.runs_module(args, f"services.{service}")
    )


def service_pid_files(settings: Settings) -> list[tuple[Path, str, str]]:
    """(pid file, label, service) of every service instance's pid file in ``run/``."""
    found = []
    for path in sorted(settings.run_dir.glob("*.pid")):
        name, _, index = path.stem.rpartition("-")
        service = name if index.isdigit() else path.stem
        if service in SERVICE_NAMES:
            found.append((path, path.stem, service))
    return found


def write_atomically(path: Path, text: str) -> None:
    """Readers (``rlimpact status``, Prometheus) never see a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def prometheus_targets(settings: Settings, instances: list[Instance]) -> list[dict[str, Any]]:
    """One Prometheus ``file_sd`` target group per instance: its ``/metrics`` address and the
    labels ``service`` and ``replica`` (``instance`` is Prometheus's own label)."""
    host = "127.0.0.1" if settings.metrics_host in ("0.0.0.0", "") else settings.metrics_host
    return [
        {
            "targets": [f"{host}:{settings.metrics_port(item.service, item.index)}"],
            "labels": {"service": item.service, "replica": str(item.index)},
        }
        for item in instances
    ]


def read_state(settings: Settings) -> dict[str, Any] | None:
    """The running supervisor's ``supervisor.json``, or None when no supervisor runs."""
    if supervisor_pid(settings) is None:
        return None
    try:
        return json.loads((settings.run_dir / STATE_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
