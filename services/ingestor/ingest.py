"""Watched-folder scanning and turning one file into a stored, hashed upload event."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from shared.events import ReplayUploaded
from shared.storage import BlobStore, sha256_file

REPLAY_SUFFIX = ".replay"


class IngestRejected(Exception):
    """A file that must not enter the pipeline; ``reason`` goes to the dead-letter record."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class FolderWatcher:
    """Yields each ``.replay`` file once its size and mtime held still for one poll interval.

    A file rewritten later (new size or mtime) is yielded again; content-hash dedupe downstream
    makes that harmless.
    """

    root: Path
    _pending: dict[Path, tuple[int, int]] = field(default_factory=dict)
    _done: dict[Path, tuple[int, int]] = field(default_factory=dict)

    def poll(self) -> list[Path]:
        ready: list[Path] = []
        current: dict[Path, tuple[int, int]] = {}
        for path in sorted(self.root.rglob(f"*{REPLAY_SUFFIX}")):
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            if not path.is_file():
                continue
            signature = (stat.st_size, stat.st_mtime_ns)
            if self._done.get(path) == signature:
                continue
            if self._pending.get(path) == signature:
                ready.append(path)
                self._done[path] = signature
            else:
                current[path] = signature
        self._pending = current
        return ready


def upload_event(path: Path, store: BlobStore, max_bytes: int, source: str) -> ReplayUploaded:
    """Hash the file, copy it into the blob store and describe it; raise IngestRejected if unfit."""
    size = path.stat().st_size
    if size > max_bytes:
        raise IngestRejected(f"file is {size} bytes, over the limit of {max_bytes}")
    if size == 0:
        raise IngestRejected("file is empty")
    replay_id = sha256_file(path)
    uri = store.put_file("replays", replay_id, REPLAY_SUFFIX, path)
    return ReplayUploaded(
        replay_id=replay_id, uri=uri, filename=path.name, size_bytes=size, source=source
    )
