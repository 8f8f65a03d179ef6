"""Trainer: ``train.requested`` -> PyTorch on featurized replays -> ONNX -> ``models``."""
