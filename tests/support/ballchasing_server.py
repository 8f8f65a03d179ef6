"""A local Ballchasing.com: a real HTTP server answering in the API's documented JSON shapes.

Serves groups (``GET /api/groups?group=…``, ``GET /api/groups/<id>``), replay listings
(``GET /api/replays?group=…&count=…``, paged with an ``after`` cursor in a ``next`` URL),
replay metadata with players' ``rank`` and optional ``mmr`` (``GET /api/replays/<id>``) and
real replay files (``GET /api/replays/<id>/file``). It checks the ``Authorization`` header,
keeps the real per-second and per-hour limits (429 with ``Retry-After`` when a client goes
over), and can be told to answer 429 or fail with 503 from some request on, or to have lost
a file. Every request is recorded with its arrival time, so tests measure what clients did.
"""

from __future__ import annotations

import base64
import json
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import pairwise
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

CREATED = "2024-05-01T12:00:00Z"


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # a client that goes away mid-request (a collector killed on purpose) is not an error
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@dataclass(frozen=True)
class ServedPlayer:
    name: str
    team: int  # 0 blue, 1 orange
    rank: dict[str, Any] | None = None  # {"id", "tier", "division", "name"} as the API gives it
    mmr: float | None = None
    steam_id: str = ""


@dataclass(frozen=True)
class ServedReplay:
    id: str
    path: Path
    players: tuple[ServedPlayer, ...]
    rocket_league_id: str = ""


@dataclass
class ServedGroup:
    id: str
    name: str
    parent: str | None
    replays: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Request:
    at: float  # time.monotonic() when it arrived
    token: str | None
    path: str
    query: dict[str, list[str]]
    status: int
    reason: str = ""  # why a 429/5xx was answered: "injected", "over limit", "failing"

    @property
    def is_download(self) -> bool:
        return self.path.endswith("/file")


