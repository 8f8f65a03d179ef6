from __future__ import annotations

import argparse
import hashlib
import io
import os
from pathlib import Path

import pytest

from services.cli import build_parser
from services.cli.ingest import stage_file
from services.ingestor import ingest
from services.ingestor.ingest import (
    MAX_KEY_BYTES,
    SNIFF_BYTES,
    FolderWatcher,
    IngestRejected,
    check_file,
    check_name,
    check_size,
    copy_limited,
    rejection_id,
    resolve_inside,
    shown,
    sniff_replay,
    upload_event,
)
from services.ingestor.s3 import parse_s3_uri, s3_uri
from shared.events import ReplaySubmitted, decode, encode
from shared.settings import Settings
from shared.storage import FileBlobStore, uri_to_path


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


def test_same_content_under_two_names_is_one_blob(tmp_path: Path, standard_replay):
    store = FileBlobStore(tmp_path / "blobs")
    content = standard_replay.path.read_bytes()
    first, second = tmp_path / "a.replay", tmp_path / "b.replay"
    first.write_bytes(content)
    second.write_bytes(content)
    a = upload_event(first, store, max_bytes=len(content), source="test")
    b = upload_event(second, store, max_bytes=len(content), source="test")
    assert a.replay_id == b.replay_id == hashlib.sha256(content).hexdigest()
    assert a.uri == b.uri and uri_to_path(a.uri).read_bytes() == content
    assert (a.filename, b.filename) == ("a.replay", "b.replay")
    assert len(list((tmp_path / "blobs").rglob("*.replay"))) == 1


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"x" * 101, "over the limit"),
        (b"", "empty"),
        (b"<html>this is not a replay at all</html>", "not a Rocket League replay"),
        (b"TAGame.Replay_", "not a Rocket League replay"),  # too short to be one
    ],
)
def test_unfit_files_are_rejected_with_a_reason(tmp_path: Path, content: bytes, reason: str):
    path = tmp_path / "x.replay"
    path.write_bytes(content)
    store = FileBlobStore(tmp_path / "blobs")
    with pytest.raises(IngestRejected, match=reason):
        upload_event(path, store, max_bytes=100, source="test")
    assert not (tmp_path / "blobs").exists(), "nothing is stored for a rejected file"


def test_a_hostile_file_name_is_rejected_before_anything_is_stored(tmp_path, standard_replay):
    store = FileBlobStore(tmp_path / "blobs")
    with pytest.raises(IngestRejected, match="path segment"):
        upload_event(standard_replay.path, store, 10**9, "test", filename="../../etc/x.replay")
    assert not (tmp_path / "blobs").exists()


def test_the_sniff_refuses_only_files_that_cannot_parse(manifest):
    """Every replay that parses passes, and so do the fuzzed ones in bad/ (the parser says what
    is wrong with those); the corpus's header-less fragments of replays are refused."""
    refused = []
    for row in manifest:
        try:
            with row.path.open("rb") as handle:
                sniff_replay(handle.read(SNIFF_BYTES))
        except IngestRejected:
            refused.append(row)
    assert refused, "the corpus has fragments without a replay header"
    assert all(not row.subtr_actor_ok and row.path.parent.name != "bad" for row in refused)
    assert all("partial" in row.path.name for row in refused)


@pytest.mark.parametrize(
    ("name", "base"),
    [
        ("a.replay", "a.replay"),
        ("incoming/2026/my game (1).replay", "my game (1).replay"),
        ("incoming/ré plày ⚽.replay", "ré plày ⚽.replay"),
        ("incoming/..hidden.replay", "..hidden.replay"),  # dots inside a name are fine
        ("notes.txt", "notes.txt"),  # the name is not judged by its suffix; the bytes are
    ],
)
def test_ordinary_names_pass_and_give_their_last_segment(name: str, base: str):
    assert check_name(name) == base


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "empty"),
        ("../evil.replay", "path segment"),
        ("incoming/../../etc/passwd", "path segment"),
        ("incoming/./x.replay", "path segment"),
        ("incoming//x.replay", "path segment"),
        ("incoming/..", "path segment"),
        ("/etc/passwd", "absolute"),
        ("C:evil.replay", "absolute"),
        ("..\\..\\evil.replay", "backslash"),
        ("a\x00b.replay", "NUL"),
        ("evil\n.replay", "control"),
        ("evil\x1b[31m.replay", "control"),
        ("evil\u202eyalper.exe", "control"),  # right-to-left override
        ("incoming/", "folder"),
        ("x" * 300 + ".replay", "over 255 bytes"),
        ("a/" * 600 + "x.replay", f"over {MAX_KEY_BYTES} bytes"),
    ],
)
def test_hostile_names_are_rejected(name: str, reason: str):
    with pytest.raises(IngestRejected, match=reason):
        check_name(name)


