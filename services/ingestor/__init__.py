"""Ingestor: watched folder -> blob store + ``replays`` row -> ``replay.uploaded``."""
