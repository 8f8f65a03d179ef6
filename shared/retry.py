"""Transient or poison: whether a failure is a dependency being down (wait and try the same
thing again) or belongs to the message itself (dead-letter it); and the backoff for waiting.

A dependency that is down or slow (Postgres, Kafka, the blob store, S3) is never blamed on the
message that was being handled when it went: the work is retried, with capped and jittered
exponential backoff, for as long as the outage lasts. The log gets one line when an outage
starts, a "still waiting" line now and then, and one when it is over.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import asyncpg
from aiokafka import errors as kafka_errors
from asyncpg.exceptions import _base as pg_errors
from minio.error import S3Error, ServerError
from urllib3 import exceptions as http_errors

from shared.backoff import Backoff, sleep_unless_stopped
from shared.storage import BlobStoreUnavailable

if TYPE_CHECKING:
    from shared.settings import Settings

T = TypeVar("T")

# Postgres SQLSTATE classes of a server that is down, busy or restarting: 08 connection
# exception, 53 insufficient resources (too many connections, disk full), 57 operator
# intervention (shutting down, starting up, statement cancelled), 58 system error (I/O),
# 40 transaction rollback (serialization failure, deadlock: the same statement may succeed).
TRANSIENT_SQLSTATE_CLASSES = frozenset({"08", "53", "57", "58", "40"})

# An OSError about a path belongs to what the message names (a blob that is not there), not to
# a dependency that is down: waiting would not make the file appear.
PATH_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, FileExistsError)
PATH_ERRNOS = frozenset(
    {errno.ENOENT, errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.ENAMETOOLONG}
)

ASYNCPG_CLIENT_ERRORS = (
    pg_errors.DataError,
    pg_errors.ClientConfigurationError,
    pg_errors.UnsupportedClientFeatureError,
    pg_errors.UnsupportedServerFeatureError,
)

TRANSIENT_KAFKA = (
    kafka_errors.KafkaConnectionError,
    kafka_errors.KafkaTimeoutError,
    kafka_errors.NodeNotReadyError,
    kafka_errors.RequestTimedOutError,
    kafka_errors.NoBrokersAvailable,
    kafka_errors.KafkaUnavailableError,
    kafka_errors.BrokerNotAvailableError,
    kafka_errors.CoordinatorNotAvailableError,
    kafka_errors.NotCoordinatorError,
    kafka_errors.CoordinatorLoadInProgressError,
    kafka_errors.ConcurrentTransactions,
)

TRANSIENT_HTTP = (
    http_errors.MaxRetryError,
    http_errors.NewConnectionError,
    http_errors.ConnectTimeoutError,
    http_errors.ReadTimeoutError,
    http_errors.ProtocolError,
)
TRANSIENT_S3_CODES = frozenset(
    {
        "SlowDown",
        "ServiceUnavailable",
        "InternalError",
        "RequestTimeout",
        "XMinioServerNotInitialized",
    }
)


def is_transient(error: BaseException) -> bool:
    """True when ``error`` says a dependency is down or slow, so the same work should be tried
    again later; False when it belongs to the work itself (bad data, a bug, a missing file)."""
    if isinstance(error, BaseExceptionGroup):
        return any(is_transient(inner) for inner in error.exceptions)
    return _is_transient_one(error)


def _is_transient_one(error: BaseException) -> bool:
    if isinstance(error, asyncpg.PostgresError):
        return (error.sqlstate or "")[:2] in TRANSIENT_SQLSTATE_CLASSES
    if isinstance(error, asyncpg.InterfaceError):
        # "connection is closed" and the like; not a value that does not fit (DataError) or a
        # configuration the client cannot work with
        return not isinstance(error, ASYNCPG_CLIENT_ERRORS)
    if isinstance(error, kafka_errors.KafkaError):
        return isinstance(error, TRANSIENT_KAFKA) or error.retriable
    if isinstance(error, (*TRANSIENT_HTTP, ServerError, BlobStoreUnavailable)):
        return True
    if isinstance(error, S3Error):
        return error.code in TRANSIENT_S3_CODES
    if isinstance(error, ConnectionError | TimeoutError):
        return True
    if isinstance(error, OSError):
        return not isinstance(error, (*PATH_ERRORS, PermissionError)) and (
            error.errno not in PATH_ERRNOS
        )
    return False


async def sleep_backoff(backoff: Backoff, stop: asyncio.Event | None = None) -> None:
    """Wait the backoff's next delay, or less if ``stop`` is set meanwhile."""
    delay = backoff.next_delay()
    if stop is None:
        await asyncio.sleep(delay)
    else:
        await sleep_unless_stopped(stop, delay)