def test_names_in_reasons_are_escaped_and_short():
    text = shown("evil\n\x00" + "x" * 500)
    assert "\n" not in text and "\x00" not in text and "\\n" in text
    assert len(text) < 120 and "(506 characters)" in text


def test_size_limits():
    check_size(100, 100)
    with pytest.raises(IngestRejected, match="over the limit of 100"):
        check_size(101, 100)
    with pytest.raises(IngestRejected, match="empty"):
        check_size(0, 100)


def test_a_stream_is_cut_off_once_it_grows_past_the_limit():
    target = io.BytesIO()
    assert copy_limited(io.BytesIO(b"x" * 100), target, 100) == 100
    assert target.getvalue() == b"x" * 100
    with pytest.raises(IngestRejected, match="over the limit of 100 bytes"):
        copy_limited(io.BytesIO(b"x" * 101), io.BytesIO(), 100)


def test_paths_must_stay_inside_their_folder(tmp_path: Path):
    root = tmp_path / "incoming"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "ok.replay").write_bytes(b"x")
    secret = tmp_path / "secret.replay"
    secret.write_bytes(b"x")
    (root / "link.replay").symlink_to(secret)
    assert resolve_inside(root, root / "sub" / "ok.replay") == (root / "sub" / "ok.replay")
    for escape in (root / "link.replay", root / ".." / "secret.replay", Path("/etc/passwd")):
        with pytest.raises(IngestRejected, match="leads outside"):
            resolve_inside(root, escape)


def test_a_rejection_is_identified_by_its_uri():
    assert rejection_id("s3://b/k") == hashlib.sha256(b"s3://b/k").hexdigest()
    assert rejection_id("s3://b/k") != rejection_id("s3://b/k2")


@pytest.mark.parametrize(
    "key", ["incoming/a.replay", "incoming/a b%20c?.replay", "incoming/evil\n\x00.replay"]
)
def test_s3_uris_carry_any_key_safely(key: str):
    uri = s3_uri("replays", key)
    assert "\n" not in uri and "\x00" not in uri and " " not in uri
    assert parse_s3_uri(uri) == ("replays", key)


@pytest.mark.parametrize("uri", ["s3://bucket", "s3:///key", "file:///x.replay", "bucket/key"])
def test_malformed_s3_uris_are_rejected(uri: str):
    with pytest.raises(IngestRejected, match="not an s3://bucket/key URI"):
        parse_s3_uri(uri)


def test_upload_without_a_bucket_stages_the_file_in_the_incoming_folder(
    tmp_path: Path, standard_replay
):
    settings = Settings(data_dir=tmp_path)
    event = stage_file(standard_replay.path, settings, None, "upload")
    target = uri_to_path(event.uri)
    assert target == settings.upload_dir / standard_replay.sha256 / standard_replay.path.name
    assert target.read_bytes() == standard_replay.path.read_bytes()
    assert (event.filename, event.source) == (standard_replay.path.name, "upload")
    assert decode(ReplaySubmitted, encode(event)) == event
    assert stage_file(standard_replay.path, settings, None, "upload").uri == event.uri
    assert [p.name for p in target.parent.iterdir()] == [target.name], "no partial files left"


def test_upload_refuses_a_non_replay_before_staging_it(tmp_path: Path):
    settings = Settings(data_dir=tmp_path)
    text = tmp_path / "notes.replay"
    text.write_text("meeting notes, not a replay")
    with pytest.raises(IngestRejected, match="not a Rocket League replay"):
        stage_file(text, settings, None, "upload")
    assert not settings.upload_dir.exists()


