"""Featurizer: ``frames.parsed`` -> per-frame, per-player Parquet features -> ``features.ready``."""
