"""A private stack for the integration tests: its own Kafka, Postgres, data dir and ports.

The stack is started with the project's own ``deploy/stack.sh`` (real Kafka from Maven Central
jars, Debian's Postgres), so the tests run on exactly what users run.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from services.parser.parse import parse_replay_file
from shared.events import Event, EventDecodeError, Topic, decode
from shared.frames import ParsedReplay
from shared.kafka.dead_letters import where
from shared.settings import REPO_ROOT, SERVICE_NAMES, Settings
from tests.support.prometheus import PrometheusAPI, one_instance_each, write_scrape_targets

if TYPE_CHECKING:
    from tests.integration.live_support import LiveTopics

T = TypeVar("T")
E = TypeVar("E", bound=Event)

# Several checkouts (or developers) can run the suite side by side with distinct offsets.
PORT_OFFSET = int(os.environ.get("RLIMPACT_TEST_PORT_OFFSET", "0"))
TEST_PORTS = {
    "RLIMPACT_KAFKA_PORT": str(19092 + PORT_OFFSET),
    "RLIMPACT_KAFKA_CONTROLLER_PORT": str(19093 + PORT_OFFSET),
    "RLIMPACT_PG_PORT": str(15433 + PORT_OFFSET),
    "RLIMPACT_METRICS_BASE_PORT": str(19181 + PORT_OFFSET),
    # MinIO (deploy/minio.sh), started by the tests that need it; its console takes port + 1.
    "RLIMPACT_S3_ENDPOINT": f"http://127.0.0.1:{19500 + PORT_OFFSET}",
    # Live matches: the SOS feed the bridge follows (a simulator that the live tests start),
    # the bridge's custom-plugin endpoint and token, the live page.
    "RLIMPACT_BRIDGE_SOS_URLS": f"ws://127.0.0.1:{19170 + PORT_OFFSET}",
    "RLIMPACT_BRIDGE_PLUGIN_PORT": str(19171 + PORT_OFFSET),
    "RLIMPACT_BRIDGE_PLUGIN_TOKEN": "integration-test-token",
    "RLIMPACT_BRIDGE_RECONNECT_MAX_SECONDS": "1",
    "RLIMPACT_LIVE_HTTP_PORT": str(19172 + PORT_OFFSET),
    # Prometheus (deploy/prometheus.sh), started by the tests that need it.
    "RLIMPACT_PROMETHEUS_PORT": str(19590 + PORT_OFFSET),
    "RLIMPACT_PROMETHEUS_SCRAPE_SECONDS": "1",
}


@dataclass
class Stack:
    env: dict[str, str]
    settings: Settings
    data_dir: Path
    processes: dict[str, subprocess.Popen[bytes]]

    def log(self, service: str) -> str:
        return (self.data_dir / "logs" / f"{service}.log").read_text(errors="replace")

    def cli(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """``rlimpact ARGS`` with the stack's environment, ``env`` added."""
        return subprocess.run(
            [sys.executable, "-m", "services.cli", *args],
            env={**self.env, **env},
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )


def stack_env(data_dir: Path) -> dict[str, str]:
    """The environment of a test stack in ``data_dir``, and of every process it runs."""
    return {
        **os.environ,
        **TEST_PORTS,
        "RLIMPACT_DATA_DIR": str(data_dir),
        "RLIMPACT_KAFKA_BOOTSTRAP": f"127.0.0.1:{TEST_PORTS['RLIMPACT_KAFKA_PORT']}",
        # The jars are fetched once into the default data dir and shared.
        "RLIMPACT_KAFKA_LIB_DIR": os.environ.get(
            "RLIMPACT_KAFKA_LIB_DIR", str(REPO_ROOT / ".rlimpact" / "kafka-lib")
        ),
        "RLIMPACT_WATCH_INTERVAL_SECONDS": "0.5",
        "RLIMPACT_MODEL_POLL_SECONDS": "0.5",
        "PYTHONUNBUFFERED": "1",
    }


def _deploy(script: str, command: str, env: dict[str, str], check: bool = True) -> None:
    subprocess.run(["bash", str(REPO_ROOT / "deploy" / script), command], env=env, check=check)


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    # Not in pytest's tmp dir: that is private to root, and Postgres runs as user postgres.
    data_dir = Path(
        os.environ.get(
            "RLIMPACT_TEST_DATA_DIR", REPO_ROOT / ".rlimpact" / f"test-stack-{PORT_OFFSET}"
        )
    )
    env = stack_env(data_dir)
    if data_dir.exists():  # left over from an interrupted run
        _deploy("prometheus.sh", "stop", env, check=False)
        _deploy("stack.sh", "stop", env, check=False)
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True)
    settings = Settings.model_validate(
        {
            k.removeprefix("RLIMPACT_").lower(): v
            for k, v in env.items()
            if k.startswith("RLIMPACT_")
        }
    )
    (data_dir / "logs").mkdir()
    processes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        _deploy("stack.sh", "start", env)
        for name in SERVICE_NAMES:
            processes[name] = subprocess.Popen(
                [sys.executable, "-m", f"services.{name}"],
                env=env,
                cwd=REPO_ROOT,
                stdout=(data_dir / "logs" / f"{name}.log").open("wb"),
                stderr=subprocess.STDOUT,
            )
        yield Stack(env, settings, data_dir, processes)
    finally:
        for process in processes.values():
            process.terminate()
        for process in processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        _deploy("stack.sh", "stop", env, check=False)


