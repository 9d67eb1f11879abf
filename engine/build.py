"""Checkpoint -> ONNX -> calibration -> TensorRT or TensorRT-RTX engine, rebuilding only what changed.

    python -m engine [--precision fp16|int8|fp32] [--int8-mode qdq|calibrator] [--build build]
                            [--checkpoint models/...pt] [--data KITTI] [--workspace-mib 1024] [--opt-level 3]
                            [--flavour auto|tensorrt|tensorrt_rtx] [--compute-capability 8.6,8.9]
                            [--dla-core N] [--batch M] [--batch-opt N] [--profile MIN:OPT:MAX]
                            [--trtexec PATH] [--force]

Stages and what decides whether each runs:
- FP32/FP16 ONNX: the checkpoint's sha256 differs from the one build/parity.json recorded -> the export stage
  (export.stage.run_export, what `python -m export` runs).
- INT8 ONNX + calibration: model.int8.onnx's recorded source sha256 differs from model.fp32.onnx's -> the
  calibration stage (calibration.stage.run_calibration, what `python -m calibration` runs; only for --precision int8).
- Engine: its JSON sidecar's cache key (ONNX sha256, precision, calibration identity, flavour and its version,
  build options; TensorRT: CUDA versions, GPU name and compute capability; TensorRT-RTX: the targeted compute
  capabilities) differs from this build's -> rebuild.
Flavour (runtime/trt_flavour.py): with a CUDA GPU, TensorRT when installed, else TensorRT-RTX; without a GPU,
TensorRT-RTX (it builds ahead of time on a CPU; the engine is specialised on the RTX GPU at load).
Without either the ONNX stages still run, then one line says what is missing (exit 3).
TensorRT is imported only after CUDA answered: its runtime can crash the process without a device.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import shlex
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import onnx

from engine.trt_builder import (
    INT8_MODES,
    BuildOptions,
    BuiltEngine,
    EngineBuildError,
    batch_range,
    build_serialized,
    calibration_cache_header,
    make_calibrator,
    onnx_for,
    profile_shapes,
    rtx_targets,
    trtexec_command,
)
from runtime.artifacts import (
    CALIBRATION_MANIFEST_FILE,
    ENGINE_CACHE_KEY,
    ENGINE_PRECISIONS,
    FP16_ONNX,
    FP32,
    FP32_ONNX,
    INT8,
    INT8_FP16,
    INT8_ONNX,
    TENSORRT_RANGES_FILE,
    BuildDir,
    engine_name,
)
from runtime.contract import CALIBRATION_KEY, SIDECAR_FORMAT, SOURCE_ONNX_SHA256_KEY
from runtime.input_policy import ArtifactError, parse_json, read_json
from runtime.ioutil import atomic_write_bytes, atomic_write_text, fail, sha256_file
from runtime.output_policy import claim_outputs, one_run, temporary_name
from runtime.paths import DEFAULT_KITTI_DIR, SHIPPED_CHECKPOINT
from runtime.tensorrt_backend import GpuInfo, probe_cuda, sidecar_path
from runtime.trt_flavour import (
    FLAVOURS,
    TENSORRT,
    TENSORRT_RTX,
    builds_without_gpu,
    display_name,
    flavour_of,
    import_flavour,
    installed_flavours,
    strongly_typed,
    version_tuple,
)

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
    parser = argparse.ArgumentParser(prog="python -m engine", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precision", default="fp16", choices=ENGINE_PRECISIONS)
    parser.add_argument("--int8-mode", default="qdq", choices=INT8_MODES,
                        help="qdq: the Q/DQ ONNX (all versions); calibrator: FP32 ONNX + IInt8EntropyCalibrator2 "
                             "with the calibration cache (TensorRT <= 10)")
    parser.add_argument("--build", default="build")
    parser.add_argument("--checkpoint", default=SHIPPED_CHECKPOINT)
    parser.add_argument("--data", default=DEFAULT_KITTI_DIR, help="KITTI Road folder (gates and calibration)")
    parser.add_argument("--workspace-mib", type=int, default=1024)
    parser.add_argument("--opt-level", type=int, default=3, help="builder optimisation level 0..5")
    parser.add_argument("--flavour", default="auto", choices=("auto", *FLAVOURS),
                        help="auto: TensorRT with a GPU when installed, else TensorRT-RTX (builds without a GPU)")
    parser.add_argument("--compute-capability", default=None,
                        help="TensorRT-RTX target GPUs, e.g. 8.6,8.9 (default: every RTX architecture from "
                             "Ampere on; 7.5 = Turing only when asked)")
    parser.add_argument("--dla-core", type=int, default=None, help="Jetson DLA core (GPU fallback on)")
    parser.add_argument("--batch", type=int, default=1, metavar="M",
                        help="the most frames one call takes (cameras batched together): optimisation profile min 1 / "
                        "opt --batch-opt / max M, recorded in the sidecar and checked at load (default 1)")
    parser.add_argument("--batch-opt", type=int, default=None, metavar="N",
                        help="the batch size TensorRT tunes its kernels for (default: --batch)")
    parser.add_argument("--profile", default=None, help="MIN:OPT:MAX input shapes (NxCxHxW), instead of --batch")
    parser.add_argument("--timing-cache", default=None,
                        help="default: BUILD/tensorrt-VERSION-smCC.timing.cache (TensorRT only; RTX has none)")
    parser.add_argument("--trtexec", default=None, help="build with this trtexec instead of the Python API")
    parser.add_argument("--force", action="store_true", help="rebuild the engine even if its key matches")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def compute_capabilities(args: argparse.Namespace) -> tuple[str, ...]:
    text = getattr(args, "compute_capability", None)
    return tuple(part.strip() for part in text.split(",") if part.strip()) if text else ()


def build_options(args: argparse.Namespace) -> BuildOptions:
    return BuildOptions(precision=args.precision, int8_mode=args.int8_mode, workspace_mib=args.workspace_mib,
                        optimization_level=args.opt_level, dla_core=args.dla_core, batch=getattr(args, "batch", 1),
                        batch_opt=getattr(args, "batch_opt", None), profile=parse_profile(args.profile),
                        builder="trtexec" if args.trtexec else "python",
                        compute_capabilities=compute_capabilities(args))


def rebuild_command(args: argparse.Namespace, flavour: str | None = None) -> str:
    parts = ["python -m engine", f"--precision {args.precision}", f"--build {args.build}"]
    if flavour is not None and flavour != TENSORRT:
        parts.append(f"--flavour {flavour}")
    if getattr(args, "compute_capability", None):
        parts.append(f"--compute-capability {args.compute_capability}")
    if args.precision == "int8":
        parts.append(f"--int8-mode {args.int8_mode}")
    if args.dla_core is not None:
        parts.append(f"--dla-core {args.dla_core}")
    if getattr(args, "batch", 1) != 1:
        parts.append(f"--batch {args.batch}")
    if getattr(args, "batch_opt", None) is not None:
        parts.append(f"--batch-opt {args.batch_opt}")
    if args.profile:
        parts.append(f"--profile {args.profile}")
    return " ".join(parts)


# ---- ONNX stages --------------------------------------------------------------------------------------


def onnx_is_current(build: Path, checkpoint: Path) -> bool:
    parity = build / "parity.json"
    if not (build / FP32_ONNX).is_file() or not (build / FP16_ONNX).is_file():
        return False
    if not parity.is_file() or not checkpoint.is_file():
        return not checkpoint.is_file() and parity.is_file()  # no checkpoint here: trust what was built
    try:
        recorded = read_json(parity)
    except ArtifactError:  # unreadable: export again, which rewrites it
        return False
    return isinstance(recorded, dict) and recorded.get("checkpoint_sha256") == sha256_file(checkpoint)


def int8_is_current(build: Path) -> bool:
    files = BuildDir(build)
    if not files.present(INT8.name) or not (build / CALIBRATION_MANIFEST_FILE).is_file():
        return False
    if not files.present(INT8_FP16.name):
        return False  # a build/ from before the strongly typed INT8 file existed
    recorded = onnx_metadata(files.path(INT8.name)).get(SOURCE_ONNX_SHA256_KEY)
    return not files.stale(INT8.name, recorded, source=FP32.name)


def torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


def ensure_onnx(args: argparse.Namespace, build: Path) -> None:
    """Run the export and calibration stages that are out of date (each is gated and atomic); without PyTorch
    (a device's runtime-only install), take the checkpoint's shipped ONNX files from models/ instead."""
    if not torch_available():
        from export.shipped import ShippedError, ensure_from_models

        if args.precision == "fp32" or args.int8_mode == "calibrator":
            raise EngineBuildError(f"--precision {args.precision} --int8-mode {args.int8_mode}: needs the FP32 ONNX "
                                   "and the calibration set, made by `make export calibrate` (PyTorch); models/ "
                                   "ships FP16 and Q/DQ INT8 only")
        try:
            ensure_from_models(build, Path(args.checkpoint))
        except ShippedError as error:
            raise EngineBuildError(f"no PyTorch here to export {args.checkpoint}, and {error}") from error
        return
    from calibration.stage import CalibrationOptions, run_calibration
    from calibration.stage import GateError as CalibrationGateError
    from export.stage import GATE_ERRORS, ExportOptions, run_export

    progress = not args.no_progress
    checkpoint, data = Path(args.checkpoint), Path(args.data)
    try:
        if not onnx_is_current(build, checkpoint):
            run_export(checkpoint, build, data, ExportOptions(progress=progress))
        else:
            print(f"ONNX up to date: {build / FP32_ONNX}, {build / FP16_ONNX}")
        if args.precision == "int8":
            if not int8_is_current(build):
                run_calibration(build, data, data, CalibrationOptions(progress=progress))
            else:
                print(f"INT8 ONNX and calibration up to date: {build / INT8_ONNX}")
    except (*GATE_ERRORS, CalibrationGateError) as error:  # a gate failed: exit 1, as the stage's own CLI does
        raise SystemExit(fail(error, 1)) from error


# ---- cache key ----------------------------------------------------------------------------------------


def calibration_identity(build: Path, options: BuildOptions) -> str | None:
    """The calibration set's manifest sha256; in calibrator mode also the ranges the cache is written from
    (another calibration method changes them, not the set), as "MANIFEST+ranges:RANGES"."""
    if options.precision != "int8":
        return None
    manifest = build / CALIBRATION_MANIFEST_FILE
    if manifest.is_file():
        identity = sha256_file(manifest)
    else:  # the shipped INT8 files (models/) carry their calibration set's manifest sha256 in their metadata
        recorded = onnx_metadata(build / INT8_ONNX).get(CALIBRATION_KEY) if options.int8_mode == "qdq" and \
            (build / INT8_ONNX).is_file() else None
        calibration = parse_json(recorded, f"{build / INT8_ONNX} metadata {CALIBRATION_KEY}") if recorded else None
        identity = calibration.get("manifest_sha256") if isinstance(calibration, dict) else None
        if not identity:
            raise EngineBuildError(f"{manifest}: no calibration manifest; run `make calibrate`")
    if options.int8_mode == "calibrator":
        ranges = build / TENSORRT_RANGES_FILE
        if not ranges.is_file():
            raise EngineBuildError(f"{ranges}: no calibration ranges; run `make calibrate`")
        identity += f"+ranges:{sha256_file(ranges)}"
    return identity


def cache_key(onnx_path: Path, options: BuildOptions, calibration: str | None, trt_version: str,
              gpu: GpuInfo | None, flavour: str = TENSORRT, targets: list[str] | None = None) -> dict:
    """TensorRT engines are tied to the build GPU; TensorRT-RTX engines to their target compute capabilities
    only (built ahead of time, maybe on a machine without a GPU), so the build machine is not in their key."""
    tied_to_gpu = flavour == TENSORRT
    if tied_to_gpu and gpu is None:
        raise EngineBuildError("TensorRT builds on, and for, a CUDA GPU: none found")
    return {
        "onnx": onnx_path.name,
        "onnx_sha256": sha256_file(onnx_path),
        "precision": options.precision,
        "calibration_manifest_sha256": calibration,
        "flavour": flavour,
        "tensorrt": trt_version,
        "compute_capabilities": list(targets or []),
        "cuda": {"runtime": gpu.cuda_runtime, "driver": gpu.cuda_driver} if tied_to_gpu else None,
        "gpu": {"name": gpu.name, "compute_capability": gpu.compute_capability} if tied_to_gpu else None,
        "build_options": options.to_dict(),
    }


def key_digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def reusable(engine_path: Path, key: dict) -> bool:
    """The engine exists, its sidecar carries the same key, and the engine bytes are the ones it recorded."""
    sidecar = sidecar_path(engine_path)
    if not engine_path.is_file() or not sidecar.exists():
        return False
    try:
        recorded = read_json(sidecar)
    except ArtifactError:  # damaged, huge, deep, or not a file: rebuilt, and replaced atomically
        return False
    return (isinstance(recorded, dict) and recorded.get(ENGINE_CACHE_KEY) == key_digest(key)
            and recorded.get("engine_sha256") == sha256_file(engine_path))


def onnx_metadata(onnx_path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}


def write_engine(engine_path: Path, built: BuiltEngine, key: dict, metadata: dict[str, str], rebuild: str) -> None:
    """Engine first, sidecar last: a sidecar only ever describes a complete engine."""
    from runtime.contract import PRECISION_KEY

    atomic_write_bytes(engine_path, built.engine)
    sidecar = {"format": SIDECAR_FORMAT, "flavour": key["flavour"], "cache_key": key,
               ENGINE_CACHE_KEY: key_digest(key), "engine_sha256": hashlib.sha256(built.engine).hexdigest(),
               "engine_bytes": len(built.engine), "io": built.io, "batch": built.batch,
               "metadata": {**metadata, PRECISION_KEY: key["precision"]}, "rebuild": rebuild}
    atomic_write_text(sidecar_path(engine_path), json.dumps(sidecar, indent=1, sort_keys=True) + "\n")


# ---- toolchain ----------------------------------------------------------------------------------------


def choose_flavour(requested: str, gpu: GpuInfo | None, why: str) -> str:
    """Which flavour builds here (see the module doc); MissingToolchain when none can."""
    installed = installed_flavours()
    candidates = list(FLAVOURS) if requested == "auto" else [requested]
    for flavour in candidates:
        if flavour in installed and (gpu is not None or builds_without_gpu(flavour)):
            return flavour
    if gpu is None and TENSORRT_RTX not in installed:
        raise MissingToolchain(f"no CUDA GPU ({why}) and no TensorRT-RTX (`make setup-rtx` builds without a GPU)")
    if gpu is None:
        raise MissingToolchain(f"no CUDA GPU ({why}); TensorRT needs one (--flavour tensorrt_rtx builds without)")
    names = " or ".join(display_name(f) for f in candidates)
    raise MissingToolchain(f"{names} is not installed (GPU {gpu.name} found)")


def load_tensorrt(requested: str = "auto"):
    """(module or None, flavour, GPU or None). TensorRT is imported only after CUDA answered (see the module
    doc); TensorRT-RTX builds without a GPU, so it may be imported without one."""
    gpu, why = probe_cuda()
    flavour = choose_flavour(requested, gpu, why)
    try:
        trt = import_flavour(flavour)
    except ImportError as error:
        raise MissingToolchain(f"{display_name(flavour)} does not import ({error})") from error
    return trt, flavour, gpu


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

    ranges = build / TENSORRT_RANGES_FILE
    if not ranges.is_file():
        raise EngineBuildError(f"{ranges}: no calibration ranges; run `make calibrate`")
    table = read_json(ranges, max_bytes=16 << 20)
    amax = table.get("amax") if isinstance(table, dict) else None
    if not isinstance(amax, dict) or not all(isinstance(v, (int, float)) for v in amax.values()):
        raise EngineBuildError(f"{ranges}: no table of tensor ranges ('amax'); run `make calibrate`")
    return trt_cache_text(amax, calibration_cache_header(trt_version)).encode()


def default_timing_cache(build: Path, trt_version: str, gpu: GpuInfo | None) -> Path:
    """One timing cache per TensorRT release and GPU architecture: TensorRT refuses another's."""
    release = ".".join(str(p) for p in version_tuple(trt_version)[:3])
    sm = gpu.compute_capability.replace(".", "") if gpu is not None else "none"
    return build / f"tensorrt-{release}-sm{sm}.timing.cache"


def build_engine(args: argparse.Namespace, build: Path, trt, gpu: GpuInfo | None, trt_version: str) -> Path:
    options = build_options(args)
    flavour = flavour_of(trt) if trt is not None else TENSORRT
    typed = strongly_typed(trt) if trt is not None and not args.trtexec else version_tuple(trt_version)[0] >= 11
    onnx_path = onnx_for(options.precision, options.int8_mode, typed, build)
    if not onnx_path.is_file():
        raise EngineBuildError(f"{onnx_path}: not found; run `make export calibrate`")
    input_shape = next(row["shape"] for row in onnx_io(onnx_path) if row["mode"] == "input")
    options = replace(options, profile=profile_shapes(input_shape, options))  # one profile for either builder
    targets = rtx_targets(trt, options) if flavour == TENSORRT_RTX else []
    key = cache_key(onnx_path, options, calibration_identity(build, options), trt_version, gpu, flavour, targets)
    engine_path = build / engine_name(options.precision)
    if reusable(engine_path, key) and not args.force:
        print(f"engine up to date: {engine_path} (cache key {key_digest(key)[:12]} matches)")
        return engine_path
    timing_cache = None
    if flavour == TENSORRT:
        timing_cache = Path(args.timing_cache) if args.timing_cache else default_timing_cache(build, trt_version, gpu)
    calibrating = options.precision == "int8" and options.int8_mode == "calibrator"
    where = f"on {gpu.name}" if gpu is not None else "ahead of time (no GPU here)"
    targets_text = f" for compute capabilities {', '.join(targets)}" if targets else ""
    print(f"building {engine_path} from {onnx_path.name} with {display_name(flavour)} {trt_version} "
          f"{where}{targets_text} ...")
    if args.trtexec:
        built = build_with_trtexec(args.trtexec, onnx_path, engine_path, options, typed, timing_cache,
                                   build if calibrating else None, trt_version)
    else:
        built = build_with_bindings(trt, build, onnx_path, options, timing_cache, calibrating, trt_version)
    write_engine(engine_path, built, key, onnx_metadata(onnx_path), rebuild_command(args, flavour))
    print(f"wrote {engine_path} ({len(built.engine) / 1e6:.1f} MB) and {sidecar_path(engine_path).name}")
    return engine_path


def build_with_bindings(trt, build: Path, onnx_path: Path, options: BuildOptions, timing_cache: Path | None,
                        calibrating: bool, trt_version: str) -> BuiltEngine:
    calibrator = None
    if calibrating:
        import numpy as np

        tensors = np.load(build / "calibration" / "tensors.npy", mmap_mode="r")
        calibrator = make_calibrator(trt, tensors, "image", calibration_cache_bytes(build, trt_version),
                                     build / "calibration" / "trt" / f"tensorrt-{trt_version}.cache")
    try:
        return build_serialized(trt, onnx_path, options, timing_cache, calibrator,
                                warn=lambda m: print(f"warning: {m}", file=sys.stderr))
    finally:
        if calibrator is not None:
            calibrator.free()


def build_with_trtexec(trtexec: str, onnx_path: Path, engine_path: Path, options: BuildOptions, typed: bool,
                       timing_cache: Path | None, calibration_build: Path | None, trt_version: str) -> BuiltEngine:
    temp = temporary_name(engine_path)  # unique: two builds into one folder never share a temporary file
    cache = None
    if calibration_build is not None:
        cache = calibration_build / "calibration" / "trt" / f"tensorrt-{trt_version}.cache"
        atomic_write_bytes(cache, calibration_cache_bytes(calibration_build, trt_version))
    command = trtexec_command(trtexec, onnx_path, temp, options, typed, timing_cache, cache)
    print("  " + shlex.join(command))
    try:
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0 or not temp.stat().st_size:
            tail = (result.stdout + result.stderr).strip().splitlines()[-1:] or ["no output"]
            raise EngineBuildError(f"trtexec failed (exit {result.returncode}): {tail[0][:200]}")
        input_shape = next(row["shape"] for row in onnx_io(onnx_path) if row["mode"] == "input")
        return BuiltEngine(temp.read_bytes(), onnx_io(onnx_path), [], batch_range(input_shape, options))
    finally:
        temp.unlink(missing_ok=True)


def onnx_io(onnx_path: Path) -> list[dict]:
    """The ONNX graph's I/O in the sidecar's form (trtexec does not report the network it built)."""
    from onnx import TensorProto

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    dtypes = {TensorProto.FLOAT: "FLOAT", TensorProto.FLOAT16: "HALF", TensorProto.INT8: "INT8"}
    rows = []
    for mode, values in (("input", [v for v in graph.input if v.name not in initializers]),
                         ("output", list(graph.output))):
        for value in values:
            tensor = value.type.tensor_type
            rows.append({"name": value.name, "mode": mode,
                         "shape": [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim],
                         "dtype": dtypes.get(tensor.elem_type, str(tensor.elem_type))})
    return rows


def run(args: argparse.Namespace) -> int:
    build = Path(args.build)
    build_options(args)  # bad options fail before any long stage runs
    ensure_onnx(args, build)
    if args.trtexec:
        if args.flavour == TENSORRT_RTX:
            raise EngineBuildError("--trtexec: TensorRT-RTX has no trtexec; drop --trtexec")
        gpu, why = probe_cuda()
        if gpu is None:
            raise MissingToolchain(f"no CUDA GPU: {why}")
        if shutil.which(args.trtexec) is None:
            raise MissingToolchain(f"--trtexec {args.trtexec}: not found")
        build_engine(args, build, None, gpu, trtexec_version(args.trtexec))
        return 0
    trt, _flavour, gpu = load_tensorrt(args.flavour)
    build_engine(args, build, trt, gpu, trt.__version__)
    return 0


@one_run
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        claim_outputs({}, {"--checkpoint": args.checkpoint, "--data": args.data})  # no stage may replace them
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