def rank(tier: int, division: int) -> dict[str, Any]:
    """A rank object like the API's, e.g. tier 14 division 3 = Diamond II Division 3."""
    names = ["Bronze", "Silver", "Gold", "Platinum", "Diamond", "Champion", "Grand Champion"]
    if tier == 22:
        return {"id": "supersonic-legend", "tier": 22, "name": "Supersonic Legend"}
    level = names[(tier - 1) // 3]
    step = (tier - 1) % 3 + 1
    return {
        "id": f"{level.lower().replace(' ', '-')}-{step}",
        "tier": tier,
        "division": division,
        "name": f"{level} {'I' * step} Division {division}",
    }


class BallchasingServer:
    """``with BallchasingServer(token) as server:`` then point the client at server.base_url."""

    def __init__(
        self,
        token: str,
        *,
        page_size: int = 200,
        calls_per_second: int = 2,
        calls_per_hour: int = 500,
        downloads_per_second: int = 1,
        downloads_per_hour: int = 200,
    ) -> None:
        self.tokens = {token}  # accounts: add more to test budgets per account
        self.page_size = page_size
        self.limits = {
            False: (calls_per_second, calls_per_hour),
            True: (downloads_per_second, downloads_per_hour),
        }
        self.groups: dict[str, ServedGroup] = {}
        self.replays: dict[str, ServedReplay] = {}
        self.requests: list[Request] = []
        # Faults
        self.retry_after_next: list[str] = []  # the next requests get 429 with these values
        self.fail_from_request: int | None = None  # request numbers >= this get 503
        self.fail_next = 0  # this many next requests get 503
        self.lost_files: set[str] = set()  # these replays' files are 404
        self._lock = threading.Lock()
        self._http = _Server(("127.0.0.1", 0), self._handler())
        self._http.daemon_threads = True
        self._thread = threading.Thread(
            target=self._http.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def base_url(self) -> str:
        host, port = self._http.server_address[:2]
        return f"http://{host}:{port}/api"

    def __enter__(self) -> BallchasingServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.shutdown()
        self._http.server_close()

    # -- content

    def add_group(self, group_id: str, name: str, parent: str | None = None) -> None:
        self.groups[group_id] = ServedGroup(group_id, name, parent)

    def add_replay(self, group_id: str, replay: ServedReplay) -> None:
        self.replays[replay.id] = replay
        self.groups[group_id].replays.append(replay.id)

    # -- what happened

    def downloads(self, replay_id: str) -> int:
        """Completed (200) downloads of a replay's file."""
        path = f"/api/replays/{replay_id}/file"
        return sum(1 for r in self.requests if r.path == path and r.status == 200)

    def by_token(self, token: str) -> list[Request]:
        return [r for r in self.requests if r.token == token]

    # -- HTTP

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                server._serve(self)

            def log_message(self, *args: object) -> None:
                pass

        return Handler

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        url = urlparse(handler.path)
        query = parse_qs(url.query)
        token = handler.headers.get("Authorization")
        with self._lock:
            now = time.monotonic()
            status, body, headers, reason = self._answer(url.path, query, token, now)
            self.requests.append(Request(now, token, url.path, query, status, reason))
        if isinstance(body, Path):
            data = body.read_bytes()
            content_type = "application/octet-stream"
        else:
            data = json.dumps(body).encode()
            content_type = "application/json"
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(data)

    def _answer(
        self, path: str, query: dict[str, list[str]], token: str | None, now: float
    ) -> tuple[int, Any, dict[str, str], str]:
        """Called with the lock held."""
        if self.fail_from_request is not None and len(self.requests) >= self.fail_from_request:
            return 503, {"error": "service unavailable"}, {}, "failing"
        if self.fail_next > 0:
            self.fail_next -= 1
            return 503, {"error": "service unavailable"}, {}, "failing"
        if self.retry_after_next:
            value = self.retry_after_next.pop(0)
            return 429, {"error": "rate limited"}, {"Retry-After": value}, "injected"
        if token not in self.tokens:
            return 401, {"error": "invalid or missing API key"}, {}, ""
        if wait := self._over_limit(token, path.endswith("/file"), now):
            return 429, {"error": "rate limited"}, {"Retry-After": str(wait)}, "over limit"
        try:
            return 200, self._route(path, query), {}, ""
        except LookupError as missing:
            return 404, {"error": f"not found: {missing}"}, {}, ""

    def _over_limit(self, token: str, download: bool, now: float) -> int:
        """Seconds to wait if this request is over a limit (as Ballchasing would count it)."""
        per_second, per_hour = self.limits[download]
        # Allow for clients whose clock saw a full second where the server saw a little less.
        recent = [
            r.at
            for r in self.requests
            if r.token == token and r.is_download == download and r.status != 429
        ]
        if sum(1 for at in recent if at > now - 0.95) >= per_second:
            return 1
        if sum(1 for at in recent if at > now - 3600) >= per_hour:
            return 3600
        return 0

    def _route(self, path: str, query: dict[str, list[str]]) -> Any:
        parts = [p for p in path.split("/") if p]
        if parts[:1] != ["api"]:
            raise LookupError(path)
        parts = parts[1:]
        if not parts:
            return {"chaser": True, "name": "tester", "steam_id": "76561198000000000"}
        if parts == ["groups"]:
            parent = query.get("group", [None])[0]
            children = [g for g in self.groups.values() if g.parent == parent]
            return self._listing("groups", query, [self._group_summary(g) for g in children])
        if parts[0] == "groups" and len(parts) == 2:
            return self._group_detail(self.groups[parts[1]])
        if parts == ["replays"]:
            group = self.groups[query.get("group", [""])[0]]
            entries = [self._replay_summary(self.replays[rid]) for rid in group.replays]
            return self._listing("replays", query, entries)
        if parts[0] == "replays" and len(parts) == 2:
            return self.replay_detail(self.replays[parts[1]])
        if parts[0] == "replays" and len(parts) == 3 and parts[2] == "file":
            if parts[1] in self.lost_files:
                raise LookupError(parts[1])
            return self.replays[parts[1]].path
        raise LookupError(path)

    def _listing(self, what: str, query: dict[str, list[str]], entries: list[Any]) -> Any:
        count = min(int(query.get("count", ["150"])[0]), 200, self.page_size)
        after = query.get("after", [""])[0]
        start = int(base64.urlsafe_b64decode(after).decode()) if after else 0
        page = {"count": len(entries), "list": entries[start : start + count]}
        if start + count < len(entries):
            cursor = base64.urlsafe_b64encode(str(start + count).encode()).decode()
            params = {k: v[0] for k, v in query.items() if k != "after"}
            page["next"] = f"{self.base_url}/{what}?{urlencode({**params, 'after': cursor})}"
        return page

    def _group_summary(self, group: ServedGroup) -> dict[str, Any]:
        return {
            "id": group.id,
            "link": f"{self.base_url}/groups/{group.id}",
            "name": group.name,
            "created": CREATED,
            "player_identification": "by-id",
            "team_identification": "by-distinct-players",
            "shared": False,
            "creator": {"steam_id": "76561198000000000", "name": "tester"},
        }

    def _group_detail(self, group: ServedGroup) -> dict[str, Any]:
        return {**self._group_summary(group), "status": "ok", "players": [], "teams": []}

    def _player(self, player: ServedPlayer, detail: bool) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "start_time": 0,
            "end_time": 300,
            "name": player.name,
            "id": {"platform": "steam", "id": player.steam_id} if player.steam_id else {},
        }
        if detail:
            entry |= {"car_id": 23, "car_name": "Octane", "mvp": False, "stats": {"core": {}}}
            if player.rank is not None:
                entry["rank"] = player.rank
            if player.mmr is not None:
                entry["mmr"] = player.mmr
        return entry

    def _teams(self, replay: ServedReplay, detail: bool) -> dict[str, Any]:
        return {
            color: {
                "color": color,
                "players": [self._player(p, detail) for p in replay.players if p.team == team],
            }
            for team, color in ((0, "blue"), (1, "orange"))
        }

    def _replay_summary(self, replay: ServedReplay) -> dict[str, Any]:
        return {
            "id": replay.id,
            "link": f"{self.base_url}/replays/{replay.id}",
            "rocket_league_id": replay.rocket_league_id,
            "replay_title": replay.path.stem,
            "map_code": "stadium_p",
            "playlist_id": "ranked-doubles",
            "duration": 300,
            "overtime": False,
            "season": 14,
            "date": CREATED,
            "created": CREATED,
            "visibility": "public",
            **self._teams(replay, detail=False),
        }

    def replay_detail(self, replay: ServedReplay) -> dict[str, Any]:
        """The body of ``GET /replays/<id>``."""
        groups = [
            {"id": g.id, "name": g.name, "link": f"{self.base_url}/groups/{g.id}"}
            for g in self.groups.values()
            if replay.id in g.replays
        ]
        return {
            **self._replay_summary(replay),
            "status": "ok",
            "title": replay.path.stem,
            "match_type": "Online",
            "team_size": max(1, len(replay.players) // 2),
            "uploader": {"steam_id": "76561198000000000", "name": "tester"},
            "groups": groups,
            **self._teams(replay, detail=True),
        }


def gaps_after(requests: list[Request], predicate: Any) -> Iterator[tuple[Request, float]]:
    """For each request matching predicate, the seconds until the next request arrived."""
    for first, second in pairwise(requests):
        if predicate(first):
            yield first, second.at - first.at
