"""The content-addressed blob store behind the claim checks that events carry.

One interface, :class:`BlobStore`, two implementations chosen by ``RLIMPACT_BLOB_STORE``
(:func:`open_blob_store`): :class:`FileBlobStore` (``file://`` URIs under a local folder) and
:class:`S3BlobStore` (``s3://bucket/key`` URIs under a prefix of an S3-compatible bucket), so
that services on different machines share no disk.

A blob's place is ``<kind>/<id[:2]>/<id><suffix>``. Services read a URI from an event only
through :meth:`BlobStore.local_path`, which refuses any URI outside the store
(:class:`BlobOutsideStore`): an event is never trusted to name a file to open.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlparse

if TYPE_CHECKING:
    from minio import Minio

    from shared.settings import Settings

CHUNK = 1 << 20
S3_SCHEME = "s3"


class BlobOutsideStore(ValueError):
    """A URI that does not name a blob of this store: never opened."""


class BlobStoreUnavailable(RuntimeError):
    """The store cannot be reached (the S3 server is down): retry later, do not blame the blob."""


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


def s3_uri(bucket: str, key: str) -> str:
    """``s3://bucket/key`` with the key percent-encoded (a hostile key travels harmlessly)."""
    return f"{S3_SCHEME}://{bucket}/{quote(key, safe='/')}"


def blob_key(kind: str, blob_id: str, suffix: str) -> str:
    """Where a blob lives inside a store, relative to its root."""
    if not blob_id.isalnum() or not blob_id.isascii():
        raise ValueError(f"blob id must be alphanumeric, got {blob_id!r}")
    if not kind.isidentifier() or not (suffix == "" or suffix[1:].isalnum()):
        raise ValueError(f"bad blob kind {kind!r} or suffix {suffix!r}")
    return f"{kind}/{blob_id[:2]}/{blob_id}{suffix}"


def _shown(uri: str) -> str:
    return repr(uri[:200])


class BlobStore(ABC):
    """Put, write and read blobs by URI; every read checks the URI is inside the store."""

    @abstractmethod
    def uri_for(self, kind: str, blob_id: str, suffix: str) -> str:
        """The URI the blob has (or will have) in this store."""

    @abstractmethod
    def put_file(self, kind: str, blob_id: str, suffix: str, source: Path) -> str:
        """Store a copy of ``source`` (unless the blob is there already); return its URI."""

    @abstractmethod
    def writer(self, kind: str, blob_id: str, suffix: str) -> AbstractContextManager[Path]:
        """``with store.writer(...) as tmp:`` write to ``tmp``; stored whole on success only."""

    @abstractmethod
    def local_path(self, uri: str) -> AbstractContextManager[Path]:
        """``with store.local_path(uri) as path:`` read the blob from a local file.

        Raises :class:`BlobOutsideStore` for a URI outside the store, FileNotFoundError for a
        blob that is not there, :class:`BlobStoreUnavailable` when the store cannot be reached.
        """

    @abstractmethod
    def exists(self, uri: str) -> bool:
        """Whether the blob is stored (False for a URI outside the store)."""

    def contains(self, uri: str) -> bool:
        """Whether ``uri`` names a place inside this store."""
        try:
            self._inside(uri)
        except BlobOutsideStore:
            return False
        return True

    def expect(self, uri: str, kind: str, blob_id: str, suffix: str) -> None:
        """Refuse a claim check that is not the blob this store keeps for ``blob_id``."""
        if uri != self.uri_for(kind, blob_id, suffix):
            raise BlobOutsideStore(f"{_shown(uri)} is not the stored {kind} blob of {blob_id[:12]}")

    @abstractmethod
    def _inside(self, uri: str) -> Any:
        """The blob's place (path or key) if ``uri`` is inside the store, else raise."""


