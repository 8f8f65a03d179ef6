"""A whole stack under a supervisor, for fault injection: Kafka and Postgres from the deploy
scripts, the services from ``rlimpact supervise``, all on the integration tests' ports.

Everything it starts is found again by pid: the deploy scripts' own pid files for Kafka and
Postgres, the supervisor's ``run/<service>.pid`` for each service. ``stop`` ends the supervisor
(which stops its children), then Kafka and Postgres, and returns every process still tied to
the data dir (none, when all went well).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from services.cli import instances
from services.ingestor.s3 import Bucket
from shared import process
from shared.settings import REPO_ROOT, SERVICE_NAMES, Settings
from tests.integration.conftest import TEST_PORTS, stack_env, wait_for
from tests.support.prometheus import scrape, total

START_SECONDS = 180.0
SUPERVISOR_STOP_SECONDS = 60.0


def chaos_env(data_dir: Path, blob_bucket: str | None = None) -> dict[str, str]:
    """The environment of the stack and of every service it runs: the integration tests',
    with blobs in the S3 bucket ``blob_bucket`` (MinIO) when one is given."""
    blobs = {"RLIMPACT_BLOB_STORE": "s3", "RLIMPACT_BLOB_BUCKET": blob_bucket}
    return {
        **stack_env(data_dir),
        # A replay stranded by a fault is re-driven within seconds, not the default minutes,
        # so that the suite stays short; the reconciler itself is what is tested.
        "RLIMPACT_RECONCILE_INTERVAL_SECONDS": "5",
        "RLIMPACT_RECONCILE_AFTER_SECONDS": "30",
        **(blobs if blob_bucket else {}),
    }


def chaos_settings(data_dir: Path) -> Settings:
    """What this side needs to know of the stack: its ports and folders."""
    return Settings(
        data_dir=data_dir,
        kafka_bootstrap=f"127.0.0.1:{TEST_PORTS['RLIMPACT_KAFKA_PORT']}",
        pg_port=int(TEST_PORTS["RLIMPACT_PG_PORT"]),
        metrics_base_port=int(TEST_PORTS["RLIMPACT_METRICS_BASE_PORT"]),
        s3_endpoint=TEST_PORTS["RLIMPACT_S3_ENDPOINT"],
    )


def processes_of(data_dir: Path) -> list[tuple[int, str]]:
    """Every process (pid, command line) whose command line names ``data_dir`` or whose
    environment sets ``RLIMPACT_DATA_DIR`` to it: the stack's servers, services, workers."""
    marker = str(data_dir).encode()
    env_marker = b"RLIMPACT_DATA_DIR=" + marker
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if marker in cmdline or env_marker in environ.split(b"\0"):
            found.append((int(entry.name), cmdline.replace(b"\0", b" ").decode(errors="replace")))
    return found


