"""The supervisor: what it runs, its restart delays, pid checks, and real child processes that
it restarts after kill -9, stops, reaps, and never leaves behind (orphans included)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from services.cli.instances import (
    Instance,
    instance_environment,
    is_supervisor,
    live_pid,
    parse_scale,
    parse_services,
    pid_file,
    plan,
    prometheus_targets,
    read_pid,
)
from services.cli.stack import service_lines
from services.cli.supervisor import Child, describe_exit
from shared import process
from shared.backoff import Backoff
from shared.settings import REPO_ROOT, SERVICE_NAMES, Settings
from tests.support.processes import gone, kill_and_reap, reaping_orphans, until

# ---------------------------------------------------------------- what runs


def test_scale_and_services_from_the_command_line():
    assert parse_scale("parser=2, scorer=3") == {"parser": 2, "scorer": 3}
    assert parse_services("parser,scorer") == ["parser", "scorer"]
    for bad in ("parser", "parser=0", "parser=two", "nosuch=2"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_scale(bad)
    with pytest.raises(argparse.ArgumentTypeError, match="unknown service nosuch"):
        parse_services("parser,nosuch")


def test_the_plan_numbers_instances_per_service_in_service_order():
    instances = plan(["scorer", "parser"], {"parser": 2})
    assert [(i.label, i.service, i.index) for i in instances] == [
        ("parser", "parser", 0),
        ("parser-1", "parser", 1),
        ("scorer", "scorer", 0),
    ]
    assert [i.label for i in plan(list(SERVICE_NAMES), {})] == list(SERVICE_NAMES)
    with pytest.raises(ValueError, match="leaves out"):
        plan(["parser"], {"scorer": 2})
    with pytest.raises(ValueError, match="bridge runs as one instance"):
        plan(["bridge"], {"bridge": 2})


def test_every_instance_of_every_service_has_a_metrics_port_of_its_own():
    settings = Settings(metrics_base_port=9181)
    ports = [settings.metrics_port(name, i) for name in SERVICE_NAMES for i in range(4)]
    assert len(set(ports)) == len(ports)
    assert settings.metrics_port("ingestor") == 9181  # instance 0: the ports of old
    assert settings.metrics_port("live") == 9187
    assert Settings(instance=2).metrics_port("parser") == 9181 + 2 * len(SERVICE_NAMES) + 1


def test_instances_get_their_number_and_ports_of_their_own():
    settings = Settings(live_http_port=8765)
    assert instance_environment(settings, Instance("parser", 1)) == {"RLIMPACT_INSTANCE": "1"}
    assert instance_environment(settings, Instance("live", 0)) == {"RLIMPACT_INSTANCE": "0"}
    assert instance_environment(settings, Instance("live", 2))["RLIMPACT_LIVE_HTTP_PORT"] == "8767"


def test_prometheus_targets_are_a_file_sd_list_of_every_instance():
    settings = Settings(metrics_host="0.0.0.0", metrics_base_port=9181)
    targets = prometheus_targets(settings, plan(["parser", "scorer"], {"parser": 2}))
    assert targets == [
        {"targets": ["127.0.0.1:9182"], "labels": {"service": "parser", "replica": "0"}},
        {"targets": ["127.0.0.1:9189"], "labels": {"service": "parser", "replica": "1"}},
        {"targets": ["127.0.0.1:9185"], "labels": {"service": "scorer", "replica": "0"}},
    ]


# ---------------------------------------------------------------- restart delays


def _child(initial: float = 0.5, maximum: float = 4.0, healthy: float = 60.0) -> Child:
    return Child(Instance("parser", 0), Backoff(maximum, initial), healthy)


def test_restart_delays_double_with_jitter_up_to_the_ceiling():
    child = _child()
    delays = []
    for now in range(8):  # each run ends a second after it started: never healthy
        child.started_at = float(now)
        delays.append(child.exited(1, now + 1.0))
    ceilings = [0.5, 1, 2, 4, 4, 4, 4, 4]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True)), delays
    assert child.last_exit == 1 and child.restart_at == pytest.approx(8.0 + delays[-1])


def test_a_healthy_run_resets_the_delay():
    child = _child(healthy=60.0)
    for _ in range(5):
        child.exited(1, child.started_at + 1.0)
    child.started_at = 100.0
    assert child.exited(-9, 161.0) <= 0.5
    assert child.exited(-9, 162.0) <= 1.0


def test_a_child_is_due_once_its_delay_is_over_and_counts_its_restarts():
    child = _child()
    assert child.due(0.0)  # a new child starts at once
    child.started(subprocess.Popen(["true"]), 0.0)
    child.popen.wait()  # type: ignore[union-attr]
    assert not child.due(1e9) and child.restarts == 0
    delay = child.exited(0, 1.0)
    assert not child.due(1.0 + delay / 2) and child.due(1.0 + delay)
    child.started(subprocess.Popen(["true"]), 2.0)
    child.popen.wait()  # type: ignore[union-attr]
    assert child.restarts == 1


def test_exits_are_described():
    assert describe_exit(0) == "exited with code 0"
    assert describe_exit(3) == "exited with code 3"
    assert describe_exit(-9) == "was killed by SIGKILL"


# ---------------------------------------------------------------- pid files


def _is_parser(args: list[str]) -> bool:
    return process.runs_module(args, "services.parser")


def test_a_pid_file_counts_only_while_its_process_is_that_service(tmp_path: Path):
    # A process whose arguments read like the parser's (`… -m services.parser`), without
    # starting one: arguments after -c are only sys.argv.
    fake = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "-m", "services.parser"]
    )
    try:
        pid_file(tmp_path, "parser").write_text(f"{fake.pid}\n")
        assert live_pid(tmp_path, "parser", _is_parser) == fake.pid
        # the same pid, but the file claims another service
        assert live_pid(tmp_path, "parser", lambda a: process.runs_module(a, "services.x")) is None
        fake.kill()
        until(lambda: process.state(fake.pid) == "Z", "the killed process to be a zombie")
        assert live_pid(tmp_path, "parser", _is_parser) is None  # a zombie is not running
    finally:
        fake.kill()
        fake.wait()
    assert live_pid(tmp_path, "parser", _is_parser) is None  # gone
    pid_file(tmp_path, "parser").write_text(f"{os.getpid()}\n")  # a reused pid: pytest
    assert live_pid(tmp_path, "parser", _is_parser) is None
    pid_file(tmp_path, "parser").write_text("garbage")
    assert live_pid(tmp_path, "parser", _is_parser) is None
    assert live_pid(tmp_path, "nothing", _is_parser) is None


def test_status_without_a_supervisor_tells_running_services_from_stale_pid_files(tmp_path):
    settings = Settings(data_dir=tmp_path)
    settings.run_dir.mkdir()
    fake = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "-m", "services.parser"]
    )
    try:
        pid_file(settings.run_dir, "parser-1").write_text(f"{fake.pid}\n")
        pid_file(settings.run_dir, "scorer").write_text(f"{fake.pid}\n")  # not a scorer
        pid_file(settings.run_dir, "supervisor").write_text(f"{fake.pid}\n")  # nor this
        assert service_lines(settings) == [
            "supervisor: not running",
            f"  parser-1      up, pid {fake.pid} (not supervised)",
            f"  scorer        down (stale pid file: pid {fake.pid})",
        ]
    finally:
        fake.kill()
        fake.wait()


def test_the_supervisor_is_recognised_by_its_arguments():
    assert is_supervisor(["/usr/bin/python3", "-m", "services.cli", "supervise", "--scale", "x"])
    assert is_supervisor(["/repo/.venv/bin/python", "/repo/.venv/bin/rlimpact", "supervise"])
    assert not is_supervisor(["/usr/bin/python3", "-m", "services.cli", "status"])
    assert not is_supervisor(["/usr/bin/python3", "-m", "services.parser"])
    assert not is_supervisor([])


# ---------------------------------------------------------------- real processes

# A stand-in service: starts a grandchild (like the parser's workers, but one that does not
# die with its parent), records both pids, then waits. With IGNORE_TERM it ignores SIGTERM.
FAKE_SERVICE = """
import os, signal, subprocess, sys, time
from pathlib import Path
label, out = sys.argv[1], Path(sys.argv[2])
if os.environ.get("IGNORE_TERM") == label:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
worker = subprocess.Popen(["sleep", "300"])
(out / f"{label}.{os.getpid()}").write_text(str(worker.pid))
time.sleep(300)
"""

DRIVER = """
import logging, sys
from services.cli.supervisor import Instance, Supervisor
from shared.settings import Settings