def read_trusted(store: BlobStore, uri: str) -> AbstractContextManager[Path]:
    """A local path for a URI from the registry (a model), which may lie outside the store
    (the shipped model is registered where it is); never for a URI taken from an event."""
    if store.contains(uri) or urlparse(uri).scheme != "file":
        return store.local_path(uri)
    return contextlib.nullcontext(uri_to_path(uri))


@contextlib.contextmanager
def open_checked(store: BlobStore, uri: str, sha256: str) -> Iterator[Path]:
    """A registry file (a model) by URI (see :func:`read_trusted`), checked against its hash."""
    with read_trusted(store, uri) as path:
        if sha256_file(path) != sha256:
            raise ValueError(f"{_shown(uri)} fails its registered checksum")
        yield path


# ---------------------------------------------------------------- a local folder


class FileBlobStore(BlobStore):
    """Files at ``root/<kind>/<id[:2]>/<id><suffix>``, written atomically (temp + rename)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(os.path.abspath(root))

    def path_for(self, kind: str, blob_id: str, suffix: str) -> Path:
        return self.root / blob_key(kind, blob_id, suffix)

    def uri_for(self, kind: str, blob_id: str, suffix: str) -> str:
        return self.path_for(kind, blob_id, suffix).as_uri()

    def put_file(self, kind: str, blob_id: str, suffix: str, source: Path) -> str:
        target = self.path_for(kind, blob_id, suffix)
        if not target.exists():
            with _AtomicWrite(target) as tmp:
                shutil.copyfile(source, tmp)
        return target.as_uri()

    def writer(self, kind: str, blob_id: str, suffix: str) -> _AtomicWrite:
        return _AtomicWrite(self.path_for(kind, blob_id, suffix))

    def local_path(self, uri: str) -> AbstractContextManager[Path]:
        return contextlib.nullcontext(self._inside(uri))

    def exists(self, uri: str) -> bool:
        return self.contains(uri) and self._inside(uri).is_file()

    def _inside(self, uri: str) -> Path:
        """The file, symlinks resolved, if it lies inside the root."""
        if urlparse(uri).scheme != "file":
            raise BlobOutsideStore(f"{_shown(uri)} is not a file:// URI of the blob store")
        path = uri_to_path(uri)
        if not path.is_absolute() or not path.resolve().is_relative_to(self.root.resolve()):
            raise BlobOutsideStore(f"{_shown(uri)} lies outside the blob store {self.root}")
        return path.resolve()


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


# ---------------------------------------------------------------- an S3-compatible bucket


def s3_client(settings: Settings) -> Minio:
    """A client of ``RLIMPACT_S3_ENDPOINT`` with the configured credentials."""
    from minio import Minio

    endpoint = urlparse(settings.s3_endpoint)
    if endpoint.scheme not in ("http", "https") or not endpoint.netloc:
        raise ValueError(
            f"RLIMPACT_S3_ENDPOINT must be http(s)://host:port, got {settings.s3_endpoint!r}"
        )
    return Minio(
        endpoint.netloc,
        access_key=settings.s3_access_key,
        secret_key=settings.s3_secret_key.get_secret_value(),
        secure=endpoint.scheme == "https",
        region=settings.s3_region,
    )


class S3BlobStore(BlobStore):
    """Objects at ``s3://<bucket>/<prefix><kind>/<id[:2]>/<id><suffix>``.

    Reads download to a private temporary file, removed after use; writes go to a temporary
    file uploaded in one piece on success, so a reader never sees half a blob. Picklable (the
    parser's worker processes get a copy): the client is made where it is first used.
    """

    def __init__(self, settings: Settings, bucket: str, prefix: str) -> None:
        if not bucket:
            raise ValueError("the S3 blob store needs a bucket: set RLIMPACT_BLOB_BUCKET")
        if prefix and (not prefix.endswith("/") or prefix.startswith("/")):
            raise ValueError(f"RLIMPACT_BLOB_PREFIX must be empty or end in '/': {prefix!r}")
        self.settings = settings
        self.bucket = bucket
        self.prefix = prefix
        self._client: Minio | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None}

    @property
    def client(self) -> Minio:
        if self._client is None:
            self._client = s3_client(self.settings)
        return self._client

    def uri_for(self, kind: str, blob_id: str, suffix: str) -> str:
        return s3_uri(self.bucket, self.prefix + blob_key(kind, blob_id, suffix))

    def put_file(self, kind: str, blob_id: str, suffix: str, source: Path) -> str:
        uri = self.uri_for(kind, blob_id, suffix)
        if not self.exists(uri):
            self._upload(source, self._inside(uri))
        return uri

    @contextlib.contextmanager
    def writer(self, kind: str, blob_id: str, suffix: str) -> Iterator[Path]:
        key = self._inside(self.uri_for(kind, blob_id, suffix))
        with tempfile.TemporaryDirectory(prefix="rlimpact-blob-") as tmp:
            path = Path(tmp) / f"blob{suffix}"
            path.touch()
            yield path
            self._upload(path, key)

    @contextlib.contextmanager
    def local_path(self, uri: str) -> Iterator[Path]:
        key = self._inside(uri)
        with tempfile.TemporaryDirectory(prefix="rlimpact-blob-") as tmp:
            path = Path(tmp) / Path(key).name
            with self._errors(uri, missing_ok=False):
                self.client.fget_object(self.bucket, key, str(path))
            yield path

    def exists(self, uri: str) -> bool:
        if not self.contains(uri):
            return False
        with self._errors(uri, missing_ok=True):
            self.client.stat_object(self.bucket, self._inside(uri))
            return True
        return False

    def _upload(self, path: Path, key: str) -> None:
        with self._errors(s3_uri(self.bucket, key), missing_ok=False):
            self.client.fput_object(self.bucket, key, str(path))

    @contextlib.contextmanager
    def _errors(self, uri: str, *, missing_ok: bool) -> Iterator[None]:
        """S3 errors as the interface's: a missing object, or the store unreachable."""
        from minio.error import S3Error
        from urllib3.exceptions import HTTPError

        try:
            yield
        except S3Error as error:
            if error.code in ("NoSuchKey", "NoSuchObject"):
                if missing_ok:
                    return
                raise FileNotFoundError(f"no blob at {_shown(uri)}") from error
            raise BlobStoreUnavailable(f"cannot use {_shown(uri)}: {error}") from error
        except HTTPError as error:
            raise BlobStoreUnavailable(f"cannot reach {_shown(uri)}: {error}") from error

    def _inside(self, uri: str) -> str:
        """The object key, if ``uri`` names one under the prefix of the store's bucket."""
        parsed = urlparse(uri)
        if parsed.scheme != S3_SCHEME or parsed.netloc != self.bucket:
            raise BlobOutsideStore(f"{_shown(uri)} is not in the blob bucket {self.bucket!r}")
        key = unquote(parsed.path.removeprefix("/"))
        segments = key.removeprefix(self.prefix).split("/")
        if not key.startswith(self.prefix) or any(s in ("", ".", "..") for s in segments):
            raise BlobOutsideStore(f"{_shown(uri)} lies outside {s3_uri(self.bucket, self.prefix)}")
        if parsed.query or parsed.fragment or parsed.params:
            raise BlobOutsideStore(f"{_shown(uri)} has a query or fragment")
        return key


def open_blob_store(settings: Settings) -> BlobStore:
    """The blob store ``RLIMPACT_BLOB_STORE`` names (``file``: ``RLIMPACT_STORAGE_DIR``, ``s3``:
    ``RLIMPACT_BLOB_BUCKET`` or else ``RLIMPACT_S3_BUCKET``, under ``RLIMPACT_BLOB_PREFIX``)."""
    if settings.blob_store == "s3":
        bucket = settings.blob_bucket or settings.s3_bucket or ""
        return S3BlobStore(settings, bucket, settings.blob_prefix)
    return FileBlobStore(settings.blob_dir)