@dataclass
class OutageLog:
    """Log lines of one outage: when it starts, then at most one "still waiting" every
    ``every`` seconds, then when it is over; however many retries happen in between."""

    log: logging.Logger
    what: str
    every: float = 30.0
    clock: Callable[[], float] = time.monotonic
    started: float | None = None
    _said_at: float = field(default=0.0, repr=False)
    failures: int = 0

    def failed(self, error: BaseException) -> None:
        now = self.clock()
        self.failures += 1
        if self.started is None:
            self.started, self._said_at = now, now
            self.log.warning("%s: %s; retrying with backoff", self.what, describe(error))
        elif now - self._said_at >= self.every:
            self._said_at = now
            self.log.warning(
                "%s: still waiting after %.0f s (%d tries): %s",
                self.what,
                now - self.started,
                self.failures,
                describe(error),
            )

    def recovered(self) -> None:
        if self.started is not None:
            self.log.info(
                "%s: back after %.1f s (%d tries)",
                self.what,
                self.clock() - self.started,
                self.failures,
            )
        self.started, self.failures = None, 0


def describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


class Stopped(Exception):
    """The service was asked to stop while waiting for a dependency."""


@dataclass(frozen=True)
class RetryPolicy:
    base_seconds: float = 0.5
    max_seconds: float = 10.0
    log_every_seconds: float = 30.0
    attempts: int | None = None  # None: for as long as the outage lasts (services)

    @classmethod
    def of(cls, settings: Settings) -> RetryPolicy:
        return cls(settings.retry_base_seconds, settings.retry_max_seconds)

    def backoff(self) -> Backoff:
        return Backoff(self.max_seconds, self.base_seconds)


async def retry_transient(
    operation: Callable[[], Awaitable[T]],
    what: str,
    policy: RetryPolicy,
    log: logging.Logger,
    stop: asyncio.Event | None = None,
) -> T:
    """``await operation()`` until it succeeds; a transient failure is retried with backoff for
    as long as it lasts (or ``policy.attempts`` tries), any other failure is raised at once.
    Raises :class:`Stopped` when ``stop`` is set while waiting."""
    backoff = policy.backoff()
    outage = OutageLog(log, what, policy.log_every_seconds)
    while True:
        try:
            result = await operation()
        except Exception as error:
            if not is_transient(error) or outage.failures + 1 == policy.attempts:
                raise
            outage.failed(error)
            await sleep_backoff(backoff, stop)
            if stop is not None and stop.is_set():
                raise Stopped(f"stopped while waiting: {what}") from error
            continue
        outage.recovered()
        return result


class RateLimit(logging.Filter):
    """For the loggers under ``prefixes`` (libraries that log every reconnect attempt): at
    most ``burst`` records per ``per_seconds`` window, per logger and message template, each
    on one line (a traceback becomes the error's one-line description); says how many were
    held back when the next window lets one through. Records of other loggers pass as they are.
    """

    def __init__(
        self,
        prefixes: tuple[str, ...],
        per_seconds: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.prefixes, self.per_seconds, self.burst, self.clock = (
            prefixes,
            per_seconds,
            burst,
            clock,
        )
        self._windows: dict[tuple[str, object], tuple[float, int, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not any(record.name == p or record.name.startswith(f"{p}.") for p in self.prefixes):
            return True
        key = (record.name, record.msg)
        now = self.clock()
        start, passed, held = self._windows.get(key, (now, 0, 0))
        if now - start >= self.per_seconds:
            start, passed, note, held = now, 0, held, 0
        else:
            note = 0
        if passed >= self.burst:
            self._windows[key] = (start, passed, held + 1)
            return False
        self._windows[key] = (start, passed + 1, held)
        _one_line(record, note)
        return True


def _one_line(record: logging.LogRecord, held_back: int) -> None:
    extra = ""
    if record.exc_info and record.exc_info[1] is not None:
        extra = ": " + describe(record.exc_info[1])
        if record.args:  # the message is %-formatted with them: keep the text as it is
            extra = extra.replace("%", "%%")
        record.exc_info, record.exc_text = None, None
    if held_back:
        extra += f" ({held_back} like it held back)"
    record.msg = f"{record.msg}{extra}"
