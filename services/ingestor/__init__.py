"""Ingestor: watched folder, S3 bucket, replay.submitted -> blob store + ``replays`` row ->
``replay.uploaded``."""
