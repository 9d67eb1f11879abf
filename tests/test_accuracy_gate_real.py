"""The accuracy gate on a model that separates road: the shipped FCN-8s (MaxF ~95 on KITTI val).

A random model scores about the same MaxF whatever it outputs, so a gate that passes it proves nothing. Here the
gate must pass the shipped INT8 file against a fresh FP32 export of the same checkpoint, and must refuse the same
INT8 file once its Q/DQ weight scales are corrupted; the INT8 road masks must also match the FP32 masks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import KITTI_DIR, SHIPPED_CHECKPOINT, needs_kitti
from onnx import numpy_helper

from runtime.artifacts import FP32_ONNX, INT8_CPU_ONNX

SHIPPED_INT8_CPU = SHIPPED_CHECKPOINT.with_name(SHIPPED_CHECKPOINT.stem + ".int8_cpu.onnx")
pytestmark = [needs_kitti, pytest.mark.skipif(not SHIPPED_INT8_CPU.is_file(), reason="shipped INT8 file missing")]


@pytest.fixture(scope="module")
def gate_build(tmp_path_factory) -> Path:
    """build/ with a fresh FP32 export of the shipped checkpoint and the shipped CPU INT8 file beside it."""
    from export.onnx_export import export_onnx
    from export.stage import load_checkpoint

    build = tmp_path_factory.mktemp("gate_build")
    model, spec, payload = load_checkpoint(SHIPPED_CHECKPOINT)
    export_onnx(model, spec, payload["arch"], payload.get("summary", {}), build / FP32_ONNX)
    (build / INT8_CPU_ONNX).write_bytes(SHIPPED_INT8_CPU.read_bytes())
    return build


def gate(build: Path) -> list[dict]:
    from export.accuracy import Artifact, gate_rows

    artifacts = [Artifact("FP32", build / FP32_ONNX, "fp32", build / FP32_ONNX, "ORT CPU"),
                 Artifact("INT8", build / INT8_CPU_ONNX, "int8", build / INT8_CPU_ONNX, "ORT CPU")]
    return gate_rows(artifacts, KITTI_DIR, build, progress=False)


def test_gate_passes_the_shipped_int8_file_of_a_model_that_separates_road(gate_build: Path):
    fp32, int8 = gate(gate_build)
    assert fp32["maxf"] > 90, fp32  # a real road model, far above the ~36 any random model scores
    assert int8["passed"] and int8["drop_pt"] <= 0.5, int8


def test_gate_refuses_corrupted_qdq_scales(gate_build: Path, tmp_path: Path):
    model = onnx.load(str(gate_build / INT8_CPU_ONNX))
    dequantized = {node.input[1] for node in model.graph.node if node.op_type == "DequantizeLinear"}
    rng = np.random.default_rng(0)
    corrupted = 0
    for initializer in model.graph.initializer:
        if initializer.name in dequantized and initializer.dims:  # per-channel weight scales
            scales = numpy_helper.to_array(initializer)
            factors = rng.uniform(0.2, 5.0, scales.shape).astype(scales.dtype)
            initializer.CopyFrom(numpy_helper.from_array(scales * factors, initializer.name))
            corrupted += 1
    assert corrupted, "no per-channel Q/DQ scales found to corrupt"
    broken = tmp_path / "build"
    broken.mkdir()
    (broken / FP32_ONNX).write_bytes((gate_build / FP32_ONNX).read_bytes())
    onnx.save(model, str(broken / INT8_CPU_ONNX))
    fp32, int8 = gate(broken)
    assert not int8["passed"] and int8["drop_pt"] > 0.5, int8


def test_int8_masks_match_fp32_masks_on_kitti(gate_build: Path):
    """Not only finite outputs: the INT8 file's road masks are the FP32 file's on >= 98 % of pixels."""
    from kitti.data import find_samples, split_samples
    from runtime.backends import OnnxRuntimeBackend
    from runtime.preprocess import FramePreprocessor

    fp32 = OnnxRuntimeBackend(gate_build / FP32_ONNX, provider="cpu")
    int8 = OnnxRuntimeBackend(gate_build / INT8_CPU_ONNX, provider="cpu")
    preprocess = FramePreprocessor(fp32.spec)
    import cv2

    agreements = []
    for sample in split_samples(find_samples(KITTI_DIR), "val")[:8]:
        batch = preprocess(cv2.imread(str(sample.image_path)))
        agreements.append(float(np.mean(fp32.infer(batch).argmax(1) == int8.infer(batch).argmax(1))))
    assert min(agreements) >= 0.98, agreements
