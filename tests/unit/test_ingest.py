from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from services.ingestor.ingest import FolderWatcher, IngestRejected, upload_event
from shared.storage import BlobStore, uri_to_path


def test_watcher_yields_a_file_once_it_stops_changing(tmp_path: Path):
    watcher = FolderWatcher(tmp_path)
    replay = tmp_path / "sub" / "a.replay"
    replay.parent.mkdir()
    replay.write_bytes(b"abc")
    (tmp_path / "notes.txt").write_text("not a replay")
    assert watcher.poll() == []  # first sighting: maybe still being written
    assert watcher.poll() == [replay]
    assert watcher.poll() == []  # never twice for the same size and mtime
    replay.write_bytes(b"abcdef")
    os.utime(replay, ns=(1, 1))
    assert watcher.poll() == []
    assert watcher.poll() == [replay]


def test_same_content_under_two_names_is_one_blob(tmp_path: Path):
    store = BlobStore(tmp_path / "blobs")
    first, second = tmp_path / "a.replay", tmp_path / "b.replay"
    first.write_bytes(b"same bytes")
    second.write_bytes(b"same bytes")
    a = upload_event(first, store, max_bytes=100, source="test")
    b = upload_event(second, store, max_bytes=100, source="test")
    assert a.replay_id == b.replay_id == hashlib.sha256(b"same bytes").hexdigest()
    assert a.uri == b.uri and uri_to_path(a.uri).read_bytes() == b"same bytes"
    assert len(list((tmp_path / "blobs").rglob("*.replay"))) == 1


@pytest.mark.parametrize(("content", "reason"), [(b"x" * 101, "over the limit"), (b"", "empty")])
def test_unfit_files_are_rejected_with_a_reason(tmp_path: Path, content: bytes, reason: str):
    path = tmp_path / "x.replay"
    path.write_bytes(content)
    with pytest.raises(IngestRejected, match=reason):
        upload_event(path, BlobStore(tmp_path / "blobs"), max_bytes=100, source="test")