@dataclass
class ChaosStack:
    data_dir: Path
    env: dict[str, str]
    settings: Settings
    services: tuple[str, ...]
    scale: Mapping[str, int] = field(default_factory=dict)  # instances, where more than one
    blob_bucket: str | None = None  # blobs in this bucket of a MinIO the stack runs
    supervisor: subprocess.Popen[bytes] | None = None

    @classmethod
    def fresh(
        cls,
        data_dir: Path,
        services: tuple[str, ...] = SERVICE_NAMES,
        scale: Mapping[str, int] | None = None,
        blob_bucket: str | None = None,
    ) -> ChaosStack:
        """A new, empty data dir (anything left there by an interrupted run is stopped)."""
        env, settings = chaos_env(data_dir, blob_bucket), chaos_settings(data_dir)
        stack = cls(data_dir, env, settings, services, dict(scale or {}), blob_bucket)
        if data_dir.exists():
            stack.deploy("stack", "stop", check=False)
            stack.deploy("minio", "stop", check=False)
            shutil.rmtree(data_dir)
        (data_dir / "logs").mkdir(parents=True)
        return stack

    # ------------------------------------------------------------ starting and stopping

    async def start(self) -> None:
        """Kafka, Postgres (and MinIO with its bucket), then the supervisor; returns once every
        service instance is up."""
        self.deploy("stack", "start")
        if self.blob_bucket:
            self.deploy("minio", "start")
            Bucket(self.settings, self.blob_bucket).create()
        scale = ",".join(f"{name}={count}" for name, count in self.scale.items())
        log = (self.data_dir / "logs" / "supervisor.log").open("ab")
        self.supervisor = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "services.cli",
                "supervise",
                "--services",
                ",".join(self.services),
                *(["--scale", scale] if scale else []),
            ],
            env=self.env,
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

        async def all_up() -> bool:
            if self.supervisor is not None and self.supervisor.poll() is not None:
                raise AssertionError(f"the supervisor exited:\n{self.log('supervisor')[-3000:]}")
            return not await self.down_services()

        await wait_for(all_up, START_SECONDS, "every service to start")

    def stop(self) -> list[tuple[int, str]]:
        """Stop the supervisor (by its pid), then Kafka and Postgres; return what still runs."""
        pid = self.supervisor_pid()
        if pid is None and self.supervisor is not None and self.supervisor.poll() is None:
            pid = self.supervisor.pid  # it has not written its pid file yet
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + SUPERVISOR_STOP_SECONDS
            while time.monotonic() < deadline and process.alive(pid):
                time.sleep(0.2)
        if self.supervisor is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.supervisor.wait(timeout=5)
        self.deploy("stack", "stop", check=False)
        if self.blob_bucket:
            self.deploy("minio", "stop", check=False)
        return processes_of(self.data_dir)

    def deploy(self, script: str, command: str, check: bool = True) -> None:
        """``deploy/<script>.sh <command>``: the stack, Kafka, Postgres or MinIO."""
        subprocess.run(
            ["bash", str(REPO_ROOT / "deploy" / f"{script}.sh"), command],
            env=self.env,
            check=check,
            stdout=subprocess.DEVNULL,
        )

    # ------------------------------------------------------------ looking at it

    def log(self, name: str) -> str:
        path = self.data_dir / "logs" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def pid(self, service: str, instance: int = 0) -> int | None:
        """The instance's pid from the supervisor's pid file, if that process runs it."""
        return instances.service_pid(self.settings, instance_label(service, instance), service)

    def supervisor_pid(self) -> int | None:
        return instances.supervisor_pid(self.settings)

    def restarts(self) -> int:
        """Restarts of all services so far, by the supervisor's count (``supervisor.json``)."""
        state = instances.read_state(self.settings) or {"instances": []}
        return sum(instance["restarts"] for instance in state["instances"])

    async def down_services(self) -> list[str]:
        """The service instances with no live process or whose ``/metrics`` does not answer
        up."""
        return [
            instance_label(name, instance)
            for name in self.services
            for instance in range(self.scale.get(name, 1))
            if not await self._up(name, instance)
        ]

    async def _up(self, service: str, instance: int) -> bool:
        if self.pid(service, instance) is None:
            return False
        port = self.settings.metrics_port(service, instance)
        try:
            samples = await asyncio.to_thread(scrape, port)
        except (OSError, urllib.error.URLError):
            return False
        return total(samples, "rlimpact_up") == 1.0

    def kill9(self, service: str, instance: int = 0) -> int | None:
        """``kill -9`` the instance's process (by its pid file); the pid, or None if none ran."""
        pid = self.pid(service, instance)
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
        return pid


def instance_label(service: str, instance: int) -> str:
    """The supervisor's name of an instance: ``parser``, ``parser-1``…"""
    return instances.Instance(service, instance).label


def kill_all(processes: list[tuple[int, str]]) -> None:
    """SIGKILL each (pid, command line) of :func:`processes_of`: the remains of a failed run."""
    for pid, _ in processes:
        process.signal_quietly(pid, signal.SIGKILL)
