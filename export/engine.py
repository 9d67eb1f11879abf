"""Checkpoint -> ONNX -> calibration -> TensorRT engine, rebuilding only what changed.

    python -m export.engine [--precision fp16|int8|fp32] [--int8-mode qdq|calibrator] [--build build]
                            [--checkpoint models/...pt] [--data KITTI] [--workspace-mib 1024] [--opt-level 3]
                            [--dla-core N] [--profile MIN:OPT:MAX] [--trtexec PATH] [--force]

Stages and what decides whether each runs:
- FP32/FP16 ONNX: the checkpoint's sha256 differs from the one build/parity.json recorded -> `python -m export`.
- INT8 ONNX + calibration: model.int8.onnx's recorded source sha256 differs from model.fp32.onnx's ->
  `python -m calibration` (only for --precision int8).
- Engine: its JSON sidecar's cache key (ONNX sha256, precision, calibration manifest sha256, TensorRT and
  CUDA versions, GPU name and compute capability, build options) differs from this build's -> rebuild.
Without a CUDA GPU or TensorRT the ONNX stages still run, then one line says what is missing (exit 3).
TensorRT is imported only after CUDA answered: its runtime can crash the process without a device.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import onnx

from export.trt_builder import (
    INT8_MODES,
    PRECISIONS,
    BuildOptions,
    EngineBuildError,
    build_serialized,
    calibration_cache_header,
    make_calibrator,
    onnx_for,
    parse_version,
    trt_major,
    trtexec_command,
)
from runtime.ioutil import atomic_write_bytes, atomic_write_text, fail, sha256_file
from runtime.paths import DEFAULT_KITTI_DIR, SHIPPED_CHECKPOINT
from runtime.tensorrt_backend import SIDECAR_FORMAT, GpuInfo, probe_cuda, sidecar_path

MISSING_EXIT = 3


class MissingToolchain(RuntimeError):
    """No CUDA GPU or no TensorRT: the ONNX artifacts are built, the engine cannot be."""


def parse_profile(text: str | None) -> tuple | None:
    if not text:
        return None
    try:
        shapes = tuple(tuple(int(d) for d in part.split("x")) for part in text.split(":"))
    except ValueError:
        shapes = ()
    if len(shapes) != 3 or any(len(s) != 4 for s in shapes):
        raise EngineBuildError(f"--profile {text}: expected MIN:OPT:MAX, each NxCxHxW")
    return shapes


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m export.engine", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precision", default="fp16", choices=PRECISIONS)
    parser.add_argument("--int8-mode", default="qdq", choices=INT8_MODES,
                        help="qdq: the Q/DQ ONNX (all versions); calibrator: FP32 ONNX + IInt8EntropyCalibrator2 "
                             "with the calibration cache (TensorRT <= 10)")
    parser.add_argument("--build", default="build")
    parser.add_argument("--checkpoint", default=SHIPPED_CHECKPOINT)
    parser.add_argument("--data", default=DEFAULT_KITTI_DIR, help="KITTI Road folder (gates and calibration)")
    parser.add_argument("--workspace-mib", type=int, default=1024)
    parser.add_argument("--opt-level", type=int, default=3, help="builder optimisation level 0..5")
    parser.add_argument("--dla-core", type=int, default=None, help="Jetson DLA core (GPU fallback on)")
    parser.add_argument("--profile", default=None, help="MIN:OPT:MAX input shapes for a dynamic-batch ONNX")
    parser.add_argument("--timing-cache", default=None, help="default: BUILD/tensorrt.timing.cache")
    parser.add_argument("--trtexec", default=None, help="build with this trtexec instead of the Python API")
    parser.add_argument("--force", action="store_true", help="rebuild the engine even if its key matches")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def build_options(args: argparse.Namespace) -> BuildOptions:
    return BuildOptions(precision=args.precision, int8_mode=args.int8_mode, workspace_mib=args.workspace_mib,
                        optimization_level=args.opt_level, dla_core=args.dla_core,
                        profile=parse_profile(args.profile), builder="trtexec" if args.trtexec else "python")


def rebuild_command(args: argparse.Namespace) -> str:
    parts = ["python -m export.engine", f"--precision {args.precision}", f"--build {args.build}"]
    if args.precision == "int8":
        parts.append(f"--int8-mode {args.int8_mode}")
    if args.dla_core is not None:
        parts.append(f"--dla-core {args.dla_core}")
    if args.profile:
        parts.append(f"--profile {args.profile}")
    return " ".join(parts)


# ---- ONNX stages --------------------------------------------------------------------------------------


def onnx_is_current(build: Path, checkpoint: Path) -> bool:
    parity = build / "parity.json"
    if not (build / "model.fp32.onnx").is_file() or not (build / "model.fp16.onnx").is_file():
        return False
    if not parity.is_file() or not checkpoint.is_file():
        return not checkpoint.is_file() and parity.is_file()  # no checkpoint here: trust what was built
    recorded = json.loads(parity.read_text()).get("checkpoint_sha256")
    return recorded == sha256_file(checkpoint)


def int8_is_current(build: Path) -> bool:
    int8 = build / "model.int8.onnx"
    if not int8.is_file() or not (build / "calibration" / "manifest.json").is_file():
        return False
    metadata = {p.key: p.value for p in onnx.load(str(int8), load_external_data=False).metadata_props}
    return metadata.get("roadseg.source_onnx_sha256") == sha256_file(build / "model.fp32.onnx")


def ensure_onnx(args: argparse.Namespace, build: Path) -> None:
    """Run the export and calibration stages that are out of date (each is gated and atomic)."""
    from calibration.__main__ import main as calibrate_main
    from export.__main__ import main as export_main

    progress = ["--no-progress"] if args.no_progress else []
    if not onnx_is_current(build, Path(args.checkpoint)):
        code = export_main(["--checkpoint", args.checkpoint, "--build", str(build), "--data", args.data, *progress])
        if code:
            raise SystemExit(code)
    else:
        print(f"ONNX up to date: {build / 'model.fp32.onnx'}, {build / 'model.fp16.onnx'}")
    if args.precision == "int8":
        if not int8_is_current(build):
            code = calibrate_main(["--build", str(build), "--data", args.data, "--source", args.data, *progress])
            if code:
                raise SystemExit(code)
        else:
            print(f"INT8 ONNX and calibration up to date: {build / 'model.int8.onnx'}")


# ---- cache key ----------------------------------------------------------------------------------------


def calibration_identity(build: Path, options: BuildOptions) -> str | None:
    if options.precision != "int8":
        return None
    manifest = build / "calibration" / "manifest.json"
    if not manifest.is_file():
        raise EngineBuildError(f"{manifest}: no calibration manifest; run `make calibrate`")
    return sha256_file(manifest)


def cache_key(onnx_path: Path, options: BuildOptions, calibration: str | None, trt_version: str,
              gpu: GpuInfo) -> dict:
    return {
        "onnx": onnx_path.name,
        "onnx_sha256": sha256_file(onnx_path),
        "precision": options.precision,
        "calibration_manifest_sha256": calibration,
        "tensorrt": trt_version,
        "cuda": {"runtime": gpu.cuda_runtime, "driver": gpu.cuda_driver},
        "gpu": {"name": gpu.name, "compute_capability": gpu.compute_capability},
        "build_options": options.to_dict(),
    }


def key_digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def reusable(engine_path: Path, key: dict) -> bool:
    """The engine exists, its sidecar carries the same key, and the engine bytes are the ones it recorded."""
    sidecar = sidecar_path(engine_path)
    if not engine_path.is_file() or not sidecar.is_file():
        return False
    try:
        recorded = json.loads(sidecar.read_text())
    except json.JSONDecodeError:
        return False
    return (recorded.get("cache_key_sha256") == key_digest(key)
            and recorded.get("engine_sha256") == sha256_file(engine_path))


def onnx_metadata(onnx_path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}


def write_engine(engine_path: Path, engine: bytes, key: dict, metadata: dict[str, str], rebuild: str) -> None:
    """Engine first, sidecar last: a sidecar only ever describes a complete engine."""
    from runtime.backends import PRECISION_KEY

    atomic_write_bytes(engine_path, engine)
    sidecar = {"format": SIDECAR_FORMAT, "cache_key": key, "cache_key_sha256": key_digest(key),
               "engine_sha256": hashlib.sha256(engine).hexdigest(),
               "metadata": {**metadata, PRECISION_KEY: key["precision"]}, "rebuild": rebuild}
    atomic_write_text(sidecar_path(engine_path), json.dumps(sidecar, indent=1, sort_keys=True) + "\n")


# ---- toolchain ----------------------------------------------------------------------------------------


def load_tensorrt():
    """Import TensorRT only after CUDA answered (see the module doc)."""
    gpu, why = probe_cuda()
    if gpu is None:
        raise MissingToolchain(f"no CUDA GPU: {why}")
    try:
        import tensorrt as trt
    except ImportError:
        trt = None
    return trt, gpu


def trtexec_version(trtexec: str) -> str:
    """'&&&& RUNNING TensorRT.trtexec [TensorRT v100300]' -> '10.3.0'."""
    output = subprocess.run([trtexec, "--help"], capture_output=True, text=True, timeout=60).stdout
    marker = output.find("[TensorRT v")
    if marker < 0:
        raise EngineBuildError(f"{trtexec}: cannot read its TensorRT version")
    number = int("".join(ch for ch in output[marker + 11 : marker + 20] if ch.isdigit()))
    major = number // 10000 if number >= 100000 else number // 1000
    rest = number % 10000 if number >= 100000 else number % 1000
    return f"{major}.{rest // 100}.{rest % 100}"


def calibration_cache_bytes(build: Path, trt_version: str) -> bytes:
    """TensorRT's native cache for this version, written from the calibrate stage's |max| table."""
    from calibration.quantize import trt_cache_text

    ranges = build / "calibration" / "trt" / "ranges.json"
    if not ranges.is_file():
        raise EngineBuildError(f"{ranges}: no calibration ranges; run `make calibrate`")
    amax = json.loads(ranges.read_text())["amax"]
    return trt_cache_text(amax, calibration_cache_header(trt_version)).encode()


def build_engine(args: argparse.Namespace, build: Path, trt, gpu: GpuInfo, trt_version: str) -> Path:
    options = build_options(args)
    major = parse_version(trt_version)[0]
    onnx_path = onnx_for(options.precision, options.int8_mode, major, build)
    if not onnx_path.is_file():
        raise EngineBuildError(f"{onnx_path}: not found; run `make export calibrate`")
    key = cache_key(onnx_path, options, calibration_identity(build, options), trt_version, gpu)
    engine_path = build / f"model.{options.precision}.engine"
    if reusable(engine_path, key) and not args.force:
        print(f"engine up to date: {engine_path} (cache key {key_digest(key)[:12]} matches)")
        return engine_path
    timing_cache = Path(args.timing_cache) if args.timing_cache else build / "tensorrt.timing.cache"
    calibrating = options.precision == "int8" and options.int8_mode == "calibrator"
    print(f"building {engine_path} from {onnx_path.name} with TensorRT {trt_version} on {gpu.name} ...")
    if args.trtexec:
        engine = build_with_trtexec(args.trtexec, onnx_path, engine_path, options, major, timing_cache,
                                    build if calibrating else None, trt_version)
    else:
        calibrator = None
        if calibrating:
            import numpy as np

            tensors = np.load(build / "calibration" / "tensors.npy", mmap_mode="r")
            calibrator = make_calibrator(trt, tensors, "image", calibration_cache_bytes(build, trt_version),
                                         build / "calibration" / "trt" / f"tensorrt-{trt_version}.cache")
        engine = build_serialized(trt, onnx_path, options, timing_cache, calibrator,
                                  warn=lambda m: print(f"warning: {m}", file=sys.stderr))
    write_engine(engine_path, engine, key, onnx_metadata(onnx_path), rebuild_command(args))
    print(f"wrote {engine_path} and {sidecar_path(engine_path).name}")
    return engine_path


def build_with_trtexec(trtexec: str, onnx_path: Path, engine_path: Path, options: BuildOptions, major: int,
                       timing_cache: Path, calibration_build: Path | None, trt_version: str) -> bytes:
    temp = engine_path.with_name(f".{engine_path.name}.partial")
    cache = None
    if calibration_build is not None:
        cache = calibration_build / "calibration" / "trt" / f"tensorrt-{trt_version}.cache"
        atomic_write_bytes(cache, calibration_cache_bytes(calibration_build, trt_version))
    command = trtexec_command(trtexec, onnx_path, temp, options, major, timing_cache, cache)
    print("  " + shlex.join(command))
    try:
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0 or not temp.is_file():
            tail = (result.stdout + result.stderr).strip().splitlines()[-1:] or ["no output"]
            raise EngineBuildError(f"trtexec failed (exit {result.returncode}): {tail[0][:200]}")
        return temp.read_bytes()
    finally:
        temp.unlink(missing_ok=True)


def run(args: argparse.Namespace) -> int:
    build = Path(args.build)
    build_options(args)  # bad options fail before any long stage runs
    ensure_onnx(args, build)
    trt, gpu = load_tensorrt()
    if args.trtexec:
        if shutil.which(args.trtexec) is None:
            raise MissingToolchain(f"--trtexec {args.trtexec}: not found")
        trt_version = trtexec_version(args.trtexec)
    elif trt is None:
        raise MissingToolchain(f"TensorRT is not installed (GPU {gpu.name} found)")
    else:
        trt_version = trt.__version__
        trt_major(trt)
    build_engine(args, build, trt, gpu, trt_version)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except MissingToolchain as error:
        onnx_files = ", ".join(p.name for p in sorted(Path(args.build).glob("model.*.onnx")))
        return fail(f"cannot build a TensorRT engine here: {error}; the ONNX artifacts are ready in "
                    f"{args.build}/ ({onnx_files}): copy them to the target and run "
                    f"`{rebuild_command(args)}` there", MISSING_EXIT)
    except SystemExit as stop:
        return int(stop.code or 1)
    except (EngineBuildError, ValueError, OSError) as error:
        return fail(error)


if __name__ == "__main__":
    sys.exit(main())
