-- Objects the ingestor took from the S3-compatible bucket or from replay.submitted, one row per
-- object version: a restart neither takes an object in twice nor misses one.
CREATE TABLE ingest_objects (
    uri         text NOT NULL,    -- s3://bucket/key (key percent-encoded) or file://…
    etag        text NOT NULL,    -- the object's ETag; empty for a file (removed once taken in)
    size_bytes  bigint NOT NULL,
    source      text NOT NULL,    -- 's3', or the source named in replay.submitted
    outcome     text NOT NULL CHECK (outcome IN ('new', 'duplicate', 'rejected')),
    replay_id   text NOT NULL,    -- sha256 of the bytes; for a rejection, of the URI
    reason      text,             -- why it was rejected
    seen_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (uri, etag)
);
