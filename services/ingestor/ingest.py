"""What may enter the pipeline, and turning one local file into a stored, hashed upload event.

The limits live here, as pure functions that every source (watched folder, bucket, topic, CLI)
calls: :func:`check_name` for file names and object keys from outside, :func:`check_size`, and
:func:`sniff_replay` for the first bytes. Each raises :class:`IngestRejected` with a reason fit
for the dead-letter record.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from shared.events import ReplayUploaded
from shared.storage import CHUNK, BlobStore, sha256_file

REPLAY_SUFFIX = ".replay"
MAX_KEY_BYTES = 1024  # S3's own limit on an object key
MAX_NAME_BYTES = 255  # a file name on every common file system
# A replay starts with header size, header CRC, version numbers and then the length-prefixed
# class name of the game type, e.g. "TAGame.Replay_Soccar_TA". Seeing it is enough to tell a
# replay from some other file; the parser does the full validation.
REPLAY_MAGIC = b"TAGame.Replay_"
SNIFF_BYTES = 64
MIN_REPLAY_BYTES = 24


class IngestRejected(Exception):
    """A file that must not enter the pipeline; ``reason`` goes to the dead-letter record."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def shown(name: str, limit: int = 80) -> str:
    """A name from outside, safe to put in a log line or a reason: escaped and shortened."""
    text = repr(name[:limit])
    return text if len(name) <= limit else f"{text}… ({len(name)} characters)"


def check_name(name: str) -> str:
    """Check a file name or object key from outside; return its last path segment.

    Refused: empty names, NUL and other control or format characters, more than
    ``MAX_KEY_BYTES`` bytes (or a last segment over ``MAX_NAME_BYTES``), absolute paths,
    backslashes, ``.``/``..`` or empty segments (path traversal), and folder markers.
    """
    if not name:
        raise IngestRejected("empty file name")
    if "\x00" in name:
        raise IngestRejected(f"file name {shown(name)} contains a NUL byte")
    if any(unicodedata.category(char) in ("Cc", "Cf") for char in name):
        raise IngestRejected(f"file name {shown(name)} contains control characters")
    if len(name.encode()) > MAX_KEY_BYTES:
        raise IngestRejected(f"file name {shown(name)} is over {MAX_KEY_BYTES} bytes")
    if "\\" in name:
        raise IngestRejected(f"file name {shown(name)} contains a backslash")
    if name.startswith("/") or re.match(r"[A-Za-z]:", name):
        raise IngestRejected(f"file name {shown(name)} is an absolute path")
    segments = name.split("/")
    if any(segment in ("", ".", "..") for segment in segments[:-1]) or segments[-1] in (".", ".."):
        raise IngestRejected(f"file name {shown(name)} has a '.', '..' or empty path segment")
    base = segments[-1]
    if not base:
        raise IngestRejected(f"{shown(name)} is a folder, not a file")
    if len(base.encode()) > MAX_NAME_BYTES:
        raise IngestRejected(f"file name {shown(base)} is over {MAX_NAME_BYTES} bytes")
    return base


def check_size(size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise IngestRejected(f"file is {size} bytes, over the limit of {max_bytes}")
    if size == 0:
        raise IngestRejected("file is empty")


def sniff_replay(head: bytes) -> None:
    """Refuse bytes that cannot be the start of a Rocket League replay."""
    if len(head) < MIN_REPLAY_BYTES or REPLAY_MAGIC not in head[:SNIFF_BYTES]:
        raise IngestRejected(
            f"not a Rocket League replay: no {REPLAY_MAGIC.decode()} header"
            f" in the first {SNIFF_BYTES} bytes"
        )


def resolve_inside(root: Path, path: Path) -> Path:
    """``path`` with symlinks resolved, refused unless it lies inside ``root``."""
    resolved = path.resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise IngestRejected(f"{shown(str(path))} leads outside {root}")
    return resolved


def copy_limited(source: BinaryIO, target: BinaryIO, max_bytes: int) -> int:
    """Copy a stream, refusing it as soon as it grows past ``max_bytes``; return its size."""
    size = 0
    while chunk := source.read(CHUNK):
        size += len(chunk)
        if size > max_bytes:
            raise IngestRejected(f"file is over the limit of {max_bytes} bytes")
        target.write(chunk)
    return size


def rejection_id(uri: str) -> str:
    """The ``replay_id`` of a rejected file: the sha256 of where it came from, since its bytes
    are never hashed (it may be huge, or never fetched at all)."""
    return hashlib.sha256(uri.encode()).hexdigest()


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


def check_file(path: Path, max_bytes: int) -> int:
    """Size and first bytes of a local file against the limits; return its size."""
    size = path.stat().st_size
    check_size(size, max_bytes)
    with path.open("rb") as handle:
        sniff_replay(handle.read(SNIFF_BYTES))
    return size


def upload_event(
    path: Path, store: BlobStore, max_bytes: int, source: str, filename: str | None = None
) -> ReplayUploaded:
    """Check the file, hash it, copy it into the blob store and describe it.

    ``filename`` (default: the path's own name) is checked with :func:`check_name`.
    Raises IngestRejected if the file is unfit.
    """
    name = check_name(filename if filename is not None else path.name)
    size = check_file(path, max_bytes)
    replay_id = sha256_file(path)
    uri = store.put_file("replays", replay_id, REPLAY_SUFFIX, path)
    return ReplayUploaded(
        replay_id=replay_id, uri=uri, filename=name, size_bytes=size, source=source
    )