@pytest.mark.parametrize(
    ("raw", "ok"),
    [
        (b'{"uri": "s3://replays/uploads/a.replay", "filename": "a.replay"}', True),
        (b'{"uri": "file:///x", "filename": "x", "source": "my-bot.v2"}', True),
        (b'{"uri": "file:///x", "filename": "x", "source": "Not Allowed"}', False),
        (b'{"uri": "file:///x"}', False),
        (b'{"uri": "file:///x", "filename": "x", "bytes": "AAAA"}', False),
    ],
)
def test_the_submission_message_format(raw: bytes, ok: bool):
    if ok:
        assert decode(ReplaySubmitted, raw).schema_version == 1
    else:
        with pytest.raises(ValueError):
            decode(ReplaySubmitted, raw)


def test_upload_source_is_checked_by_the_command_line(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["upload", "--source", "Bad Source", "x.replay"])
    assert "--source" in capsys.readouterr().err
    args = build_parser().parse_args(["upload", "x.replay"])
    assert isinstance(args, argparse.Namespace) and args.source == "upload"


# ---------------------------------------------------------------- hostile folder entries


def _offered(watcher: FolderWatcher) -> list[Path]:
    """What the watcher offers once entries held still for one poll."""
    assert watcher.poll() == []
    return watcher.poll()


def _refused(path: Path, store: FileBlobStore, reason: str, max_bytes: int = 10**9) -> None:
    with pytest.raises(IngestRejected, match=reason):
        upload_event(path, store, max_bytes, "test")


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    root = tmp_path / "inbox"
    root.mkdir()
    return root


def test_a_name_that_is_not_utf8_is_offered_and_refused(inbox: Path, tmp_path, standard_replay):
    raw = os.fsencode(inbox) + b"/bad-\xff\xfe.replay"
    with open(raw, "wb") as handle:
        handle.write(standard_replay.path.read_bytes())
    watcher = FolderWatcher(inbox)
    [path] = _offered(watcher)
    assert os.fsencode(path) == raw and "\udcff" in path.name  # surrogate-escaped by scandir
    store = FileBlobStore(tmp_path / "blobs")
    _refused(path, store, "is not valid UTF-8")
    assert "'bad-\\udcff\\udcfe.replay'" in shown(path.name)  # escaped in the reason
    path.as_uri()  # the dead letter's URI can be made from it
    assert not (tmp_path / "blobs").exists()


def test_a_symlink_loop_is_offered_and_refused(inbox: Path, tmp_path: Path):
    (inbox / "loop.replay").symlink_to("loop.replay")
    (inbox / "a.replay").symlink_to("b.replay")
    (inbox / "b.replay").symlink_to("a.replay")
    assert _offered(FolderWatcher(inbox)) == [
        inbox / n for n in ("a.replay", "b.replay", "loop.replay")
    ]
    store = FileBlobStore(tmp_path / "blobs")
    for name in ("loop.replay", "a.replay"):
        with pytest.raises(IngestRejected, match="symbolic link loop"):
            resolve_inside(inbox, inbox / name)
        _refused(inbox / name, store, "symbolic link loop")


def test_a_symlinked_folder_is_not_walked_so_a_folder_loop_ends(inbox: Path):
    (inbox / "sub").mkdir()
    (inbox / "sub" / "up").symlink_to(inbox, target_is_directory=True)
    (inbox / "sub" / "a.replay").write_bytes(b"x")
    assert _offered(FolderWatcher(inbox)) == [inbox / "sub" / "a.replay"]


def test_links_out_of_the_folder_and_to_nothing_are_refused(inbox: Path, tmp_path: Path):
    outside = tmp_path / "secret.replay"
    outside.write_bytes(b"secret")
    (inbox / "out.replay").symlink_to(outside)
    (inbox / "nothing.replay").symlink_to(inbox / "gone.replay")
    assert len(_offered(FolderWatcher(inbox))) == 2
    with pytest.raises(IngestRejected, match="leads outside"):
        resolve_inside(inbox, inbox / "out.replay")
    _refused(
        inbox / "nothing.replay", FileBlobStore(tmp_path / "blobs"), "symbolic link to nothing"
    )


