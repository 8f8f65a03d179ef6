"""Parser: ``replay.uploaded`` -> frames (compact array file) -> ``frames.parsed``."""
