"""The real TensorRT-RTX module for tests: skipped where it is not installed, a failure where CI said it must be."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest

from runtime.artifacts import CALIBRATION_MANIFEST_FILE, FP16_ONNX, FP32_ONNX, INT8_CPU_ONNX, INT8_FP16_ONNX, INT8_ONNX

REQUIRE_ENV = "ROADSEG_REQUIRE_TENSORRT_RTX"


def real_tensorrt_rtx():
    """`tensorrt_rtx`, or a skip; with ROADSEG_REQUIRE_TENSORRT_RTX=1 (set by .ci/run) a missing module fails."""
    try:
        return importlib.import_module("tensorrt_rtx")
    except ImportError as error:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{REQUIRE_ENV}=1 but tensorrt_rtx does not import ({error}); run `make setup-rtx`")
        pytest.skip("TensorRT-RTX is not installed (make setup-rtx)")


def make_tiny_artifacts(build: Path, dynamic_batch: bool = True) -> Path:
    """Every ONNX artifact (model.{fp32,fp16,int8,int8_fp16,int8_cpu}.onnx), made by the project's own export
    and quantization code from a small random FCN-8s at 64x192, with a calibration manifest and tensors; the batch
    axis symbolic as `python -m export` writes it, or fixed at 1 (`dynamic_batch=False`)."""
    import numpy as np
    import torch

    from calibration.cpu_tuned import quantize_cpu_tuned
    from calibration.quantize import preprocess_for_quantization, quantize_int8
    from calibration.strongly_typed import write_int8_fp16
    from export.fp16 import write_fp16
    from export.onnx_export import export_onnx
    from runtime.contract import PreprocessSpec
    from train.model import FCN8s

    torch.manual_seed(0)
    model = FCN8s(num_classes=2, width=0.125).eval()
    fp32 = build / FP32_ONNX
    export_onnx(model, PreprocessSpec(64, 192), model.arch(), {"config": "test"}, fp32, dynamic_batch=dynamic_batch)
    write_fp16(fp32, build / FP16_ONNX)
    tensors = np.random.default_rng(0).standard_normal((4, 3, 64, 192)).astype(np.float32)
    prepared = preprocess_for_quantization(fp32, build / "prep.onnx")
    import onnx

    # As `python -m calibration` does: every INT8 file carries the FP32 file's contract.
    stamp = {p.key: p.value for p in onnx.load(str(fp32)).metadata_props}
    quantize_int8(prepared, build / INT8_ONNX, tensors, "minmax", metadata=stamp)
    write_int8_fp16(build / INT8_ONNX, build / INT8_FP16_ONNX)
    quantize_cpu_tuned(prepared, build / INT8_CPU_ONNX, tensors, "minmax", stamp, "")
    (build / "calibration").mkdir()
    (build / CALIBRATION_MANIFEST_FILE).write_text('{"format": "roadseg-calibration-v1"}\n')
    np.save(build / "calibration" / "tensors.npy", tensors)
    return build
