"""The S3-compatible bucket: listing, size-limited downloads, uploads (blocking; minio-py).

Objects are named by ``s3://<bucket>/<key>`` URIs with the key percent-encoded, so a hostile
key (control characters, NUL) can travel in an event or sit in Postgres without harm.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from urllib.parse import unquote, urlparse

from minio.error import S3Error
from urllib3.exceptions import HTTPError

from services.ingestor.ingest import IngestRejected, copy_limited, shown
from shared.settings import Settings
from shared.storage import S3_SCHEME, s3_client, s3_uri

__all__ = ["Bucket", "BucketUnavailable", "ObjectInfo", "parse_s3_uri", "s3_uri"]


class BucketUnavailable(Exception):
    """The bucket cannot be reached or does not exist: a reason to retry later, not to reject."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    etag: str
    size: int


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> (bucket, key), the key decoded."""
    parsed = urlparse(uri)
    if parsed.scheme != S3_SCHEME or not parsed.netloc or len(parsed.path) < 2:
        raise IngestRejected(f"{shown(uri)} is not an s3://bucket/key URI")
    return parsed.netloc, unquote(parsed.path[1:])


class Bucket:
    """The configured bucket of an S3-compatible server (``RLIMPACT_S3_*``)."""

    def __init__(self, settings: Settings, name: str | None = None) -> None:
        bucket = name or settings.s3_bucket
        if not bucket:
            raise ValueError("no bucket configured: set RLIMPACT_S3_BUCKET")
        self.name = bucket
        self.client = s3_client(settings)

    def uri(self, key: str) -> str:
        return s3_uri(self.name, key)

    def exists(self) -> bool:
        try:
            return self.client.bucket_exists(self.name)
        except (S3Error, HTTPError) as error:
            raise BucketUnavailable(f"cannot reach {self.uri('')}: {error}") from error

    def create(self) -> bool:
        """Create the bucket; False if it was already there."""
        if self.exists():
            return False
        try:
            self.client.make_bucket(self.name)
        except (S3Error, HTTPError) as error:
            raise BucketUnavailable(f"cannot create {self.uri('')}: {error}") from error
        return True

    def list(self, prefix: str, start_after: str | None = None) -> Iterator[ObjectInfo]:
        """The objects under ``prefix`` in key order (after ``start_after``)."""
        try:
            for item in self.client.list_objects(
                self.name, prefix=prefix, recursive=True, start_after=start_after
            ):
                if item.is_dir or item.object_name is None:
                    continue
                yield ObjectInfo(item.object_name, (item.etag or "").strip('"'), item.size or 0)
        except (S3Error, HTTPError) as error:
            raise BucketUnavailable(f"cannot list {self.uri(prefix)}: {error}") from error

    def page(self, prefix: str, start_after: str | None, limit: int) -> builtins.list[ObjectInfo]:
        return list(islice(self.list(prefix, start_after), limit))

    def stat(self, key: str) -> ObjectInfo | None:
        """The object's etag and size; None if there is no such object."""
        try:
            item = self.client.stat_object(self.name, key)
        except S3Error as error:
            if error.code in ("NoSuchKey", "NoSuchObject"):
                return None
            raise BucketUnavailable(f"cannot read {self.uri(key)}: {error}") from error
        except HTTPError as error:
            raise BucketUnavailable(f"cannot read {self.uri(key)}: {error}") from error
        return ObjectInfo(key, (item.etag or "").strip('"'), item.size or 0)

    def download(self, item: ObjectInfo, target: Path, max_bytes: int) -> bool:
        """Stream the object (that version only) into ``target``, refusing it once it grows past
        ``max_bytes``; False if the object is gone or was replaced since it was listed."""
        try:
            response = self.client.get_object(
                self.name, item.key, request_headers={"If-Match": f'"{item.etag}"'}
            )
        except S3Error as error:
            if error.code in ("NoSuchKey", "NoSuchObject", "PreconditionFailed"):
                return False
            raise BucketUnavailable(f"cannot read {self.uri(item.key)}: {error}") from error
        except HTTPError as error:
            raise BucketUnavailable(f"cannot read {self.uri(item.key)}: {error}") from error
        try:
            with target.open("wb") as handle:
                copy_limited(response, handle, max_bytes)
        except HTTPError as error:
            raise BucketUnavailable(f"cannot read {self.uri(item.key)}: {error}") from error
        finally:
            response.close()
            response.release_conn()
        return True

    def upload(self, path: Path, key: str) -> None:
        try:
            self.client.fput_object(self.name, key, str(path))
        except (S3Error, HTTPError) as error:
            raise BucketUnavailable(f"cannot write {self.uri(key)}: {error}") from error
