"""Transient or poison (shared/retry.py): the table of failures, the backoff, the outage log."""

from __future__ import annotations

import asyncio
import errno
import logging

import asyncpg
import pytest
from aiokafka import errors as kafka_errors
from asyncpg.exceptions import _base as pg_base
from minio.error import S3Error
from urllib3 import exceptions as http_errors

from services.parser.parse import ReplayParseError
from services.parser.workers import WorkerTimeout
from shared.events import EventDecodeError
from shared.retry import (
    OutageLog,
    RateLimit,
    RetryPolicy,
    Stopped,
    is_transient,
    retry_transient,
    sleep_backoff,
)
from shared.storage import BlobStoreUnavailable


def _s3(code: str) -> S3Error:
    return S3Error(None, code, "message", "resource", "request", "host")  # type: ignore[arg-type]


TRANSIENT = [
    ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed ('127.0.0.1', 5433)"),
    ConnectionResetError(errno.ECONNRESET, "reset by peer"),
    BrokenPipeError(errno.EPIPE, "broken pipe"),
    TimeoutError(),
    OSError(errno.ENOSPC, "No space left on device"),
    OSError(errno.EHOSTUNREACH, "No route to host"),
    OSError("Multiple exceptions: [Errno 111] Connect call failed"),  # asyncpg, several hosts
    asyncpg.CannotConnectNowError("the database system is starting up"),
    asyncpg.TooManyConnectionsError("sorry, too many clients already"),
    asyncpg.AdminShutdownError("terminating connection due to administrator command"),
    asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
    asyncpg.InterfaceError("connection is closed"),
    asyncpg.SerializationError("could not serialize access"),
    asyncpg.DeadlockDetectedError("deadlock detected"),
    kafka_errors.KafkaConnectionError("Unable to bootstrap from [('127.0.0.1', 9092)]"),
    kafka_errors.KafkaTimeoutError(),
    kafka_errors.NodeNotReadyError(),
    kafka_errors.RequestTimedOutError(),
    kafka_errors.NoBrokersAvailable(),
    kafka_errors.NotLeaderForPartitionError(),
    kafka_errors.LeaderNotAvailableError(),
    kafka_errors.CoordinatorNotAvailableError(),
    kafka_errors.NotEnoughReplicasError(),
    http_errors.MaxRetryError(None, "/bucket", "connection refused"),  # type: ignore[arg-type]
    http_errors.NewConnectionError(None, "refused"),  # type: ignore[arg-type]
    http_errors.ReadTimeoutError(None, "/bucket", "read timed out"),  # type: ignore[arg-type]
    http_errors.ProtocolError("Connection aborted."),
    _s3("SlowDown"),
    BlobStoreUnavailable("cannot reach s3://blobs/frames/ab.npz: connection refused"),
    _s3("ServiceUnavailable"),
    ExceptionGroup("tasks", [ValueError("x"), ConnectionRefusedError()]),
]

POISON = [
    ValueError("bad features"),
    KeyError("players"),
    TypeError("unsupported operand"),
    AssertionError(),
    RuntimeError("onnxruntime: invalid input shape"),
    ZeroDivisionError(),
    FileNotFoundError(errno.ENOENT, "No such file", "/blobs/frames/ab.npz"),
    IsADirectoryError(errno.EISDIR, "Is a directory"),
    PermissionError(errno.EACCES, "Permission denied"),
    OSError(errno.ENOENT, "gone"),
    EventDecodeError("not valid JSON"),
    ReplayParseError("CRC mismatch"),
    WorkerTimeout("parse took longer than 60 s"),  # raised from a TimeoutError: still the replay's
    asyncpg.UniqueViolationError("duplicate key"),
    asyncpg.ForeignKeyViolationError("violates foreign key"),
    asyncpg.CheckViolationError("violates check constraint"),
    asyncpg.UndefinedTableError("relation does not exist"),
    asyncpg.exceptions.DataError("invalid input syntax"),
    pg_base.DataError("invalid input for query argument $1"),
    kafka_errors.MessageSizeTooLargeError(),
    kafka_errors.ProducerFenced(),
    kafka_errors.IllegalStateError("not subscribed"),
    _s3("NoSuchKey"),
    _s3("AccessDenied"),
    ExceptionGroup("tasks", [ValueError("x"), KeyError("y")]),
]


@pytest.mark.parametrize("error", TRANSIENT, ids=lambda e: f"{type(e).__name__}")
def test_a_dependency_down_or_slow_is_transient(error: BaseException):
    assert is_transient(error)


@pytest.mark.parametrize("error", POISON, ids=lambda e: f"{type(e).__name__}")
def test_a_failure_of_the_message_itself_is_not_transient(error: BaseException):
    assert not is_transient(error)


