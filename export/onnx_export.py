"""Checkpoint -> FP32 ONNX with the preprocessing contract in its metadata."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import onnx

from runtime.contract import MAX_BATCH, MODEL_KEY, PRECISION_KEY, PREPROCESS_KEY, TRAINING_KEY, PreprocessSpec
from runtime.ioutil import atomic_write_bytes

if TYPE_CHECKING:  # torch is needed to export, not to stamp metadata (calibration imports set_metadata)
    import torch

COMMIT_KEY = "roadseg.source_commit"
DEFAULT_OPSET = 17
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
BATCH_AXIS = "batch"  # the symbolic batch dimension's name in the graph


def source_commit() -> str:
    try:
        result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                timeout=5, cwd=Path(__file__).resolve().parent)
        return result.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def roadseg_metadata(spec: PreprocessSpec, arch: dict, summary: dict, precision: str) -> dict[str, str]:
    """The metadata_props every roadseg ONNX carries; the runtime reads the contract from here only."""
    return {
        PREPROCESS_KEY: spec.to_json(),
        MODEL_KEY: json.dumps({**arch, "class_names": list(spec.class_names)}, sort_keys=True),
        PRECISION_KEY: precision,
        TRAINING_KEY: json.dumps(summary, sort_keys=True, default=str),
        COMMIT_KEY: source_commit(),
    }


def set_metadata(model: onnx.ModelProto, metadata: dict[str, str]) -> None:
    del model.metadata_props[:]
    for key, value in sorted(metadata.items()):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def export_onnx(model: torch.nn.Module, spec: PreprocessSpec, arch: dict, summary: dict, out_path: str | Path,
                opset: int = DEFAULT_OPSET, dynamic_batch: bool = True) -> onnx.ModelProto:
    """Trace the model at the contract's input size and write it atomically with its metadata. The batch axis is
    symbolic (1..MAX_BATCH) unless `dynamic_batch=False`: one file serves one camera or a batch of many."""
    import torch

    model = model.eval().cpu()
    example = torch.zeros(1, 3, *spec.size_hw)
    dynamic_shapes = {"x": {0: torch.export.Dim(BATCH_AXIS, min=1, max=MAX_BATCH)}} if dynamic_batch else None
    program = torch.onnx.export(model, (example,), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                opset_version=opset, dynamo=True, external_data=False,
                                dynamic_shapes=dynamic_shapes, verbose=False)
    program.optimize()
    proto = program.model_proto
    set_metadata(proto, roadseg_metadata(spec, arch, summary, "fp32"))
    onnx.checker.check_model(proto)
    proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    atomic_write_bytes(out_path, proto.SerializeToString())
    return proto
