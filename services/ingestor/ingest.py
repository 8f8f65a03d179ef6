"""What may enter the pipeline, and turning one local file into a stored, hashed upload event.

The limits live here, as pure functions that every source (watched folder, bucket, topic, CLI)
calls: :func:`check_name` for file names and object keys from outside, :func:`check_size`, and
:func:`sniff_replay` for the first bytes. Each raises :class:`IngestRejected` with a reason fit
for the dead-letter record.

A local file is opened once (:func:`open_regular`: never blocking on a FIFO, refusing anything
but a regular file) and copied, hashed on the way, into a private temporary file; only that copy
reaches the blob store, so a file that changes or vanishes while it is read is refused, never
stored under a hash that is not its content.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import stat
import tempfile
import time
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

from shared.backoff import Backoff
from shared.events import ReplayUploaded
from shared.storage import CHUNK, BlobStore

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

    Refused: empty names, names that are not UTF-8, NUL and other control or format characters,
    more than
    ``MAX_KEY_BYTES`` bytes (or a last segment over ``MAX_NAME_BYTES``), absolute paths,
    backslashes, ``.``/``..`` or empty segments (path traversal), and folder markers.
    """
    if not name:
        raise IngestRejected("empty file name")
    if any(unicodedata.category(char) == "Cs" for char in name):
        # os.scandir gives bytes that are not UTF-8 as lone surrogates (surrogateescape)
        raise IngestRejected(f"file name {shown(name)} is not valid UTF-8")
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
    try:
        resolved = path.resolve()
    except RuntimeError:  # what Path.resolve raises for ELOOP
        raise IngestRejected(f"{shown(str(path))} is a symbolic link loop") from None
    if not resolved.is_relative_to(root.resolve()):
        raise IngestRejected(f"{shown(str(path))} leads outside {root}")
    return resolved


class Readable(Protocol):
    """What :func:`copy_limited` reads from: a file, or an HTTP response's body."""

    def read(self, size: int = -1, /) -> bytes: ...


def copy_limited(
    source: Readable, target: BinaryIO, max_bytes: int, digest: hashlib._Hash | None = None
) -> int:
    """Copy a stream, refusing it as soon as it grows past ``max_bytes``; return its size.

    ``digest``, if given, is updated with every byte copied.
    """
    size = 0
    while chunk := source.read(CHUNK):
        size += len(chunk)
        if size > max_bytes:
            raise IngestRejected(f"file is over the limit of {max_bytes} bytes")
        target.write(chunk)
        if digest is not None:
            digest.update(chunk)
    return size


def rejection_id(uri: str) -> str:
    """The ``replay_id`` of a rejected file: the sha256 of where it came from, since its bytes
    are never hashed (it may be huge, or never fetched at all)."""
    return hashlib.sha256(uri.encode()).hexdigest()


Signature = tuple[int, int]  # (size, mtime in ns): a file that changes gets a new one
RETRY_FIRST_SECONDS, RETRY_MAX_SECONDS = 2.0, 300.0


@dataclass
class FolderWatcher:
    """Offers each ``*.replay`` entry of a folder tree once its size and mtime held still for
    one poll; again if it changes (content-hash dedupe downstream makes that harmless).

    Nothing in the folder stops the walk: entries that are not regular files (FIFOs, folders
    named ``x.replay``, symlink loops, dangling links) are offered too, so that
    :func:`upload_event` refuses them with a reason, once per (path, size, mtime). Folders that
    cannot be listed, and entries that vanish while listed, are passed over. A path whose
    ingest failed for another reason (a dependency down) is offered again after a delay that
    doubles per failure: :meth:`retry_later`.
    """

    root: Path
    _pending: dict[Path, Signature] = field(default_factory=dict)
    _done: dict[Path, Signature] = field(default_factory=dict)
    _retry: dict[Path, tuple[float, Backoff]] = field(default_factory=dict)

    def poll(self, now: float | None = None) -> list[Path]:
        now = time.monotonic() if now is None else now
        ready: list[Path] = []
        current: dict[Path, Signature] = {}
        listed = sorted(_replay_entries(self.root))
        for path, signature in listed:
            if self._done.get(path) == signature or not self._may_retry(path, now):
                continue
            if self._pending.get(path) == signature:
                ready.append(path)
                self._done[path] = signature
            else:
                current[path] = signature
        self._pending = current
        # What left the folder is forgotten (bounded memory; back later, it is new again).
        present = {path for path, _ in listed}
        self._done = {p: sig for p, sig in self._done.items() if p in present}
        self._retry = {p: retry for p, retry in self._retry.items() if p in present}
        return ready

    def retry_later(self, path: Path, now: float | None = None) -> float:
        """Forget that ``path`` was taken: offer it again after a delay; return the delay."""
        now = time.monotonic() if now is None else now
        self._done.pop(path, None)
        _, backoff = self._retry.get(path, (0.0, Backoff(RETRY_MAX_SECONDS, RETRY_FIRST_SECONDS)))
        delay = backoff.next_delay()
        self._retry[path] = (now + delay, backoff)
        return delay

    def succeeded(self, path: Path) -> None:
        """``path`` was dealt with (ingested, a duplicate, or rejected): no more retries."""
        self._retry.pop(path, None)

    def _may_retry(self, path: Path, now: float) -> bool:
        not_before, _ = self._retry.get(path, (0.0, None))
        return now >= not_before


