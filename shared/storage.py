"""Content-addressed blob store behind ``file://`` URIs (the claim checks that events carry)."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlparse

CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def uri_to_path(uri: str) -> Path:
    parsed = urlparse(uri)
    if parsed.scheme != "file":
        raise ValueError(f"unsupported blob URI scheme {parsed.scheme!r} in {uri!r}")
    return Path(unquote(parsed.path))


class BlobStore:
    """Files at ``root/<kind>/<id[:2]>/<id><suffix>``, written atomically (temp + rename)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path_for(self, kind: str, blob_id: str, suffix: str) -> Path:
        if not blob_id.isalnum():
            raise ValueError(f"blob id must be alphanumeric, got {blob_id!r}")
        return self.root / kind / blob_id[:2] / f"{blob_id}{suffix}"

    def put_file(self, kind: str, blob_id: str, suffix: str, source: Path) -> str:
        target = self.path_for(kind, blob_id, suffix)
        if not target.exists():
            with _AtomicWrite(target) as tmp:
                shutil.copyfile(source, tmp)
        return target.as_uri()

    def writer(self, kind: str, blob_id: str, suffix: str) -> _AtomicWrite:
        """``with store.writer(...) as tmp_path:`` write to tmp_path; it is renamed on success."""
        return _AtomicWrite(self.path_for(kind, blob_id, suffix))


class _AtomicWrite:
    def __init__(self, target: Path) -> None:
        self.target = target
        self.tmp: Path | None = None

    def __enter__(self) -> Path:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(
            dir=self.target.parent, prefix=".tmp-", suffix=self.target.suffix
        )
        os.close(fd)
        self.tmp = Path(name)
        return self.tmp

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        assert self.tmp is not None
        if exc_type is None:
            os.replace(self.tmp, self.target)
        else:
            self.tmp.unlink(missing_ok=True)
