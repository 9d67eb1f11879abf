"""The calibration stage as a function: build/model.fp32.onnx -> the INT8 files, calibration set and tables, gated.

`run_calibration` is what `python -m calibration` (calibration/__main__.py, whose help lists the steps) and the
engine build call. An accuracy gate failure raises GateError (the CLI exits 1); bad input raises a ValueError or
OSError (exit 2).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx

from calibration.cpu_tuned import quantize_cpu_tuned
from calibration.dataset import (
    CalibrationError,
    CalibrationSet,
    build_calibration_set,
    sha256_file,
)
from calibration.quantize import (
    DEFAULT_PERCENTILE,
    ENTROPY_BINS,
    METHODS,
    absolute_max,
    activation_ranges,
    preprocess_for_quantization,
    quantize_int8,
    write_calibration_tables,
)
from calibration.strongly_typed import write_int8_fp16
from runtime.artifacts import ACCURACY_MD_FILE, FP32_ONNX, INT8_CPU_ONNX, INT8_FP16_ONNX, INT8_ONNX, int8_candidate_name
from runtime.contract import SOURCE_ONNX_SHA256_KEY, ModelFileError, parse_preprocess


class GateError(RuntimeError):
    pass


@dataclass(frozen=True)
class CalibrationOptions:
    size: int = 64  # calibration frames
    methods: tuple[str, ...] = tuple(METHODS)
    percentile: float = DEFAULT_PERCENTILE
    histogram_bins: int = ENTROPY_BINS  # for entropy/percentile (TensorRT's entropy calibrator: 2048)
    progress: bool = True


@dataclass
class CalibrationResult:
    best_method: str
    calibration_manifest_sha256: str
    int8: Path  # TensorRT Q/DQ
    int8_fp16: Path  # the same with an FP16 rest, for strongly typed TensorRT
    int8_cpu: Path  # CPU-tuned u8 Q/DQ
    gate_rows: list[dict]


def run_calibration(build: Path, source: Path, data: Path,
                    options: CalibrationOptions = CalibrationOptions()) -> CalibrationResult:
    """Calibrate on `source` (a KITTI Road folder or a video), quantize build/model.fp32.onnx with each method,
    keep the best on the KITTI val split of `data`, and gate every artifact."""
    check_methods(options.methods)
    fp32, metadata = read_fp32(build)
    spec = parse_preprocess(metadata, fp32)
    calib = build_calibration_set(source, spec, build / "calibration", options.size, progress=options.progress)
    print(f"calibration set: {calib.count} frames, manifest sha256 {calib.identity[:16]}… "
          f"({calib.manifest_path})")
    with tempfile.TemporaryDirectory(prefix="roadseg-prep-") as scratch:
        prepared = preprocess_for_quantization(fp32, Path(scratch) / "model.prep.onnx")
        best, _ = compare_methods(options, build, data, fp32, metadata, calib, prepared)
        promote(build / "calibration" / "candidates" / int8_candidate_name(best), build / INT8_ONNX)
        write_int8_fp16(build / INT8_ONNX, build / INT8_FP16_ONNX)
        stamp = {**metadata, SOURCE_ONNX_SHA256_KEY: sha256_file(fp32)}
        quantize_cpu_tuned(prepared, build / INT8_CPU_ONNX, calib.tensors(), best, stamp, calib.identity,
                           options.percentile, options.histogram_bins)
    print(f"wrote {build / INT8_ONNX} (TensorRT Q/DQ, {best}), {build / INT8_FP16_ONNX} (the same "
          f"with an FP16 rest, for strongly typed TensorRT) and {build / INT8_CPU_ONNX} (CPU-tuned u8 Q/DQ)")
    ranges = activation_ranges(fp32, calib.tensors(), best, options.percentile, options.histogram_bins)
    table = write_calibration_tables(ranges, build / "calibration" / "trt", best, calib.identity)
    print(f"wrote TensorRT calibration tables for {len(absolute_max(ranges))} tensors: {table.parent}")
    rows = accuracy_gate(build, data, options.progress)
    return CalibrationResult(best, calib.identity, build / INT8_ONNX, build / INT8_FP16_ONNX,
                             build / INT8_CPU_ONNX, rows)


def read_fp32(build: Path) -> tuple[Path, dict[str, str]]:
    path = build / FP32_ONNX
    if not path.is_file():
        raise CalibrationError(f"{path}: not found; run `make export` first")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # protobuf's DecodeError and friends
        raise ModelFileError(f"{path}: not a readable ONNX file ({type(error).__name__})") from error
    metadata = {p.key: p.value for p in model.metadata_props}
    parse_preprocess(metadata, path)
    return path, metadata


def method_list(text: str) -> tuple[str, ...]:
    """--methods "entropy,minmax" -> ("entropy", "minmax"), checked."""
    methods = tuple(m.strip() for m in text.split(",") if m.strip())
    if not methods or any(m not in METHODS for m in methods):
        raise CalibrationError(f"--methods {text}: expected a comma list of {', '.join(METHODS)}")
    return methods


def check_methods(methods: tuple[str, ...]) -> None:
    if not methods or any(m not in METHODS for m in methods):
        raise CalibrationError(f"methods {', '.join(methods) or '(none)'}: expected some of {', '.join(METHODS)}")


def compare_methods(options: CalibrationOptions, build: Path, data: Path, fp32: Path, metadata: dict[str, str],
                    calib: CalibrationSet, prepared: Path) -> tuple[str, list[dict]]:
    from export.accuracy import Artifact, gate_rows, tensorrt_int8_artifact, write_table

    tensors = calib.tensors()
    candidates = build / "calibration" / "candidates"
    artifacts = [Artifact("FP32 ONNX", fp32, "fp32", fp32, "ONNX Runtime CPU")]
    for method in options.methods:
        path = candidates / int8_candidate_name(method)
        stamp = {**metadata, SOURCE_ONNX_SHA256_KEY: sha256_file(fp32)}
        quantize_int8(prepared, path, tensors, method, "tensorrt", options.percentile, stamp, calib.identity,
                      options.histogram_bins)
        artifacts.append(tensorrt_int8_artifact(f"INT8 {method}", path))
    rows = gate_rows(artifacts, data, build, options.progress)
    for row, artifact in zip(rows, artifacts, strict=True):
        row["method"] = artifact.label.split()[-1] if artifact.precision == "int8" else "-"
    int8_rows = [r for r in rows if r["precision"] == "int8"]
    best = max(int8_rows, key=lambda r: r["maxf"])
    write_table(rows, build / "calibration_methods.json", "INT8 calibration methods on KITTI Road val",
                {"best_method": best["method"], "calibration_manifest_sha256": calib.identity,
                 "calibration_frames": calib.count, "percentile": options.percentile})
    for row in int8_rows:
        print(f"  {row['method']:10s} MaxF {row['maxf']:.2f}  drop {row['drop_pt']:+.3f} pt"
              f"{'  <- best' if row is best else ''}")
    return best["method"], rows


def promote(source: Path, final: Path) -> None:
    """Copy under a temporary sibling name, then rename: a reader never sees half a model."""
    with tempfile.NamedTemporaryFile(dir=final.parent, prefix=f".{final.name}.", delete=False) as temp:
        temp_path = Path(temp.name)
    try:
        shutil.copyfile(source, temp_path)
        shutil.copymode(source, temp_path)  # the temporary file is 0600; keep the artifact's normal mode
        temp_path.replace(final)
    finally:
        temp_path.unlink(missing_ok=True)


def accuracy_gate(build: Path, data: Path, progress: bool) -> list[dict]:
    from export.accuracy import broken_floors, report_openvino_floors, run_gate

    print("accuracy gate (KITTI val):")
    rows = run_gate(build, data, progress)
    report_openvino_floors(rows)
    broken = [r for r in rows if not r["passed"] and r.get("backend", "onnxruntime") == "onnxruntime"]
    if broken:
        for row in broken:
            if row["precision"] == "int8":
                Path(row["file"]).unlink(missing_ok=True)
        raise GateError(f"ACCURACY GATE FAILED: {broken_floors(rows)[0]}; removed the INT8 file(s) "
                        f"that broke it (table: {build / ACCURACY_MD_FILE})")
    print(f"wrote {build / ACCURACY_MD_FILE}")
    return rows