def _replay_entries(root: Path) -> Iterator[tuple[Path, Signature]]:
    """Every entry named ``*.replay`` under ``root`` with its signature. Symlinked folders are
    not followed; a folder named ``x.replay`` is an entry, and is walked too. Iterative, so
    no depth of folders is too deep."""
    folders = [root]
    while folders:
        try:
            entries = list(os.scandir(folders.pop()))
        except OSError:  # unreadable, or removed meanwhile
            continue
        for entry in entries:
            if entry.name.endswith(REPLAY_SUFFIX) and (signature := _signature(entry)):
                yield Path(entry.path), signature
            with contextlib.suppress(OSError):
                if entry.is_dir(follow_symlinks=False):
                    folders.append(Path(entry.path))


def _signature(entry: os.DirEntry[str]) -> Signature | None:
    """Size and mtime of what the entry leads to, else of the link itself (a loop, a dangling
    link); None once it has vanished."""
    for follow in (True, False):
        try:
            info = entry.stat(follow_symlinks=follow)
        except OSError:
            continue
        return info.st_size, info.st_mtime_ns
    return None


FILE_KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFDIR: "a folder",
}


@contextlib.contextmanager
def open_regular(path: Path) -> Iterator[tuple[BinaryIO, os.stat_result]]:
    """Open a local file for reading, with its status; refuse anything but a regular file.

    Opened non-blocking, so a FIFO never hangs the caller; refused for what it is, like a
    folder, a device, a symlink loop, a file that vanished or cannot be read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        if os.path.lexists(path):
            raise IngestRejected(f"{shown(str(path))} is a symbolic link to nothing") from None
        raise IngestRejected(f"{shown(str(path))} vanished before it was read") from None
    except OSError as error:
        what = "is a symbolic link loop" if error.errno == errno.ELOOP else "cannot be opened"
        raise IngestRejected(f"{shown(str(path))} {what}: {error.strerror}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        kind = FILE_KINDS.get(stat.S_IFMT(info.st_mode), "not a regular file")
        raise IngestRejected(f"{shown(str(path))} is {kind}, not a file")
    os.set_blocking(fd, True)
    with os.fdopen(fd, "rb") as handle:
        yield handle, info


def _read_error(path: Path, error: OSError) -> IngestRejected:
    return IngestRejected(f"{shown(str(path))} could not be read: {error.strerror or error}")


def check_file(path: Path, max_bytes: int) -> int:
    """Size and first bytes of a local file against the limits; return its size."""
    with open_regular(path) as (handle, info):
        check_size(info.st_size, max_bytes)
        try:
            sniff_replay(handle.read(SNIFF_BYTES))
        except OSError as error:
            raise _read_error(path, error) from None
    return info.st_size


def upload_event(
    path: Path, store: BlobStore, max_bytes: int, source: str, filename: str | None = None
) -> ReplayUploaded:
    """Check the file, hash it, copy it into the blob store and describe it.

    ``filename`` (default: the path's own name) is checked with :func:`check_name`.
    Raises IngestRejected if the file is unfit, or changed or vanished while it was read.
    """
    name = check_name(filename if filename is not None else path.name)
    with tempfile.TemporaryDirectory(prefix="rlimpact-ingest-") as tmp:
        copy = Path(tmp) / f"copy{REPLAY_SUFFIX}"
        replay_id, size = _snapshot(path, copy, max_bytes)
        uri = store.put_file("replays", replay_id, REPLAY_SUFFIX, copy)
    return ReplayUploaded(
        replay_id=replay_id, uri=uri, filename=name, size_bytes=size, source=source
    )


def _snapshot(path: Path, copy: Path, max_bytes: int) -> tuple[str, int]:
    """Copy ``path`` to ``copy`` through one open file, checking it on the way; return the
    sha256 and size of exactly the bytes copied."""
    digest = hashlib.sha256()
    with open_regular(path) as (handle, before):
        check_size(before.st_size, max_bytes)
        try:
            sniff_replay(handle.read(SNIFF_BYTES))
            handle.seek(0)
            with copy.open("wb") as target:
                size = copy_limited(handle, target, max_bytes, digest)
            after = os.fstat(handle.fileno())
        except OSError as error:
            raise _read_error(path, error) from None
    if size != before.st_size or (after.st_size, after.st_mtime_ns) != (
        before.st_size,
        before.st_mtime_ns,
    ):
        raise IngestRejected(
            f"{shown(str(path))} changed while it was read ({before.st_size} bytes, then"
            f" {size} read); it is taken again once it holds still"
        )
    return digest.hexdigest(), size
