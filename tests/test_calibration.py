"""Calibration set (manifest, identity, sources, bad images) and INT8 Q/DQ quantization."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import random_fcn8s
from onnx import TensorProto, numpy_helper

from calibration.__main__ import main as calibrate_main
from calibration.dataset import (
    CalibrationError,
    build_calibration_set,
    load_calibration_set,
)
from calibration.quantize import preprocess_for_quantization, quantize_int8, trt_cache_text
from export.onnx_export import export_onnx, roadseg_metadata
from kitti.data import write_synthetic_kitti
from kitti.frames import stratified_quota
from runtime.artifacts import (
    ACCURACY_JSON_FILE,
    CALIBRATION_MANIFEST_FILE,
    FP32_ONNX,
    INT8_CPU_ONNX,
    INT8_FP16_ONNX,
    INT8_ONNX,
    TENSORRT_RANGES_FILE,
)
from runtime.backends import open_backend
from runtime.contract import PRECISION_KEY, PreprocessSpec

SPEC = PreprocessSpec(64, 192)


@pytest.fixture(scope="module")
def kitti(tmp_path_factory) -> Path:
    return write_synthetic_kitti(tmp_path_factory.mktemp("kitti"), per_category=6, height=94, width=310)


@pytest.fixture(scope="module")
def tiny_fp32(tmp_path_factory) -> Path:
    model = random_fcn8s()
    path = tmp_path_factory.mktemp("onnx") / FP32_ONNX
    export_onnx(model, SPEC, model.arch(), {"config": "test"}, path)
    return path


def test_manifest_is_reproducible_and_is_the_identity(tmp_path, kitti):
    first = build_calibration_set(kitti, SPEC, tmp_path / "a", size=6, progress=False)
    second = build_calibration_set(kitti, SPEC, tmp_path / "b", size=6, progress=False)
    assert first.identity == second.identity
    assert (tmp_path / "a" / "manifest.json").read_bytes() == (tmp_path / "b" / "manifest.json").read_bytes()
    assert np.array_equal(first.tensors(), second.tensors()) and first.tensors().shape == (6, 3, 64, 192)
    manifest = json.loads(first.manifest_path.read_text())
    assert [i["category"] for i in manifest["items"]].count("um") == 2  # stratified um/umm/uu
    assert all(len(i["sha256"]) == 64 for i in manifest["items"])
    assert load_calibration_set(tmp_path / "a").identity == first.identity
    mtime = first.manifest_path.stat().st_mtime_ns
    build_calibration_set(kitti, SPEC, tmp_path / "a", size=6, progress=False)
    assert first.manifest_path.stat().st_mtime_ns == mtime  # unchanged content is not rewritten (make)
    other = build_calibration_set(kitti, SPEC, tmp_path / "c", size=3, progress=False)
    assert other.identity != first.identity


def test_changed_tensors_are_detected(tmp_path, kitti):
    calib = build_calibration_set(kitti, SPEC, tmp_path, size=3, progress=False)
    np.save(calib.tensors_path, np.zeros((3, 3, 64, 192), np.float32))
    with pytest.raises(CalibrationError, match="changed since the manifest"):
        load_calibration_set(tmp_path)


def test_calibration_from_a_video(tmp_path):
    video = tmp_path / "drive.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 96))
    rng = np.random.default_rng(0)
    for _ in range(12):
        writer.write(rng.integers(0, 255, (96, 160, 3), np.uint8))
    writer.release()
    calib = build_calibration_set(video, SPEC, tmp_path / "calib", size=4, progress=False)
    manifest = json.loads(calib.manifest_path.read_text())
    assert [i["frame"] for i in manifest["items"]] == [0, 4, 7, 11]
    assert manifest["source"]["kind"] == "video" and calib.count == 4


def test_stratified_quota_spreads_and_respects_availability():
    assert stratified_quota({"um": 76, "umm": 76, "uu": 78}, 64) == {"um": 22, "umm": 21, "uu": 21}
    assert stratified_quota({"um": 2, "umm": 10, "uu": 10}, 12) == {"um": 2, "umm": 5, "uu": 5}
    assert stratified_quota({"um": 2, "umm": 10, "uu": 10}, 13) == {"um": 2, "umm": 6, "uu": 5}
    assert stratified_quota({"um": 3, "umm": 0, "uu": 1}, 64) == {"um": 3, "umm": 0, "uu": 1}
    assert stratified_quota({"um": 5, "umm": 5, "uu": 5}, 0) == {"um": 0, "umm": 0, "uu": 0}


@pytest.mark.parametrize("damage", ["empty", "corrupt"])
def test_bad_calibration_image_is_one_line_and_writes_no_manifest(tmp_path, damage, capsys, tiny_fp32):
    kitti = write_synthetic_kitti(tmp_path / "kitti", per_category=2, height=64, width=200)
    victim = kitti / "training" / "image_2" / "um_000000.png"
    victim.write_bytes(b"" if damage == "empty" else b"\x89PNG\r\n\x1a\n garbage")
    build = tmp_path / "build"
    build.mkdir()
    (build / FP32_ONNX).write_bytes(tiny_fp32.read_bytes())
    code = calibrate_main(["--build", str(build), "--source", str(kitti), "--size", "6", "--no-progress"])
    assert code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and str(victim) in lines[0]
    assert ("empty" in lines[0]) if damage == "empty" else ("cannot decode" in lines[0])
    assert not (build / CALIBRATION_MANIFEST_FILE).exists() and not (build / INT8_ONNX).exists()


def test_missing_calibration_source_is_one_line(tmp_path):
    with pytest.raises(CalibrationError, match="calibration source not found"):
        build_calibration_set(tmp_path / "nowhere", SPEC, tmp_path / "out", progress=False)


@pytest.mark.parametrize("flavour", ["tensorrt", "cpu"])
def test_quantized_model_is_qdq_with_the_right_types(tmp_path, kitti, tiny_fp32, flavour):
    calib = build_calibration_set(kitti, SPEC, tmp_path / "calib", size=3, progress=False)
    prepared = preprocess_for_quantization(tiny_fp32, tmp_path / "prep.onnx")
    metadata = roadseg_metadata(SPEC, {"name": "fcn8s_vgg16", "width": 0.125, "num_classes": 2}, {}, "fp32")
    out = quantize_int8(prepared, tmp_path / "int8.onnx", calib.tensors(), "minmax", flavour,
                        metadata=metadata, calibration_identity=calib.identity)
    model = onnx.load(str(out))
    props = {p.key: p.value for p in model.metadata_props}
    assert props[PRECISION_KEY] == "int8"
    assert json.loads(props["roadseg.calibration"])["manifest_sha256"] == calib.identity
    initializers = {i.name: i for i in model.graph.initializer}
    quantize_nodes = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    dequantize_nodes = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert quantize_nodes and dequantize_nodes
    activation_types = {initializers[n.input[2]].data_type for n in quantize_nodes}
    expected = TensorProto.INT8 if flavour == "tensorrt" else TensorProto.UINT8
    assert activation_types == {expected}
    if flavour == "tensorrt":  # symmetric: every zero point is 0, as TensorRT requires
        for node in quantize_nodes + dequantize_nodes:
            assert not numpy_helper.to_array(initializers[node.input[2]]).any()
    per_channel = [numpy_helper.to_array(initializers[n.input[1]]) for n in dequantize_nodes
                   if n.input[0] in initializers and initializers[n.input[0]].data_type == TensorProto.INT8]
    assert per_channel and all(scale.ndim == 1 and scale.size > 1 for scale in per_channel)
    backend = open_backend(out, backend="cpu")
    assert backend.precision == "int8" and backend.spec == SPEC
    logits = backend.infer(calib.tensors()[:1].copy())
    assert logits.shape == (1, 2, 64, 192) and np.isfinite(logits).all()


def test_trt_cache_text_is_tensorrt_format():
    text = trt_cache_text({"image": 2.54, "logits": 12.7}, "TRT-8601-EntropyCalibration2")
    lines = text.splitlines()
    assert lines[0] == "TRT-8601-EntropyCalibration2"
    name, value = lines[1].split(": ")
    assert name == "image" and np.frombuffer(bytes.fromhex(value), ">f4")[0] == np.float32(2.54 / 127)


def test_calibrate_compares_methods_keeps_best_and_gates(tmp_path, kitti, tiny_fp32, capsys, monkeypatch):
    build = tmp_path / "build"
    build.mkdir()
    (build / FP32_ONNX).write_bytes(tiny_fp32.read_bytes())
    args = ["--build", str(build), "--source", str(kitti), "--data", str(kitti), "--size", "4", "--no-progress",
            "--histogram-bins", "256"]  # fewer bins than the default 2048 keep the test quick
    assert calibrate_main(args) == 0
    table = json.loads((build / "calibration_methods.json").read_text())
    methods = [r["method"] for r in table["rows"] if r["precision"] == "int8"]
    assert methods == ["entropy", "percentile", "minmax"] and table["best_method"] in methods
    best = max((r for r in table["rows"] if r["precision"] == "int8"), key=lambda r: r["maxf"])
    assert best["method"] == table["best_method"]
    assert (build / "calibration_methods.md").read_text().count("| INT8") == 3
    accuracy = json.loads((build / ACCURACY_JSON_FILE).read_text())
    files = [r for r in accuracy["rows"] if r["backend"] == "onnxruntime"]
    assert [r["precision"] for r in files] == ["fp32", "int8", "int8", "int8"]
    strongly_typed = next(r for r in files if r["file"].endswith(INT8_FP16_ONNX))
    assert strongly_typed["runs_as"].endswith("FP16 emulation") and strongly_typed["passed"]
    from runtime.openvino_backend import cpu_precisions, openvino_installed

    # Where OpenVINO is installed, the same files are gated as it runs them: every precision it offers.
    openvino_rows = [r["precision"] for r in accuracy["rows"] if r["backend"] == "openvino"]
    assert openvino_rows[: len(cpu_precisions("fp32"))] == (cpu_precisions("fp32") if openvino_installed() else [])
    assert all(r["passed"] and r["images"] == files[0]["images"] for r in accuracy["rows"])
    for name in (INT8_ONNX, INT8_CPU_ONNX, INT8_FP16_ONNX):
        props = {p.key: p.value for p in onnx.load(str(build / name)).metadata_props}
        assert props[PRECISION_KEY] == "int8"
    ranges = json.loads((build / TENSORRT_RANGES_FILE).read_text())
    assert ranges["amax"]["image"] > 0 and (build / "calibration" / "trt" / "calibration.cache").is_file()
    # An impossible floor: the gate fails loudly and the INT8 files that broke it are gone.
    import export.accuracy

    monkeypatch.setitem(export.accuracy.FLOORS_PT, "int8", -100.0)
    capsys.readouterr()
    assert calibrate_main([*args, "--methods", "minmax"]) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "ACCURACY GATE FAILED" in lines[0]
    assert not (build / INT8_ONNX).exists() and not (build / INT8_CPU_ONNX).exists()
    assert not (build / INT8_FP16_ONNX).exists()


def test_subpixel_rewrite_of_the_upsamplers_is_float_equivalent(tiny_fp32, tmp_path):
    """The CPU flavour's ConvTranspose -> Conv + DepthToSpace rewrite changes the arithmetic's order, not its result."""
    from calibration.cpu_tuned import subpixel_conv_transposes

    rewritten = tmp_path / "subpixel.onnx"
    assert subpixel_conv_transposes(tiny_fp32, rewritten) == 3  # upscore2, upscore_pool4, upscore8
    assert not [n for n in onnx.load(str(rewritten)).graph.node if n.op_type == "ConvTranspose"]
    image = np.random.default_rng(3).normal(size=(1, 3, *SPEC.size_hw)).astype(np.float32)
    outputs = [ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": image})[0]
               for path in (tiny_fp32, rewritten)]
    scale = np.abs(outputs[0]).max()
    assert scale > 0 and np.abs(outputs[0] - outputs[1]).max() <= 1e-5 * scale


@pytest.mark.parametrize("precision, maxf, passes", [
    ("int8", 89.4, False), ("int8", 89.6, True), ("int8", 89.5, True),
    ("fp16", 89.95, True), ("fp16", 89.85, False), ("bf16", 89.85, False), ("fp32", 10.0, True)])
def test_accuracy_gate_threshold_on_both_sides(precision, maxf, passes):
    """FP32 at 90.0: INT8 may lose 0.5 pt, FP16 and bf16 0.1 pt; the floor itself still passes."""
    from export.accuracy import within_floor

    assert within_floor(90.0, maxf, precision) is passes