data_dir, fake, out = sys.argv[1:4]
logging.basicConfig(level=logging.INFO)
settings = Settings(
    data_dir=data_dir,
    supervisor_backoff_initial_seconds=0.2,
    supervisor_backoff_max_seconds=0.4,
    supervisor_stop_grace_seconds=1.5,
)
instances = [Instance("parser", 0), Instance("parser", 1), Instance("scorer", 0)]
command = lambda instance: [sys.executable, fake, instance.label, out]
sys.exit(Supervisor(settings, instances, command=command).run())
"""


class Supervised:
    """A supervisor process over three fake services, and the pids it made."""

    def __init__(self, tmp_path: Path, ignore_term: str = "") -> None:
        self.data_dir, self.out = tmp_path / "data", tmp_path / "out"
        self.out.mkdir()
        (tmp_path / "fake.py").write_text(textwrap.dedent(FAKE_SERVICE))
        (tmp_path / "driver.py").write_text(textwrap.dedent(DRIVER))
        args = [self.data_dir, tmp_path / "fake.py", self.out]
        self.popen = subprocess.Popen(
            [sys.executable, str(tmp_path / "driver.py"), *map(str, args)],
            cwd=REPO_ROOT,
            env={**os.environ, "IGNORE_TERM": ignore_term, "PYTHONPATH": str(REPO_ROOT)},
        )
        self.run_dir = self.data_dir / "run"

    def pid(self, label: str) -> int | None:
        return read_pid(pid_file(self.run_dir, label))

    def started(self) -> dict[int, int]:
        """Every service process started so far → its grandchild."""
        return {int(p.suffix[1:]): int(p.read_text()) for p in self.out.iterdir()}

    def state(self) -> dict:
        return json.loads((self.run_dir / "supervisor.json").read_text())

    def all_pids(self) -> set[int]:
        return {pid for pair in self.started().items() for pid in pair}

    def wait_all_up(self) -> None:
        until(lambda: len(self.started()) >= 3 and self.pid("scorer"), "the three services")

    def cleanup(self) -> None:
        self.popen.kill()
        self.popen.wait(timeout=10)
        kill_and_reap(self.all_pids())


@pytest.fixture
def supervised(tmp_path: Path) -> Iterator[Callable[..., Supervised]]:
    """Supervisors over fake services; whatever a failing test leaves comes back to pytest,
    a subreaper meanwhile, to be killed and reaped."""
    made: list[Supervised] = []

    def make(ignore_term: str = "") -> Supervised:
        made.append(Supervised(tmp_path, ignore_term))
        return made[-1]

    with reaping_orphans():
        yield make
        for item in made:
            item.cleanup()


def test_a_killed_child_comes_back_and_stop_leaves_nothing_behind(supervised):
    sup = supervised()
    sup.wait_all_up()
    assert sup.pid("supervisor") == sup.popen.pid
    first = sup.pid("parser-1")
    assert first is not None and process.parent(first) == sup.popen.pid
    targets = json.loads((sup.run_dir / "prometheus-targets.json").read_text())
    assert [t["labels"]["service"] for t in targets] == ["parser", "parser", "scorer"]

    os.kill(first, signal.SIGKILL)
    until(lambda: sup.pid("parser-1") not in (None, first), "parser-1 to be restarted")
    second = sup.pid("parser-1")
    assert second is not None and process.alive(second)
    assert gone(first), "the killed child was reaped"
    orphan = sup.started()[first]  # the killed child's grandchild, adopted by the supervisor
    assert process.parent(orphan) == sup.popen.pid
    until(lambda: sup.state()["instances"][1]["restarts"] == 1, "the restart in the state")
    assert [i["restarts"] for i in sup.state()["instances"]] == [0, 1, 0]
    assert sup.state()["instances"][1]["last_exit"] == -signal.SIGKILL

    pids = sup.all_pids()
    sup.popen.send_signal(signal.SIGTERM)
    assert sup.popen.wait(timeout=20) == 0
    assert [pid for pid in pids if not gone(pid)] == []
    assert not list(sup.run_dir.glob("*.pid"))
    assert process.children(sup.popen.pid) == []


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace_period(supervised):
    sup = supervised(ignore_term="scorer")
    sup.wait_all_up()
    pids = sup.all_pids()
    sup.popen.send_signal(signal.SIGINT)
    assert sup.popen.wait(timeout=20) == 0
    assert [pid for pid in pids if not gone(pid)] == []


def test_a_second_supervisor_on_the_same_data_dir_refuses_to_start(supervised):
    first = supervised()
    first.wait_all_up()
    second = subprocess.run(
        [sys.executable, "-m", "services.cli", "supervise", "--services", "parser"],
        cwd=REPO_ROOT,
        env={**os.environ, "RLIMPACT_DATA_DIR": str(first.data_dir)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 1 and "already runs" in second.stderr
    assert first.pid("supervisor") == first.popen.pid  # its pid file is left alone


def test_children_stop_when_the_supervisor_is_killed(supervised):
    sup = supervised()
    sup.wait_all_up()
    services = list(sup.started())
    os.kill(sup.popen.pid, signal.SIGKILL)
    sup.popen.wait(timeout=10)
    until(lambda: not any(process.alive(pid) for pid in services), "SIGTERM from PDEATHSIG")