def test_worker_timeout_chained_from_a_timeout_stays_the_replays_fault():
    try:
        try:
            raise TimeoutError
        except TimeoutError as inner:
            raise WorkerTimeout("took too long") from inner
    except WorkerTimeout as error:
        assert not is_transient(error)


def test_the_retry_backoff_doubles_from_the_base_up_to_the_cap_with_jitter():
    policy = RetryPolicy(base_seconds=0.5, max_seconds=10.0)
    steps = [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0, 10.0, 10.0]
    runs = [[b.next_delay() for _ in steps] for b in (policy.backoff() for _ in range(200))]
    for n, step in enumerate(steps):
        drawn = [run[n] for run in runs]
        assert all(step / 2 <= d <= step for d in drawn), "between half a step and a step"
        assert len({round(d, 9) for d in drawn}) > 150, "jittered: no two services in step"
    assert max(max(run) for run in runs) <= 10.0, "capped, however many attempts"


def test_the_backoff_restarts_from_the_base_once_reset():
    backoff = RetryPolicy(base_seconds=0.5, max_seconds=10.0).backoff()
    for _ in range(12):
        backoff.next_delay()
    backoff.reset()
    assert backoff.next_delay() <= 0.5


async def test_a_backoff_wait_ends_early_when_stopped():
    stop = asyncio.Event()
    stop.set()
    started = asyncio.get_running_loop().time()
    await sleep_backoff(RetryPolicy(30.0, 30.0).backoff(), stop)
    assert asyncio.get_running_loop().time() - started < 1.0


def test_an_outage_is_logged_once_then_now_and_then_then_when_over(caplog):
    now = [0.0]
    outage = OutageLog(
        logging.getLogger("test.outage"), "Postgres", every=30.0, clock=lambda: now[0]
    )
    with caplog.at_level(logging.INFO, logger="test.outage"):
        for tenth in range(601):  # a failure every 0.1 s for 60 s
            now[0] = tenth / 10
            outage.failed(ConnectionRefusedError("refused"))
        outage.recovered()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4, lines
    assert "retrying with backoff" in lines[0]
    assert all("still waiting" in line for line in lines[1:3])
    assert "back after 60.0 s (601 tries)" in lines[3]


def test_rate_limit_holds_back_a_flood_of_one_library_message_and_says_so():
    now = [0.0]
    limit = RateLimit(("aiokafka", "asyncpg"), per_seconds=10.0, burst=3, clock=lambda: now[0])

    def record(name: str, msg: str, error: BaseException | None = None) -> logging.LogRecord:
        exc_info = (type(error), error, None) if error else None
        return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, None, exc_info)

    passed = sum(limit.filter(record("aiokafka.conn", "Unable to connect")) for _ in range(1000))
    assert passed == 3
    assert all(limit.filter(record("scorer", "scored")) for _ in range(100)), "others pass"
    now[0] = 10.0
    late = record("aiokafka.conn", "Unable to connect")
    assert limit.filter(late) and "(997 like it held back)" in late.getMessage()
    pool = record("asyncpg.pool", "Failed to restore", ConnectionRefusedError("refused 100%"))
    assert limit.filter(pool)
    assert pool.exc_info is None, "a library's traceback becomes one line"
    assert pool.getMessage() == "Failed to restore: ConnectionRefusedError: refused 100%"


async def test_retry_transient_waits_out_an_outage_and_raises_poison_at_once():
    calls = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 4:
            raise ConnectionRefusedError("refused")
        return "done"

    policy = RetryPolicy(base_seconds=0.01, max_seconds=0.02)
    log = logging.getLogger("test.retry")
    assert await retry_transient(flaky, "flaky", policy, log) == "done"
    assert len(calls) == 4

    async def bad() -> None:
        calls.append(1)
        raise ValueError("bad")

    calls.clear()
    with pytest.raises(ValueError):
        await retry_transient(bad, "bad", policy, log)
    assert len(calls) == 1

    async def down() -> None:
        raise ConnectionRefusedError("refused")

    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.1, stop.set)
    with pytest.raises(Stopped):
        await retry_transient(down, "down", policy, log, stop)


async def test_a_command_gives_up_on_a_dependency_that_is_down():
    calls = []

    async def down() -> None:
        calls.append(1)
        raise ConnectionRefusedError("refused")

    policy = RetryPolicy(base_seconds=0.01, max_seconds=0.02, attempts=2)
    with pytest.raises(ConnectionRefusedError):
        await retry_transient(down, "down", policy, logging.getLogger("test.retry"))
    assert len(calls) == 2