@pytest.fixture(scope="session")
def prometheus(stack: Stack) -> Iterator[PrometheusAPI]:
    """Debian's Prometheus (deploy/prometheus.sh) scraping every service of the stack each
    second, with the alert rules; its data under the stack's data dir; stopped by its pid."""
    write_scrape_targets(stack.settings, one_instance_each())
    _deploy("prometheus.sh", "start", stack.env)
    try:
        yield PrometheusAPI(int(stack.env["RLIMPACT_PROMETHEUS_PORT"]))
    finally:
        _deploy("prometheus.sh", "stop", stack.env, check=False)


@asynccontextmanager
async def events_on(stack: Stack, topic: Topic, event_type: type[E]) -> AsyncIterator[list[E]]:
    """A list that fills, in the background, with every event on ``topic`` from its start."""
    consumer = AIOKafkaConsumer(
        topic.name,
        bootstrap_servers=stack.settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        group_id=None,
        isolation_level="read_committed",  # what the scorer's transactions promise
    )
    await consumer.start()
    events: list[E] = []

    async def collect() -> None:
        # A record that does not decode, or a fetch that fails, is said and passed over: a
        # collector that died silently would leave the list still, and a test waiting on it
        # would time out with no clue.
        while True:
            try:
                async for record in consumer:
                    try:
                        events.append(decode(event_type, record.value))
                    except EventDecodeError as error:
                        print(f"events_on({topic.name}): skipped {where(record)}: {error}")
            except KafkaError as error:
                print(f"events_on({topic.name}): {error!r}; reading on")
                await asyncio.sleep(0.5)

    task = asyncio.create_task(collect())
    try:
        yield events
    finally:
        task.cancel()
        await consumer.stop()


@pytest.fixture(scope="session")
def minio(stack: Stack) -> Iterator[None]:
    """MinIO (deploy/minio.sh) on the stack's S3 port, for the tests that need it."""
    script = str(REPO_ROOT / "deploy" / "minio.sh")
    subprocess.run(["bash", script, "start"], env=stack.env, check=True)
    try:
        yield
    finally:
        subprocess.run(["bash", script, "stop"], env=stack.env, check=False)


def service_up(stack: Stack, name: str) -> bool:
    url = f"http://127.0.0.1:{stack.settings.metrics_port(name)}/metrics"
    try:
        body = urllib.request.urlopen(url, timeout=2).read().decode()
    except OSError:
        return False
    return f'rlimpact_up{{service="{name}"}} 1.0' in body


def stop_service(stack: Stack, name: str, clean: bool = True) -> None:
    """SIGTERM; a running service finishes what it does and exits 0 (``clean``)."""
    process = stack.processes[name]
    process.terminate()
    code = process.wait(timeout=30)
    assert code == 0 or not clean, f"exit status {code}:\n{stack.log(name)[-3000:]}"


async def restart_service(stack: Stack, name: str, clean: bool = True, **env: str) -> None:
    """Stop the running service (if it runs) and start another with ``env`` added."""
    if stack.processes[name].poll() is None:
        stop_service(stack, name, clean)
    log = (stack.data_dir / "logs" / f"{name}.log").open("ab")
    stack.processes[name] = subprocess.Popen(
        [sys.executable, "-m", f"services.{name}"],
        env={**stack.env, **env},
        cwd=REPO_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    async def up() -> bool:
        return service_up(stack, name)

    await wait_for(up, 60, f"the {name} to start")


async def connect_pg(stack: Stack) -> asyncpg.Connection:
    async def connect() -> asyncpg.Connection | None:
        try:
            return await asyncpg.connect(stack.settings.pg_dsn)
        except (OSError, asyncpg.PostgresError):
            return None

    return await wait_for(connect, 60, "Postgres")


@pytest.fixture(scope="module")
async def pg(stack: Stack) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the stack's Postgres, for the checks of one test module."""
    conn = await connect_pg(stack)
    yield conn
    await conn.close()


async def wait_for(
    condition: Callable[[], Awaitable[T]], timeout: float, what: str, interval: float = 0.5
) -> T:
    """Poll ``condition()`` until it returns something truthy; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := await condition():
            return result
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@pytest.fixture(scope="module")
async def live(stack: Stack) -> AsyncIterator[LiveTopics]:
    """Everything on the live topics during a module's live tests (test_live*.py)."""
    from tests.integration.live_support import live_topics  # it imports this module

    async with live_topics(stack) as topics:
        yield topics


@pytest.fixture(scope="module")
def parsed(standard_replay) -> ParsedReplay:
    """The standard replay parsed at the live feed's rate, for the live tests."""
    from tests.integration.live_support import FPS

    return parse_replay_file(standard_replay.path, standard_replay.sha256, fps=FPS)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """test_metrics.py runs last: it checks every service's metrics after the other tests.
    test_hot_reload.py runs just before it: it promotes models, which the others do not expect.
    """
    items.sort(key=lambda item: (item.path.name == "test_metrics.py", _runs_late(item)))


def _runs_late(item: pytest.Item) -> bool:
    return item.path.name == "test_hot_reload.py"
