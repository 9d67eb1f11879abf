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
from conftest import KITTI_DIR, VGG_CHECKPOINT, needs_kitti
from onnx import numpy_helper

from runtime.artifacts import FP32_ONNX, INT8_CPU_ONNX, INT8_ONNX

SHIPPED_INT8_CPU = VGG_CHECKPOINT.with_name(VGG_CHECKPOINT.stem + ".int8_cpu.onnx")
SHIPPED_INT8_TENSORRT = VGG_CHECKPOINT.with_name(VGG_CHECKPOINT.stem + ".int8.onnx")
pytestmark = [needs_kitti, pytest.mark.skipif(not SHIPPED_INT8_CPU.is_file(), reason="shipped INT8 file missing")]


@pytest.fixture(scope="module")
def gate_build(tmp_path_factory) -> Path:
    """build/ with a fresh FP32 export of the shipped checkpoint and the shipped CPU INT8 file beside it."""
    from export.onnx_export import export_onnx
    from export.stage import load_checkpoint

    build = tmp_path_factory.mktemp("gate_build")
    model, spec, payload = load_checkpoint(VGG_CHECKPOINT)
    export_onnx(model, spec, payload["arch"], payload.get("summary", {}), build / FP32_ONNX)
    (build / INT8_CPU_ONNX).write_bytes(SHIPPED_INT8_CPU.read_bytes())
    (build / INT8_ONNX).write_bytes(SHIPPED_INT8_TENSORRT.read_bytes())
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


def test_tensorrt_int8_file_is_scored_with_its_own_qdq_arithmetic(gate_build: Path):
    """The TensorRT INT8 row runs the graph as written (DequantizeLinear -> float Conv), never this CPU's int8
    kernels, so its score is the same on a CPU with or without VNNI: it passes, and it is not the fused score."""
    from export.accuracy import TENSORRT_INT8_RUNS_AS, Artifact, gate_rows, standard_artifacts, tensorrt_int8_artifact
    from runtime.backends import INT8_DOT_PRODUCT_FLAGS, OnnxRuntimeBackend
    from runtime.machine import cpu_flags

    row = next(a for a in standard_artifacts(gate_build, ("fp32", "int8")) if a.path.name == INT8_ONNX)
    assert row == tensorrt_int8_artifact(row.label, gate_build / INT8_ONNX) and not row.fused
    fp32 = Artifact("FP32", gate_build / FP32_ONNX, "fp32", gate_build / FP32_ONNX, "ORT CPU")
    fused = Artifact("fused", row.path, "int8", row.path, "ORT CPU int8 kernels")
    _, unfused_row, fused_row = gate_rows([fp32, row, fused], KITTI_DIR, gate_build, progress=False)
    assert unfused_row["runs_as"] == TENSORRT_INT8_RUNS_AS and unfused_row["passed"], unfused_row
    scores = {p.name for p in (gate_build / "scores").iterdir()}
    assert {f"{INT8_ONNX}.json", f"{INT8_ONNX}.unfused.json"} <= scores  # two arithmetics, never one cached score
    assert fused_row["passed"] or not cpu_flags() & INT8_DOT_PRODUCT_FLAGS  # fused only fails on a non-VNNI x86
    unfused = OnnxRuntimeBackend(gate_build / INT8_ONNX, provider="cpu", fused=False).ort_session
    assert unfused.get_session_options().graph_optimization_level.name == "ORT_DISABLE_ALL"
