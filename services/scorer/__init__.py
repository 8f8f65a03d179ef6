"""Scorer: ``features.ready`` -> onnxruntime impact model -> ``scores`` + ``scores.emitted``."""