@pytest.mark.timeout(60)
def test_a_fifo_is_refused_without_blocking(inbox: Path, tmp_path: Path):
    os.mkfifo(inbox / "pipe.replay")  # opening it for reading in blocking mode would hang
    assert _offered(FolderWatcher(inbox)) == [inbox / "pipe.replay"]
    _refused(inbox / "pipe.replay", FileBlobStore(tmp_path / "blobs"), "is a FIFO, not a file")
    with pytest.raises(IngestRejected, match="is a FIFO"):
        check_file(inbox / "pipe.replay", 100)


def test_a_folder_named_like_a_replay_is_refused_and_walked(inbox: Path, tmp_path: Path):
    (inbox / "x.replay").mkdir()
    (inbox / "x.replay" / "inner.replay").write_bytes(b"x")
    assert _offered(FolderWatcher(inbox)) == [
        inbox / "x.replay",
        inbox / "x.replay" / "inner.replay",
    ]
    _refused(inbox / "x.replay", FileBlobStore(tmp_path / "blobs"), "is a folder, not a file")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode")
def test_an_unreadable_file_is_refused(inbox: Path, tmp_path: Path):
    path = inbox / "locked.replay"
    path.write_bytes(b"x")
    path.chmod(0)
    _refused(path, FileBlobStore(tmp_path / "blobs"), "cannot be opened: Permission denied")


def test_a_file_removed_between_listing_and_reading_is_refused(inbox: Path, tmp_path: Path):
    path = inbox / "brief.replay"
    path.write_bytes(b"x")
    assert _offered(FolderWatcher(inbox)) == [path]
    path.unlink()
    _refused(path, FileBlobStore(tmp_path / "blobs"), "vanished before it was read")


@pytest.mark.parametrize("change", ["grow", "truncate", "rewrite"])
def test_a_file_that_changes_while_read_is_refused_and_nothing_stored(
    inbox: Path, tmp_path: Path, standard_replay, monkeypatch, change: str
):
    """The file really changes on disk between the start and the end of its copy."""
    path = inbox / "moving.replay"
    content = standard_replay.path.read_bytes()
    path.write_bytes(content)
    real_copy = ingest.copy_limited

    def copy_then_change(*args, **kwargs) -> int:
        size = real_copy(*args, **kwargs)
        if change == "grow":
            with path.open("ab") as handle:
                handle.write(b"more")
        elif change == "truncate":
            os.truncate(path, len(content) // 2)
        else:
            os.utime(path, ns=(1, 1))  # same size, other bytes: only the mtime tells
        return size

    monkeypatch.setattr(ingest, "copy_limited", copy_then_change)
    _refused(path, FileBlobStore(tmp_path / "blobs"), "changed while it was read")
    assert not list((tmp_path / "blobs").rglob("*.replay"))
    monkeypatch.undo()
    event = upload_event(path, FileBlobStore(tmp_path / "blobs"), 10**9, "test")  # once still
    assert event.replay_id == hashlib.sha256(path.read_bytes()).hexdigest()
    assert uri_to_path(event.uri).read_bytes() == path.read_bytes()


def test_an_entry_is_offered_once_per_size_and_mtime_and_retried_after_a_failure(inbox: Path):
    path = inbox / "a.replay"
    path.write_bytes(b"x")
    watcher = FolderWatcher(inbox)
    assert watcher.poll(now=0) == [] and watcher.poll(now=1) == [path]
    assert [watcher.poll(now=t) for t in (2, 3, 4)] == [[], [], []]  # a refusal is not repeated
    delay = watcher.retry_later(path, now=5)  # its ingest failed (a dependency down, say)
    assert 1 <= delay <= 2
    assert watcher.poll(now=5) == [] and watcher.poll(now=5 + delay / 2) == []
    assert watcher.poll(now=5 + delay) == [] and watcher.poll(now=6 + delay) == [path]
    second = watcher.retry_later(path, now=10)
    assert 2 <= second <= 4  # doubled
    watcher.succeeded(path)
    assert watcher.poll(now=11) == [] and watcher.poll(now=12) == [path]
    path.unlink()
    assert watcher.poll(now=13) == [] and watcher._done == {}  # gone: forgotten
