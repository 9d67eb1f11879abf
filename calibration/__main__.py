"""Calibrate and quantize: build/model.fp32.onnx -> build/model.int8.onnx (+ model.int8_cpu.onnx), gated.

    python -m calibration [--build build] [--source ../shared/data/kitti_road | VIDEO] [--size 64]
                          [--methods entropy,percentile,minmax] [--percentile 99.99] [--data KITTI]

1. Calibration set (build/calibration/manifest.json + tensors.npy) from the KITTI train split, stratified
   um/umm/uu, or from a video; its manifest sha256 is the calibration identity.
2. One TensorRT-style Q/DQ model per method, each scored on KITTI val; the best becomes model.int8.onnx,
   and the comparison goes to build/calibration_methods.{json,md}.
3. The same Q/DQ model with its float rest in FP16 for strongly typed TensorRT (11.x, TensorRT-RTX):
   build/model.int8_fp16.onnx (calibration/strongly_typed.py); the CPU flavour (calibration/cpu_tuned.py)
   with the winning method: build/model.int8_cpu.onnx.
4. Calibration tables for TensorRT <= 10 implicit INT8 (build/calibration/trt/), same set and method.
5. The accuracy gate over every artifact (build/accuracy.{json,md}); a broken floor fails (exit 1) and
   removes the INT8 file that broke it.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
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
from runtime.contract import INT8_FP16_NAME, ModelFileError, parse_preprocess
from runtime.ioutil import fail
from runtime.paths import DEFAULT_KITTI_DIR


class GateError(RuntimeError):
    pass


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m calibration", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", default="build")
    parser.add_argument("--source", default=DEFAULT_KITTI_DIR, help="KITTI Road folder or a video file")
    parser.add_argument("--size", type=int, default=64, help="number of calibration frames")
    parser.add_argument("--methods", default="entropy,percentile,minmax")
    parser.add_argument("--percentile", type=float, default=DEFAULT_PERCENTILE)
    parser.add_argument("--histogram-bins", type=int, default=ENTROPY_BINS,
                        help="histogram size for entropy/percentile (TensorRT's entropy calibrator: 2048)")
    parser.add_argument("--data", default=DEFAULT_KITTI_DIR, help="KITTI Road folder whose val split scores")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def read_fp32(build: Path) -> tuple[Path, dict[str, str]]:
    path = build / "model.fp32.onnx"
    if not path.is_file():
        raise CalibrationError(f"{path}: not found; run `make export` first")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # protobuf's DecodeError and friends
        raise ModelFileError(f"{path}: not a readable ONNX file ({type(error).__name__})") from error
    metadata = {p.key: p.value for p in model.metadata_props}
    parse_preprocess(metadata, path)
    return path, metadata


def method_list(text: str) -> list[str]:
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if not methods or unknown:
        raise CalibrationError(f"--methods {text}: expected a comma list of {', '.join(METHODS)}")
    return methods


def compare_methods(args: argparse.Namespace, build: Path, fp32: Path, metadata: dict[str, str],
                    calib: CalibrationSet, prepared: Path) -> tuple[str, list[dict]]:
    from export.accuracy import Artifact, gate_rows, write_table

    tensors = calib.tensors()
    candidates = build / "calibration" / "candidates"
    artifacts = [Artifact("FP32 ONNX", fp32, "fp32", fp32, "ONNX Runtime CPU")]
    for method in method_list(args.methods):
        path = candidates / f"model.int8.{method}.onnx"
        stamp = {**metadata, "roadseg.source_onnx_sha256": sha256_file(fp32)}
        quantize_int8(prepared, path, tensors, method, "tensorrt", args.percentile, stamp, calib.identity,
                      args.histogram_bins)
        artifacts.append(Artifact(f"INT8 {method}", path, "int8", path, "ONNX Runtime CPU (s8s8 Q/DQ)"))
    rows = gate_rows(artifacts, args.data, build, not args.no_progress)
    for row, artifact in zip(rows, artifacts, strict=True):
        row["method"] = artifact.label.split()[-1] if artifact.precision == "int8" else "-"
    int8_rows = [r for r in rows if r["precision"] == "int8"]
    best = max(int8_rows, key=lambda r: r["maxf"])
    write_table(rows, build / "calibration_methods.json", "INT8 calibration methods on KITTI Road val",
                {"best_method": best["method"], "calibration_manifest_sha256": calib.identity,
                 "calibration_frames": calib.count, "percentile": args.percentile})
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


def run(args: argparse.Namespace) -> int:
    build = Path(args.build)
    fp32, metadata = read_fp32(build)
    spec = parse_preprocess(metadata, fp32)
    calib = build_calibration_set(args.source, spec, build / "calibration", args.size,
                                  progress=not args.no_progress)
    print(f"calibration set: {calib.count} frames, manifest sha256 {calib.identity[:16]}… "
          f"({calib.manifest_path})")
    with tempfile.TemporaryDirectory(prefix="roadseg-prep-") as scratch:
        prepared = preprocess_for_quantization(fp32, Path(scratch) / "model.prep.onnx")
        best, _ = compare_methods(args, build, fp32, metadata, calib, prepared)
        promote(build / "calibration" / "candidates" / f"model.int8.{best}.onnx", build / "model.int8.onnx")
        write_int8_fp16(build / "model.int8.onnx", build / INT8_FP16_NAME)
        stamp = {**metadata, "roadseg.source_onnx_sha256": sha256_file(fp32)}
        quantize_cpu_tuned(prepared, build / "model.int8_cpu.onnx", calib.tensors(), best, stamp, calib.identity,
                           args.percentile, args.histogram_bins)
    print(f"wrote {build / 'model.int8.onnx'} (TensorRT Q/DQ, {best}), {build / INT8_FP16_NAME} (the same "
          f"with an FP16 rest, for strongly typed TensorRT) and {build / 'model.int8_cpu.onnx'} (CPU-tuned u8 Q/DQ)")
    ranges = activation_ranges(fp32, calib.tensors(), best, args.percentile, args.histogram_bins)
    table = write_calibration_tables(ranges, build / "calibration" / "trt", best, calib.identity)
    print(f"wrote TensorRT calibration tables for {len(absolute_max(ranges))} tensors: {table.parent}")
    return accuracy_gate(build, args)


def accuracy_gate(build: Path, args: argparse.Namespace) -> int:
    from export.accuracy import broken_floors, report_openvino_floors, run_gate

    print("accuracy gate (KITTI val):")
    rows = run_gate(build, args.data, not args.no_progress)
    report_openvino_floors(rows)
    broken = [r for r in rows if not r["passed"] and r.get("backend", "onnxruntime") == "onnxruntime"]
    if broken:
        for row in broken:
            if row["precision"] == "int8":
                Path(row["file"]).unlink(missing_ok=True)
        raise GateError(f"ACCURACY GATE FAILED: {broken_floors(rows)[0]}; removed the INT8 file(s) "
                        f"that broke it (table: {build / 'accuracy.md'})")
    print(f"wrote {build / 'accuracy.md'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except GateError as error:
        return fail(error, 1)
    except (CalibrationError, ModelFileError, ValueError, OSError) as error:
        return fail(error)


if __name__ == "__main__":
    sys.exit(main())
