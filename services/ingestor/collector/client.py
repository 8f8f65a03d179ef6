"""Ballchasing.com API client.

The client speaks the documented API (``Authorization: <token>``; ``GET /groups?group=<id>``
for child groups, ``GET /replays?group=<id>`` for a group's replays, both paged by a ``next``
URL; ``GET /replays/<id>`` for metadata; ``GET /replays/<id>/file`` for the file). It keeps to
a budget per second and per hour for API calls and, separately, for file downloads (sliding
windows, seeded from Postgres so a new run counts the last hour's requests), honours 429's
``Retry-After``, and retries 5xx answers and connection errors with exponential backoff.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Literal

import httpx

from shared.settings import Settings
from shared.storage import CHUNK

log = logging.getLogger("ballchasing")

PAGE_SIZE = 200  # the API's maximum count per page
HOUR = 3600.0
MAX_BACKOFF_SECONDS = 60.0
Kind = Literal["call", "download"]


# ---------------------------------------------------------------- errors


class BallchasingError(Exception):
    """An answer that retrying will not change (4xx other than 429, bad JSON, too large)."""


class BallchasingAuthError(BallchasingError):
    """401/403: the token is missing, wrong, or not allowed to see this."""


class BallchasingNotFound(BallchasingError):
    """404: no such group or replay (deleted, private)."""


class BallchasingUnavailable(Exception):
    """5xx answers, 429s or connection errors past the retries: try the run again later."""


class BudgetExhausted(Exception):
    """Keeping to the budget (or a Retry-After) would mean waiting longer than allowed."""

    def __init__(self, what: str, wait_seconds: float) -> None:
        resume = datetime.fromtimestamp(time.time() + wait_seconds, UTC)
        super().__init__(
            f"{what}: the next request may go in {wait_seconds:.0f} s"
            f" (at {resume:%H:%M:%S} UTC); run again then to continue"
        )
        self.wait_seconds = wait_seconds


# ---------------------------------------------------------------- budget


@dataclass
class SlidingWindow:
    """At most ``limit`` requests in any ``seconds``-long window."""

    limit: int
    seconds: float
    times: deque[float] = field(default_factory=deque)

    def delay(self, now: float) -> float:
        while self.times and self.times[0] <= now - self.seconds:
            self.times.popleft()
        if len(self.times) < self.limit:
            return 0.0
        return self.times[-self.limit] + self.seconds - now

    def record(self, now: float) -> None:
        self.times.append(now)


@dataclass
class Budget:
    """The per-second and per-hour windows of one kind of request."""

    kind: Kind
    per_second: SlidingWindow
    per_hour: SlidingWindow

    @classmethod
    def of(cls, kind: Kind, per_second: int, per_hour: int) -> Budget:
        return cls(kind, SlidingWindow(per_second, 1.0), SlidingWindow(per_hour, HOUR))

    def delay(self, now: float) -> float:
        return max(self.per_second.delay(now), self.per_hour.delay(now))

    def record(self, now: float) -> None:
        self.per_second.record(now)
        self.per_hour.record(now)

    def seed(self, now: float, ages: list[float]) -> None:
        """Count requests made before this process started, ``ages`` seconds ago."""
        for age in sorted(ages, reverse=True):
            self.record(now - age)


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds: either a number of seconds or an HTTP date."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def account_of(token: str) -> str:
    """Budgets belong to an account; Postgres keeps a hash, never the token."""
    return hashlib.sha256(token.encode()).hexdigest()[:16]


# ---------------------------------------------------------------- client


@dataclass(frozen=True)
class Download:
    sha256: str
    size: int


class BallchasingClient:
    """Async client for the endpoints the collector needs; use ``async with``."""

    def __init__(
        self,
        settings: Settings,
        token: str,
        *,
        max_wait: float | None = None,
        on_request: Callable[[Kind], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not token:
            raise BallchasingAuthError("no Ballchasing API token (RLIMPACT_BALLCHASING_TOKEN)")
        self.base_url = settings.ballchasing_base_url.rstrip("/")
        self.retries = settings.ballchasing_retries
        self.backoff = settings.ballchasing_backoff_seconds
        self.max_wait = max_wait
        self.budgets = {
            "call": Budget.of(
                "call", settings.ballchasing_calls_per_second, settings.ballchasing_calls_per_hour
            ),
            "download": Budget.of(
                "download",
                settings.ballchasing_downloads_per_second,
                settings.ballchasing_downloads_per_hour,
            ),
        }
        self.requests = 0
        self.waited_seconds = 0.0
        self._on_request = on_request
        self._clock = clock
        self._sleep = sleep
        self._http = httpx.AsyncClient(
            headers={"Authorization": token, "User-Agent": "rlimpact-collector"},
            timeout=settings.ballchasing_timeout_seconds,
        )

    async def __aenter__(self) -> BallchasingClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.aclose()

    def seed(self, kind: Kind, ages: list[float]) -> None:
        self.budgets[kind].seed(self._clock(), ages)

    def url(self, path_or_url: str) -> str:
        """An endpoint path, or a ``next`` URL, which must point under the base URL: the
        token is sent with every request."""
        if path_or_url.startswith("/"):
            return self.base_url + path_or_url
        if path_or_url == self.base_url or path_or_url.startswith(self.base_url + "/"):
            return path_or_url
        raise BallchasingError(f"refusing to follow {path_or_url!r}: not under {self.base_url}")

    # -- requests

    async def _wait(self, seconds: float, why: str) -> None:
        if self.max_wait is not None and seconds > self.max_wait:
            raise BudgetExhausted(why, seconds)
        if seconds >= 1.0:
            log.info("%s: waiting %.1f s", why, seconds)
        self.waited_seconds += seconds
        await self._sleep(seconds)

    async def _take_budget(self, kind: Kind) -> None:
        budget = self.budgets[kind]
        while (delay := budget.delay(self._clock())) > 0:
            hourly = budget.per_hour.delay(self._clock()) > 0
            limit = (
                f"{budget.per_hour.limit} per hour" if hourly else f"{budget.per_second.limit}/s"
            )
            await self._wait(delay, f"{kind} budget ({limit}) used up")
        self.requests += 1
        if self._on_request is not None:
            await self._on_request(kind)

    async def _request(
        self, url: str, kind: Kind, params: dict[str, Any] | None = None
    ) -> httpx.Response:
        """Send a GET, keeping to the budget; retry 429, 5xx and connection errors. The caller
        closes the (streamed) response."""
        failure = ""
        for attempt in range(self.retries + 1):
            await self._take_budget(kind)
            request = self._http.build_request("GET", url, params=params)
            try:
                response = await self._http.send(request, stream=True)
            except httpx.TransportError as error:
                self.budgets[kind].record(self._clock())
                failure = f"{type(error).__name__}: {error or 'no answer'}"
            else:
                # Counted from when the answer came, which is after the server counted it:
                # however long sending took, the server sees the same spacing or more.
                self.budgets[kind].record(self._clock())
                if response.status_code < 400:
                    return response
                await response.aread()
                await response.aclose()
                status = response.status_code
                failure = f"HTTP {status} from {request.url.path}"
                if status == 429:
                    wait = retry_after_seconds(response.headers.get("Retry-After"))
                    if attempt < self.retries:
                        await self._wait(
                            wait if wait is not None else self._backoff(attempt),
                            f"rate limited (429) on {request.url.path}",
                        )
                    continue
                if status < 500:
                    raise _client_error(status, request.url.path, response.text)
            if attempt < self.retries:
                await self._wait(self._backoff(attempt), f"{failure}; retrying")
        raise BallchasingUnavailable(f"{failure} (after {self.retries + 1} tries)")

    def _backoff(self, attempt: int) -> float:
        return min(self.backoff * 2**attempt, MAX_BACKOFF_SECONDS)

    async def get_json(self, path_or_url: str, params: dict[str, Any] | None = None) -> Any:
        response = await self._request(self.url(path_or_url), "call", params)
        try:
            body = await response.aread()
        finally:
            await response.aclose()
        try:
            return response.json() if body else None
        except ValueError as error:
            raise BallchasingError(f"{response.url.path}: the answer is not JSON") from error

    async def page(
        self, path_or_url: str, params: dict[str, Any] | None = None
    ) -> tuple[list[Any], str]:
        """One page of a listing: its entries, and the URL of the next page ("" if last)."""
        page = await self.get_json(path_or_url, params)
        if not isinstance(page, dict) or not isinstance(page.get("list"), list):
            raise BallchasingError(f"{path_or_url}: a listing without a 'list' of entries")
        next_url = page.get("next")
        return page["list"], next_url if isinstance(next_url, str) else ""

    async def pages(self, path: str, params: dict[str, Any]) -> AsyncIterator[list[Any]]:
        """The entries of a listing, page by page, following ``next``."""
        entries, next_url = await self.page(path, params)
        yield entries
        while next_url:
            entries, next_url = await self.page(next_url)
            yield entries

    async def download(self, bc_id: str, target: Path, max_bytes: int) -> Download:
        """Stream ``/replays/<id>/file`` to target (written to a temp name, then renamed)."""
        response = await self._request(self.url(f"/replays/{bc_id}/file"), "download")
        partial = target.with_name(target.name + ".part")
        digest = hashlib.sha256()
        size = 0
        try:
            declared = int(response.headers.get("Content-Length", "0") or 0)
            if declared > max_bytes:
                raise BallchasingError(f"file is {declared} bytes, over the limit of {max_bytes}")
            target.parent.mkdir(parents=True, exist_ok=True)
            with partial.open("wb") as handle:
                async for chunk in response.aiter_bytes(CHUNK):
                    size += len(chunk)
                    if size > max_bytes:
                        raise BallchasingError(f"file is over the limit of {max_bytes} bytes")
                    digest.update(chunk)
                    handle.write(chunk)
        except httpx.TransportError as error:
            partial.unlink(missing_ok=True)
            raise BallchasingUnavailable(f"download of {bc_id} broke off: {error}") from error
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        finally:
            await response.aclose()
        if size == 0:
            partial.unlink(missing_ok=True)
            raise BallchasingError("the file is empty")
        partial.replace(target)
        return Download(digest.hexdigest(), size)


def _client_error(status: int, path: str, body: str) -> BallchasingError:
    detail = body.strip().replace("\n", " ")[:200]
    message = f"HTTP {status} from {path}" + (f": {detail}" if detail else "")
    if status in (401, 403):
        return BallchasingAuthError(message)
    if status == 404:
        return BallchasingNotFound(message)
    return BallchasingError(message)
