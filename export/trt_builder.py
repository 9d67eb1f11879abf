"""TensorRT engine building for 8.6 (JetPack 6.0), 10.x (JetPack 6.1/6.2, desktop) and 11.x (desktop).

The `trt` module is passed in, never imported here, so the same code runs against the real bindings and
against the recording stand-ins of tests/standins/. Which names each version has decides the calls:

| precision | 8.6 / 10.x (weakly typed)                             | 11.x (always strongly typed)     |
| --------- | ----------------------------------------------------- | -------------------------------- |
| fp32      | model.fp32.onnx                                       | model.fp32.onnx                  |
| fp16      | model.fp32.onnx + BuilderFlag.FP16                    | model.fp16.onnx, no flag exists  |
| int8 qdq  | model.int8.onnx + BuilderFlag.INT8 (+FP16 for the rest)| model.int8.onnx, no flag exists |
| int8 cal. | model.fp32.onnx + INT8 + IInt8EntropyCalibrator2      | removed in 11: refused           |

8.6 also needs the EXPLICIT_BATCH network flag (10 ignores it, 11 removed it); `platform_has_fast_fp16`
is only consulted on 8.6 (deprecated in 10, removed in 11).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

PRECISIONS = ("fp32", "fp16", "int8")
INT8_MODES = ("qdq", "calibrator")


class EngineBuildError(RuntimeError):
    pass


@dataclass(frozen=True)
class BuildOptions:
    precision: str = "fp16"
    int8_mode: str = "qdq"
    workspace_mib: int = 1024
    optimization_level: int = 3
    dla_core: int | None = None
    # min/opt/max input shapes for a dynamic-batch ONNX, e.g. ((1,3,192,640), (2,3,192,640), (4,3,192,640))
    profile: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None = None
    builder: str = "python"  # "python" (the bindings) or "trtexec"
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise EngineBuildError(f"--precision {self.precision}: expected one of {', '.join(PRECISIONS)}")
        if self.int8_mode not in INT8_MODES:
            raise EngineBuildError(f"--int8-mode {self.int8_mode}: expected qdq or calibrator")
        if self.workspace_mib <= 0:
            raise EngineBuildError(f"--workspace-mib {self.workspace_mib}: must be positive")
        if not 0 <= self.optimization_level <= 5:
            raise EngineBuildError(f"--opt-level {self.optimization_level}: TensorRT takes 0..5")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["profile"] = [list(s) for s in self.profile] if self.profile else None
        if self.precision != "int8":
            data["int8_mode"] = None  # does not change a non-INT8 engine, so it must not split the cache
        return data


def parse_version(version: str) -> tuple[int, int, int]:
    parts = [int("".join(ch for ch in p if ch.isdigit()) or 0) for p in version.split(".")[:3]]
    return tuple((parts + [0, 0, 0])[:3])  # type: ignore[return-value]


def trt_major(trt) -> int:
    return parse_version(trt.__version__)[0]


def strongly_typed(major: int) -> bool:
    return major >= 11


def onnx_for(precision: str, int8_mode: str, major: int, build: Path) -> Path:
    """The ONNX file the builder parses for this precision on this TensorRT major version."""
    if precision == "int8" and int8_mode == "calibrator":
        if strongly_typed(major):
            raise EngineBuildError("--int8-mode calibrator: TensorRT 11 removed implicit INT8 calibration; "
                                   "use --int8-mode qdq (the Q/DQ model)")
        return build / "model.fp32.onnx"
    if precision == "int8":
        return build / "model.int8.onnx"
    if precision == "fp16" and strongly_typed(major):
        return build / "model.fp16.onnx"
    return build / "model.fp32.onnx"


def calibration_cache_header(version: str) -> str:
    """TensorRT writes its version into the cache header: 8.6.1 -> 8601, 10.3.0 -> 100300."""
    major, minor, patch = parse_version(version)
    number = major * 1000 + minor * 100 + patch if major < 10 else major * 10000 + minor * 100 + patch
    return f"TRT-{number}-EntropyCalibration2"


def make_calibrator(trt, tensors: np.ndarray, input_name: str, cache: bytes | None, cache_out: Path | None):
    """An IInt8EntropyCalibrator2 (TensorRT <= 10) over the stored calibration tensors.

    With a cache (written from the same calibration set) TensorRT reads the scales and never asks for a
    batch; without one it pulls the frames through get_batch, one device buffer reused.
    """

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.position = 0
            self.device_ptr = None

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names: list[str]):
            if self.position >= len(tensors):
                return None
            from cuda.bindings import runtime as cudart

            frame = np.ascontiguousarray(tensors[self.position : self.position + 1], np.float32)
            if self.device_ptr is None:
                _, self.device_ptr = cudart.cudaMalloc(frame.nbytes)
            cudart.cudaMemcpy(self.device_ptr, frame.ctypes.data, frame.nbytes,
                              cudart.cudaMemcpyKind.cudaMemcpyHostToDevice)
            self.position += 1
            return [int(self.device_ptr)]

        def read_calibration_cache(self):
            return cache

        def write_calibration_cache(self, data) -> None:
            if cache_out is not None:
                from runtime.ioutil import atomic_write_bytes

                atomic_write_bytes(cache_out, bytes(data))

    return EntropyCalibrator()


def _parse(trt, builder, logger, onnx_path: Path, major: int):
    flags = 0
    if major < 10:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)) or "unknown error"
        raise EngineBuildError(f"{onnx_path}: TensorRT's ONNX parser failed: {errors}")
    return network, parser


def _set_precision(trt, builder, config, options: BuildOptions, major: int, calibrator, warn) -> None:
    if strongly_typed(major) or options.precision == "fp32":
        return  # 11.x: the ONNX's own types decide; these flags do not exist there
    if options.precision == "fp16":
        if major < 10 and not builder.platform_has_fast_fp16:
            warn("this GPU has no fast FP16; the FP16 engine may be slower than FP32")
        config.set_flag(trt.BuilderFlag.FP16)
        return
    config.set_flag(trt.BuilderFlag.INT8)
    # Layers left unquantized run in FP16 rather than FP32.
    config.set_flag(trt.BuilderFlag.FP16)
    if options.int8_mode == "calibrator":
        if calibrator is None:
            raise EngineBuildError("--int8-mode calibrator needs a calibration set; run `make calibrate`")
        config.int8_calibrator = calibrator


def _set_profile(trt, builder, config, network, options: BuildOptions, calibrating: bool):
    name = network.get_input(0).name
    dynamic = any(d < 0 for d in tuple(network.get_input(0).shape))
    if options.profile is None and not dynamic:
        return
    if options.profile is None:
        raise EngineBuildError(f"input '{name}' has a dynamic shape: pass --profile MIN:OPT:MAX "
                               "(e.g. 1x3x192x640:2x3x192x640:4x3x192x640)")
    profile = builder.create_optimization_profile()
    profile.set_shape(name, *options.profile)
    config.add_optimization_profile(profile)
    if calibrating:
        config.set_calibration_profile(profile)


def build_serialized(trt, onnx_path: Path, options: BuildOptions, timing_cache: Path | None,
                     calibrator=None, warn=print) -> bytes:
    """Parse the ONNX and build a serialized engine with the API of `trt`'s version."""
    major = trt_major(trt)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, _parser = _parse(trt, builder, logger, onnx_path, major)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mib << 20)
    config.builder_optimization_level = options.optimization_level
    cache_bytes = timing_cache.read_bytes() if timing_cache is not None and timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, False)
    _set_precision(trt, builder, config, options, major, calibrator, warn)
    calibrating = options.precision == "int8" and options.int8_mode == "calibrator" and not strongly_typed(major)
    _set_profile(trt, builder, config, network, options, calibrating)
    if options.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = options.dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"{onnx_path}: TensorRT could not build the engine (see its log above)")
    if timing_cache is not None:
        from runtime.ioutil import atomic_write_bytes

        atomic_write_bytes(timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(serialized)


def trtexec_command(trtexec: str, onnx_path: Path, engine_path: Path, options: BuildOptions, major: int,
                    timing_cache: Path | None, calibration_cache: Path | None, input_name: str = "image"
                    ) -> list[str]:
    """The equivalent trtexec command line (the same version rules as build_serialized)."""
    command = [trtexec, f"--onnx={onnx_path}", f"--saveEngine={engine_path}",
               f"--memPoolSize=workspace:{options.workspace_mib}M",
               f"--builderOptimizationLevel={options.optimization_level}"]
    if timing_cache is not None:
        command.append(f"--timingCacheFile={timing_cache}")
    if not strongly_typed(major) and options.precision == "fp16":
        command.append("--fp16")
    if not strongly_typed(major) and options.precision == "int8":
        command += ["--int8", "--fp16"]
        if options.int8_mode == "calibrator":
            if calibration_cache is None:
                raise EngineBuildError("--int8-mode calibrator needs a calibration cache; run `make calibrate`")
            command.append(f"--calib={calibration_cache}")
    if options.profile is not None:
        shapes = ["x".join(str(d) for d in shape) for shape in options.profile]
        command += [f"--minShapes={input_name}:{shapes[0]}", f"--optShapes={input_name}:{shapes[1]}",
                    f"--maxShapes={input_name}:{shapes[2]}"]
    if options.dla_core is not None:
        command += [f"--useDLACore={options.dla_core}", "--allowGPUFallback"]
    return command
