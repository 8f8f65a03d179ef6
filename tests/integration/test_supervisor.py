"""The supervisor over real services, against the test stack's Kafka and Postgres: two parser
instances and a featurizer, each serving its own /metrics; a parser killed with SIGKILL comes
back with a new pid; ``rlimpact status`` tells what runs and how often it restarted; ``rlimpact
down`` stops it all, leaving no process, not even a zombie.

The supervised services get a data dir and metrics ports of their own (so they clash with
nothing of the stack's) but join the stack's consumer groups, so they take no event twice; the
test sends them none.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator

import pytest

from services.cli.instances import pid_file, read_pid
from shared import process
from shared.settings import REPO_ROOT, SERVICE_NAMES
from tests.integration.conftest import Stack
from tests.support.processes import gone, kill_and_reap, reaping_orphans, until

pytestmark = pytest.mark.integration

SUPERVISE_ARGS = ("--services", "parser,featurizer", "--scale", "parser=2")
START_TIMEOUT = 180.0  # three Python services importing numpy on a busy 2-core machine


class Supervised:
    def __init__(self, stack: Stack) -> None:
        self.data_dir = stack.data_dir / "supervised"
        # Instances 3 and 4 of the stack's port blocks: no stack service is there.
        base = stack.settings.metrics_base_port + 3 * len(SERVICE_NAMES)
        self.env = {
            **stack.env,
            "RLIMPACT_DATA_DIR": str(self.data_dir),
            "RLIMPACT_METRICS_BASE_PORT": str(base),
            "RLIMPACT_SUPERVISOR_BACKOFF_INITIAL_SECONDS": "0.2",
            "RLIMPACT_PARSER_WORKERS": "1",
        }
        self.run_dir = self.data_dir / "run"
        self.popen: subprocess.Popen[bytes] | None = None
        self.view = dataclasses.replace(stack, env=self.env)

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = (self.data_dir / "supervisor.out").open("ab")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "supervise", *SUPERVISE_ARGS],
            env=self.env,
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``rlimpact …`` in the supervised services' environment."""
        return self.view.cli(*args)

    def pid(self, label: str) -> int | None:
        return read_pid(pid_file(self.run_dir, label))

    def state(self) -> dict:
        return json.loads((self.run_dir / "supervisor.json").read_text())

    def up(self, label: str) -> bool:
        """The instance answers on its own metrics port."""
        item = next(i for i in self.state()["instances"] if i["label"] == label)
        url = f"http://127.0.0.1:{item['metrics_port']}/metrics"
        try:
            body = urllib.request.urlopen(url, timeout=2).read().decode()
        except OSError:
            return False
        return f'rlimpact_up{{service="{item["service"]}"}} 1.0' in body

    def descendants(self) -> set[int]:
        assert self.popen is not None
        found, todo = set(), [self.popen.pid]
        while todo:
            kids = process.children(todo.pop())
            found |= set(kids)
            todo += kids
        return found

    def log(self) -> str:
        return (self.data_dir / "supervisor.out").read_text(errors="replace")


@pytest.fixture
def supervised(stack: Stack) -> Iterator[Supervised]:
    sup = Supervised(stack)
    with reaping_orphans():
        try:
            yield sup
        finally:
            if sup.popen is not None:
                left = sup.descendants() if sup.popen.poll() is None else set()
                sup.popen.kill()
                sup.popen.wait(timeout=30)
                kill_and_reap(left)


def test_supervised_services_restart_and_stop_without_a_trace(supervised: Supervised):
    sup = supervised
    sup.start()
    labels = ["parser", "parser-1", "featurizer"]
    until(lambda: (sup.run_dir / "supervisor.json").exists(), "the supervisor", START_TIMEOUT)
    until(lambda: all(sup.up(label) for label in labels), "three instances up", START_TIMEOUT)
    assert sup.pid("supervisor") == sup.popen.pid  # type: ignore[union-attr]
    targets = json.loads((sup.run_dir / "prometheus-targets.json").read_text())
    assert len({t["targets"][0] for t in targets}) == 3

    victim = sup.pid("parser-1")
    assert victim is not None and process.runs_module(process.cmdline(victim), "services.parser")
    os.kill(victim, signal.SIGKILL)
    until(lambda: sup.pid("parser-1") not in (None, victim), "parser-1 to restart")
    until(lambda: sup.up("parser-1"), "the new parser-1 on its metrics port", START_TIMEOUT)
    assert gone(victim), "the killed parser was reaped"
    assert [i["restarts"] for i in sup.state()["instances"]] == [0, 1, 0]
    assert "parser-1 (pid" in sup.log() and "was killed by SIGKILL" in sup.log()

    status = sup.cli("status")
    assert status.returncode == 0, status.stderr
    assert f"parser-1      up, pid {sup.pid('parser-1')}; restarts 1" in status.stdout
    assert f"parser        up, pid {sup.pid('parser')}; restarts 0" in status.stdout

    everything = sup.descendants() | {sup.popen.pid}  # type: ignore[union-attr]
    down = sup.cli("down")
    assert down.returncode == 0 and "stopped" in down.stdout, down.stdout + down.stderr
    assert sup.popen.wait(timeout=60) == 0  # type: ignore[union-attr]
    assert [pid for pid in everything if not gone(pid)] == []
    assert not list(sup.run_dir.glob("*.pid"))
    assert "supervisor: not running" in sup.cli("status").stdout
    for label in labels:
        assert "stopped" in (sup.data_dir / "logs" / f"{label}.log").read_text()
