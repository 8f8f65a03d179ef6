"""ONNX export of a trained model, with its metadata, and a parity check against torch."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from shared.features.table import (
    FEATURE_SCHEMA_VERSION,
    N_FEATURES,
)
from shared.model import INPUT_NAME, META_KIND, META_SCHEMA, META_VERSION, OUTPUT_NAME


@dataclass(frozen=True)
class OnnxSignature:
    """Names, an example input and the dynamic axes of a model's one input and one output."""

    input_name: str = INPUT_NAME
    output_name: str = OUTPUT_NAME
    example_shape: tuple[int, ...] = (1, N_FEATURES)
    dynamic_axes: dict[str, dict[int, str]] = field(
        default_factory=lambda: {INPUT_NAME: {0: "rows"}, OUTPUT_NAME: {0: "rows"}}
    )


def export_onnx(
    model: nn.Module,
    path: Path,
    version: str,
    *,
    kind: str = "impact",
    signature: OnnxSignature = OnnxSignature(),
    metadata: dict[str, str] | None = None,
) -> None:
    """Write ``model`` as ONNX with its version, kind and feature schema in the metadata."""
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (torch.zeros(*signature.example_shape),),
            str(path),
            input_names=[signature.input_name],
            output_names=[signature.output_name],
            dynamic_axes=signature.dynamic_axes,
            dynamo=False,
        )
    proto = onnx.load(str(path))
    entries = {
        META_VERSION: version,
        META_SCHEMA: str(FEATURE_SCHEMA_VERSION),
        META_KIND: kind,
        **(metadata or {}),
    }
    for key, value in entries.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))


def onnx_parity(
    model: nn.Module, path: Path, inputs: np.ndarray, signature: OnnxSignature = OnnxSignature()
) -> float:
    """Largest absolute difference between torch and onnxruntime outputs on ``inputs``."""
    model.eval()
    with torch.no_grad():
        expected = model(torch.from_numpy(inputs)).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run([signature.output_name], {signature.input_name: inputs})
    return float(np.max(np.abs(got - expected))) if expected.size else 0.0
