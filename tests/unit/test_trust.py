"""Services trust no event: claim checks stay inside the blob store, bytes must hash to the
replay id, and no event makes a stored replay's frames or players another file's."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import pytest

from services.featurizer.service import check_frames, featurize_to_store
from services.parser.parse import ReplayParseError
from services.parser.service import ContentMismatch, check_upload, parse_to_store
from shared.events import FramesParsed, ReplayUploaded
from shared.frames import FRAMES_SUFFIX, LEGACY_FRAMES_SUFFIX
from shared.settings import Settings, ValidationRules
from shared.storage import (
    BlobOutsideStore,
    FileBlobStore,
    S3BlobStore,
    open_blob_store,
    read_trusted,
)

RULES = ValidationRules()


@pytest.fixture(scope="module")
def two(good_replays):
    """Two small corpus replays."""
    return sorted(good_replays, key=lambda r: r.path.stat().st_size)[:2]


@pytest.fixture
def store(tmp_path: Path) -> FileBlobStore:
    return FileBlobStore(tmp_path / "blobs")


def _upload(replay_id: str, uri: str) -> ReplayUploaded:
    return ReplayUploaded(replay_id=replay_id, uri=uri, filename="x.replay", size_bytes=1)


# ---------------------------------------------------------------- the blob store


def test_the_file_store_opens_only_its_own_files(store: FileBlobStore, tmp_path: Path):
    outside = tmp_path / "secret.txt"
    outside.write_text("not a blob")
    (store.root / "replays").mkdir(parents=True)
    (store.root / "replays" / "link.replay").symlink_to(outside)
    for uri in (
        "file:///etc/passwd",
        f"file://{store.root}/../secret.txt",
        f"file://{store.root}/replays/link.replay",  # a symlink out of the store
        f"file://{store.root}-other/replays/x.replay",  # a sibling folder sharing the prefix
        "s3://bucket/blobs/replays/ab/x.replay",
        "relative/path.replay",
    ):
        with pytest.raises(BlobOutsideStore):
            store.local_path(uri).__enter__()
        assert not store.contains(uri) and not store.exists(uri)
    uri = store.put_file("replays", "ab12", ".replay", outside)
    with store.local_path(uri) as path:
        assert path.read_text() == "not a blob"


def test_a_claim_check_must_be_the_blob_kept_for_that_id(store: FileBlobStore):
    store.expect(store.uri_for("frames", "aa11", ".npz"), "frames", "aa11", ".npz")
    with pytest.raises(BlobOutsideStore, match="not the stored frames blob"):
        store.expect(store.uri_for("frames", "bb22", ".npz"), "frames", "aa11", ".npz")


def test_the_s3_store_opens_only_keys_under_its_prefix():
    store = S3BlobStore(Settings(), "blobs-bucket", "blobs/")
    own = store.uri_for("replays", "ab12", ".replay")
    assert own == "s3://blobs-bucket/blobs/replays/ab/ab12.replay" and store.contains(own)
    for uri in (
        "s3://other-bucket/blobs/replays/ab/ab12.replay",
        "s3://blobs-bucket/incoming/x.replay",
        "s3://blobs-bucket/blobs/../incoming/x.replay",
        "s3://blobs-bucket/blobs/replays//x.replay",
        "s3://blobs-bucket/blobs/replays/ab/ab12.replay?versionId=1",
        "file:///etc/passwd",
    ):
        assert not store.contains(uri), uri
        with pytest.raises(BlobOutsideStore):
            store.local_path(uri).__enter__()
    assert pickle.loads(pickle.dumps(store)).uri_for("replays", "ab12", ".replay") == own


def test_the_configuration_chooses_the_store(tmp_path: Path):
    assert isinstance(open_blob_store(Settings(storage_dir=tmp_path)), FileBlobStore)
    s3 = open_blob_store(Settings(blob_store="s3", s3_bucket="replays"))
    assert isinstance(s3, S3BlobStore) and (s3.bucket, s3.prefix) == ("replays", "blobs/")
    own = open_blob_store(Settings(blob_store="s3", s3_bucket="a", blob_bucket="b"))
    assert isinstance(own, S3BlobStore) and own.bucket == "b"
    with pytest.raises(ValueError, match="needs a bucket"):
        open_blob_store(Settings(blob_store="s3"))


def test_registry_files_may_lie_outside_the_store_but_not_in_another_bucket(tmp_path: Path):
    model = tmp_path / "impact.onnx"
    model.write_bytes(b"onnx")
    store = S3BlobStore(Settings(), "blobs-bucket", "blobs/")
    with read_trusted(store, model.as_uri()) as path:
        assert path == model
    with pytest.raises(BlobOutsideStore):
        read_trusted(store, "s3://elsewhere/model.onnx").__enter__()


# ---------------------------------------------------------------- the parser


def test_an_event_naming_no_known_replay_is_refused():
    assert check_upload(_upload("ab" * 32, "file:///x"), None, None).action == "refuse"


def test_a_forged_replay_id_is_refused_without_touching_that_replay():
    """A schema-valid event naming an existing replay with another file's URI: refused (no
    parse, and no 'failed' for the replay it names)."""
    check = check_upload(_upload("ab" * 32, "file:///blobs/other"), "file:///blobs/mine", "scored")
    assert check.action == "refuse" and "is stored at" in check.reason


def test_a_redelivery_past_the_parse_stage_changes_nothing():
    uri = "file:///blobs/mine"
    assert check_upload(_upload("ab" * 32, uri), uri, "featurized").action == "skip"
    assert check_upload(_upload("ab" * 32, uri), uri, "uploaded").action == "parse"
    assert check_upload(_upload("ab" * 32, uri), uri, "failed").action == "parse"


def test_the_parser_reads_nothing_outside_the_store(store: FileBlobStore):
    replay_id = hashlib.sha256(b"").hexdigest()
    with pytest.raises(ReplayParseError, match=r"refused:.*outside the blob store"):
        parse_to_store("file:///etc/passwd", replay_id, 10.0, store, RULES)
    assert not list(store.root.rglob(f"*{FRAMES_SUFFIX}"))


def test_bytes_that_do_not_hash_to_the_replay_id_are_refused(store: FileBlobStore, two):
    first, second = two
    # The second replay's bytes, stored where the first replay's belong.
    uri = store.put_file("replays", first.sha256, ".replay", second.path)
    with pytest.raises(ContentMismatch, match="not to the replay id"):
        parse_to_store(uri, first.sha256, 10.0, store, RULES)
    assert not store.exists(store.uri_for("frames", first.sha256, FRAMES_SUFFIX))


def test_another_files_event_never_replaces_a_stored_replays_frames(store: FileBlobStore, two):
    first, second = two
    uri_first = store.put_file("replays", first.sha256, ".replay", first.path)
    uri_second = store.put_file("replays", second.sha256, ".replay", second.path)
    parsed = parse_to_store(uri_first, first.sha256, 10.0, store, RULES)
    frames = store.path_for("frames", first.sha256, FRAMES_SUFFIX)
    before = frames.read_bytes()
    # The forged event: the first replay's id, the second file. The service refuses it on the
    # stored URI; the worker itself refuses the bytes.
    forged = _upload(first.sha256, uri_second)
    assert check_upload(forged, uri_first, "scored").action == "refuse"
    with pytest.raises(ContentMismatch):
        parse_to_store(uri_second, first.sha256, 10.0, store, RULES)
    assert frames.read_bytes() == before and parsed.frames_uri == frames.as_uri()


# ---------------------------------------------------------------- featurizer and scorer


def _frames_event(replay_id: str, frames_uri: str) -> FramesParsed:
    return FramesParsed(
        replay_id=replay_id, frames_uri=frames_uri, n_frames=1, fps=10, team_size=1,
        players=[], goals=[],
    )  # fmt: skip


def test_the_featurizer_takes_only_the_frames_stored_for_the_replay(store: FileBlobStore):
    mine, other = "aa" * 32, "bb" * 32
    own = store.uri_for("frames", mine, FRAMES_SUFFIX)
    assert check_frames(_frames_event(mine, own), store, "parsed") is None
    legacy = store.uri_for("frames", mine, LEGACY_FRAMES_SUFFIX)  # stored before format 3
    assert check_frames(_frames_event(mine, legacy), store, "parsed") is None
    assert "not a known replay" in (check_frames(_frames_event(mine, own), store, None) or "")
    for uri in (store.uri_for("frames", other, FRAMES_SUFFIX), "file:///etc/passwd"):
        assert "not the stored frames blob" in (
            check_frames(_frames_event(mine, uri), store, "parsed") or ""
        )


def test_a_frames_file_of_another_replay_is_not_featurized_as_this_one(store: FileBlobStore, two):
    first, second = two
    uri = store.put_file("replays", second.sha256, ".replay", second.path)
    parsed = parse_to_store(uri, second.sha256, 10.0, store, RULES)
    misplaced = store.put_file(
        "frames",
        first.sha256,
        FRAMES_SUFFIX,
        store.path_for("frames", second.sha256, FRAMES_SUFFIX),
    )
    with pytest.raises(ValueError, match="frames file is replay"):
        featurize_to_store(
            parsed.model_copy(update={"replay_id": first.sha256, "frames_uri": misplaced}),
            10.0,
            store,
        )
    with pytest.raises(BlobOutsideStore):
        featurize_to_store(
            parsed.model_copy(update={"frames_uri": "file:///etc/passwd"}), 10.0, store
        )


def test_the_scorer_reads_only_the_features_stored_for_the_replay(store: FileBlobStore):
    from shared.features.dataset import read_stored_features

    with pytest.raises(BlobOutsideStore):
        read_stored_features(store, "file:///etc/passwd")
    with pytest.raises(BlobOutsideStore):
        store.expect(store.uri_for("features", "bb22", ".parquet"), "features", "aa11", ".parquet")
