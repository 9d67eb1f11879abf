"""TensorRT engine building for 8.6 (JetPack 6.0), 10.x (JetPack 6.1/6.2, desktop), 11.x (desktop) and
TensorRT-RTX 1.x (RTX desktops; builds ahead of time without a GPU).

The `trt` module is passed in, never imported here, so the same code runs against the real bindings and
against the recording stand-ins of tests/standins/. Which names the module has decides the calls
(runtime/trt_flavour.py), never a version number compared across flavours:

| precision | 8.6 / 10.x (weakly typed)                             | 11.x and TensorRT-RTX (strongly typed) |
| --------- | ----------------------------------------------------- | -------------------------------------- |
| fp32      | model.fp32.onnx                                       | model.fp32.onnx                        |
| fp16      | model.fp32.onnx + BuilderFlag.FP16                    | model.fp16.onnx, no flag exists        |
| int8 qdq  | model.int8.onnx + BuilderFlag.INT8 (+FP16 for the rest)| model.int8_fp16.onnx (FP16 rest)      |
| int8 cal. | model.fp32.onnx + INT8 + IInt8EntropyCalibrator2      | removed: refused                       |

8.6 also needs the EXPLICIT_BATCH network flag (10 ignores it, 11 and RTX removed it); `platform_has_fast_fp16`
is only consulted on 8.6 (deprecated in 10, removed in 11). `builder_optimization_level` exists from 8.6.
TensorRT-RTX: no timing cache (a deprecated no-op that queries a GPU), target compute capabilities instead
(`num_compute_capabilities`, then `set_compute_capability` per index), no DLA.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from runtime.artifacts import ENGINE_PRECISIONS, FP16_ONNX, FP32_ONNX, INT8_FP16_ONNX, INT8_ONNX
from runtime.contract import MAX_BATCH
from runtime.trt_flavour import (
    TENSORRT,
    TENSORRT_RTX,
    capability_of_member,
    compute_capability_member,
    flavour_of,
    release,
    strongly_typed,
)

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
    # A symbolic-batch ONNX gets the profile min 1 / opt batch_opt (default: batch) / max batch along its batch axis;
    # `profile` (min/opt/max input shapes, e.g. ((1,3,192,640), (2,3,192,640), (4,3,192,640))) overrides it.
    batch: int = 1
    batch_opt: int | None = None
    profile: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None = None
    builder: str = "python"  # "python" (the bindings) or "trtexec"
    # TensorRT-RTX target GPUs as "8.6", "12.0", ...; empty = every RTX architecture from Ampere on
    compute_capabilities: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.precision not in ENGINE_PRECISIONS:
            raise EngineBuildError(f"--precision {self.precision}: expected one of {', '.join(ENGINE_PRECISIONS)}")
        if self.int8_mode not in INT8_MODES:
            raise EngineBuildError(f"--int8-mode {self.int8_mode}: expected qdq or calibrator")
        if not 1 <= self.batch <= MAX_BATCH:
            raise EngineBuildError(f"--batch {self.batch}: expected 1..{MAX_BATCH}")
        if self.batch_opt is not None and not 1 <= self.batch_opt <= self.batch:
            raise EngineBuildError(f"--batch-opt {self.batch_opt}: expected 1..{self.batch} (--batch)")
        if self.workspace_mib <= 0:
            raise EngineBuildError(f"--workspace-mib {self.workspace_mib}: must be positive")
        if not 0 <= self.optimization_level <= 5:
            raise EngineBuildError(f"--opt-level {self.optimization_level}: TensorRT takes 0..5")
        if self.dla_core is not None and self.precision == "fp32":
            # DLA runs FP16 and INT8 only (trtexec forces FP16 there): an "fp32" DLA engine would not be FP32.
            raise EngineBuildError("--dla-core: DLA runs FP16 and INT8 only; use --precision fp16 or int8")
        for capability in self.compute_capabilities:
            try:
                compute_capability_member(capability)
            except ValueError as error:
                raise EngineBuildError(f"--compute-capability: {error}") from error

    def to_dict(self) -> dict:
        data = asdict(self)
        data["profile"] = [list(s) for s in self.profile] if self.profile else None
        if self.precision != "int8":
            data["int8_mode"] = None  # does not change a non-INT8 engine, so it must not split the cache
        return data


@dataclass(frozen=True)
class BuiltEngine:
    """A serialized engine and what the builder knows about it without a GPU to load it on."""

    engine: bytes
    io: list[dict]  # [{"name", "mode", "shape", "dtype"}] of the network that was built
    compute_capabilities: list[str]  # TensorRT-RTX targets ("8.6", ...); [] for TensorRT
    batch: dict[str, int]  # the batch sizes it takes: {"min", "opt", "max"}


def onnx_for(precision: str, int8_mode: str, typed: bool, build: Path) -> Path:
    """The ONNX file the builder parses for this precision; `typed`: a strongly typed TensorRT."""
    if precision == "int8" and int8_mode == "calibrator":
        if typed:
            raise EngineBuildError("--int8-mode calibrator: strongly typed TensorRT (11.x, TensorRT-RTX) has no "
                                   "implicit INT8 calibration; use --int8-mode qdq (the Q/DQ model)")
        return build / FP32_ONNX
    if precision == "int8":
        # Strongly typed: the Q/DQ model whose float rest is FP16 (calibration/strongly_typed.py says why).
        return build / (INT8_FP16_ONNX if typed else INT8_ONNX)
    if precision == "fp16" and typed:
        return build / FP16_ONNX
    return build / FP32_ONNX


def rtx_targets(trt, options: BuildOptions) -> list[str]:
    """The compute capabilities a TensorRT-RTX engine is built for: the ones asked for, else every RTX
    architecture this release knows from Ampere on (its own default; Turing only when asked)."""
    if options.compute_capabilities:
        known = set(trt.ComputeCapability.__members__)
        for capability in options.compute_capabilities:
            if compute_capability_member(capability) not in known:
                raise EngineBuildError(f"--compute-capability {capability}: not a target of this TensorRT-RTX "
                                       f"(it knows {', '.join(sorted(k for k in known if k.startswith('SM')))})")
        return list(dict.fromkeys(options.compute_capabilities))
    members = [name for name in trt.ComputeCapability.__members__ if name.startswith("SM")]
    return [capability_of_member(name) for name in members if int(name[2:]) >= 80]


def calibration_cache_header(version: str) -> str:
    """TensorRT writes its version into the cache header: 8.6.1 -> 8601, 10.3.0 -> 100300."""
    major, minor, patch = release(version)
    number = major * 1000 + minor * 100 + patch if major < 10 else major * 10000 + minor * 100 + patch
    return f"TRT-{number}-EntropyCalibration2"


def make_calibrator(trt, tensors: np.ndarray, input_name: str, cache: bytes | None, cache_out: Path | None):
    """An IInt8EntropyCalibrator2 (TensorRT <= 10) over the stored calibration tensors.

    With a cache (written from the same calibration set) TensorRT reads the scales and never asks for a
    batch; without one it pulls the frames through get_batch, one device buffer reused and freed by free()
    (the engine builder calls it once the build is done, whatever happened).
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
            from runtime.tensorrt_backend import cuda_check, import_cudart

            cudart = import_cudart()
            frame = np.ascontiguousarray(tensors[self.position : self.position + 1], np.float32)
            if self.device_ptr is None:
                self.device_ptr = cuda_check(cudart.cudaMalloc(frame.nbytes), "cudaMalloc (calibration batch)")
            cuda_check(cudart.cudaMemcpy(self.device_ptr, frame.ctypes.data, frame.nbytes,
                                         cudart.cudaMemcpyKind.cudaMemcpyHostToDevice), "cudaMemcpy (calibration)")
            self.position += 1
            return [int(self.device_ptr)]

        def free(self) -> None:
            if self.device_ptr is not None:
                from runtime.tensorrt_backend import cuda_check, import_cudart

                pointer, self.device_ptr = self.device_ptr, None
                cuda_check(import_cudart().cudaFree(pointer), "cudaFree (calibration batch)")

        def read_calibration_cache(self):
            return cache

        def write_calibration_cache(self, data) -> None:
            if cache_out is not None:
                from runtime.ioutil import atomic_write_bytes

                atomic_write_bytes(cache_out, bytes(data))

    return EntropyCalibrator()


def _network_flags(trt) -> int:
    # EXPLICIT_BATCH: required by 8.x, ignored (deprecated) by 10, gone from 11 and TensorRT-RTX.
    flag = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
    if flag is None or flavour_of(trt) != TENSORRT or release(trt.__version__) >= (10, 0, 0):
        return 0
    return 1 << int(flag)


def _parse(trt, builder, logger, onnx_path: Path):
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)) or "unknown error"
        raise EngineBuildError(f"{onnx_path}: {flavour_label(trt)}'s ONNX parser failed: {errors}")
    return network, parser


def flavour_label(trt) -> str:
    return "TensorRT-RTX" if flavour_of(trt) == TENSORRT_RTX else "TensorRT"


def _set_precision(trt, builder, config, options: BuildOptions, calibrator, warn) -> None:
    if strongly_typed(trt) or options.precision == "fp32":
        return  # 11.x / RTX: the ONNX's own types decide; these flags do not exist there
    if options.precision == "fp16":
        if release(trt.__version__) < (10, 0, 0) and not getattr(builder, "platform_has_fast_fp16", True):
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


def profile_shapes(shape: Sequence[int], options: BuildOptions, name: str = "image") -> tuple | None:
    """The min/opt/max input shapes to build for an input of `shape` (-1 where symbolic); None for a fixed shape.

    Only the batch axis may be symbolic without --profile: min 1 / opt --batch-opt (default --batch) / max --batch.
    A fixed batch axis takes exactly its own batch: asking for more is an error, not a silent batch-1 engine.
    """
    shape = tuple(int(d) for d in shape)
    if options.profile is not None:
        return options.profile
    if any(d < 0 for d in shape[1:]):
        raise EngineBuildError(f"input '{name}' has a symbolic axis besides the batch ({list(shape)}): pass --profile "
                               "MIN:OPT:MAX (e.g. 1x3x192x640:2x3x192x640:4x3x192x640)")
    if shape and shape[0] >= 0:
        if options.batch > 1:
            raise EngineBuildError(f"--batch {options.batch}: input '{name}' has a fixed batch of {shape[0]}; export "
                                   "with a symbolic batch axis (`python -m export`, its default) to batch frames")
        return None
    rest = shape[1:]
    opt = options.batch_opt or options.batch
    return (1, *rest), (opt, *rest), (options.batch, *rest)


def batch_range(shape: Sequence[int], options: BuildOptions) -> dict[str, int]:
    """The sidecar's record of the batch sizes an engine takes: {"min", "opt", "max"}."""
    shapes = profile_shapes(shape, options)
    if shapes is None:
        return {"min": int(shape[0]), "opt": int(shape[0]), "max": int(shape[0])}
    return {"min": shapes[0][0], "opt": shapes[1][0], "max": shapes[2][0]}


def _set_profile(trt, builder, config, network, options: BuildOptions, calibrating: bool):
    name = network.get_input(0).name
    shapes = profile_shapes(tuple(network.get_input(0).shape), options, name)
    if shapes is None:
        return
    profile = builder.create_optimization_profile()
    profile.set_shape(name, *shapes)
    config.add_optimization_profile(profile)
    if calibrating:
        config.set_calibration_profile(profile)


def _set_timing_cache(config, timing_cache: Path | None, warn):
    """Attach the timing cache; one from another TensorRT or GPU is refused by set_timing_cache (False):
    then build without it rather than fail. Returns the cache object the build will extend, or None."""
    if timing_cache is None:
        return None
    data = timing_cache.read_bytes() if timing_cache.is_file() else b""
    cache = config.create_timing_cache(data)
    if cache is not None and config.set_timing_cache(cache, False):
        return cache
    if data:
        warn(f"{timing_cache}: TensorRT refused this timing cache (another version or GPU); starting a new one")
        cache = config.create_timing_cache(b"")
        if cache is not None and config.set_timing_cache(cache, False):
            return cache
    warn(f"{timing_cache}: cannot use a timing cache; building without one")
    return None


def _save_timing_cache(config, timing_cache: Path, warn) -> None:
    """Best effort: a built engine is never lost over its timing cache."""
    from runtime.ioutil import atomic_write_bytes

    try:
        cache = config.get_timing_cache()
        if cache is None:
            warn(f"{timing_cache}: TensorRT returned no timing cache after the build; not saved")
            return
        atomic_write_bytes(timing_cache, bytes(cache.serialize()))
    except (OSError, RuntimeError, TypeError) as error:
        warn(f"{timing_cache}: timing cache not saved ({type(error).__name__}: {error})")


def _set_compute_capabilities(trt, config, options: BuildOptions) -> list[str]:
    if not hasattr(config, "num_compute_capabilities"):
        if options.compute_capabilities:
            raise EngineBuildError("--compute-capability: only TensorRT-RTX builds for chosen GPUs; TensorRT "
                                   "builds for the GPU it runs on")
        return []
    targets = rtx_targets(trt, options)
    config.num_compute_capabilities = len(targets)
    for index, capability in enumerate(targets):
        member = getattr(trt.ComputeCapability, compute_capability_member(capability))
        if not config.set_compute_capability(member, index):
            raise EngineBuildError(f"--compute-capability {capability}: TensorRT-RTX refused this target")
    return targets


def _set_dla(trt, builder, config, options: BuildOptions) -> None:
    if options.dla_core is None:
        return
    cores = getattr(builder, "num_DLA_cores", 0)
    if options.dla_core < 0 or options.dla_core >= cores:
        where = "this device has none" if cores == 0 else f"this device has {cores} (0..{cores - 1})"
        raise EngineBuildError(f"--dla-core {options.dla_core}: no such DLA core; {where}")
    config.default_device_type = trt.DeviceType.DLA
    config.DLA_core = options.dla_core
    config.set_flag(trt.BuilderFlag.GPU_FALLBACK)


def network_io(network) -> list[dict]:
    """Names, directions, shapes and types of the built network's inputs and outputs (for the sidecar)."""
    rows = []
    for mode, count, get in (("input", network.num_inputs, network.get_input),
                             ("output", network.num_outputs, network.get_output)):
        for index in range(count):
            tensor = get(index)
            dtype = getattr(tensor.dtype, "name", str(tensor.dtype))
            rows.append({"name": tensor.name, "mode": mode, "shape": [int(d) for d in tuple(tensor.shape)],
                         "dtype": dtype.rsplit(".", 1)[-1]})
    return rows


def build_serialized(trt, onnx_path: Path, options: BuildOptions, timing_cache: Path | None,
                     calibrator=None, warn=print) -> BuiltEngine:
    """Parse the ONNX and build a serialized engine with the API `trt` has."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, _parser = _parse(trt, builder, logger, onnx_path)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mib << 20)
    if hasattr(config, "builder_optimization_level"):
        config.builder_optimization_level = options.optimization_level
    elif options.optimization_level != 3:
        warn(f"--opt-level {options.optimization_level}: this TensorRT has no builder optimisation level "
             "(added in 8.6); ignored")
    if flavour_of(trt) == TENSORRT_RTX:
        timing_cache = None  # a deprecated no-op there that also forces a GPU query
    cache = _set_timing_cache(config, timing_cache, warn)
    targets = _set_compute_capabilities(trt, config, options)
    _set_precision(trt, builder, config, options, calibrator, warn)
    calibrating = options.precision == "int8" and options.int8_mode == "calibrator" and not strongly_typed(trt)
    _set_profile(trt, builder, config, network, options, calibrating)
    _set_dla(trt, builder, config, options)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"{onnx_path}: {flavour_label(trt)} could not build the engine (see its log above)")
    engine = bytes(serialized)
    if cache is not None and timing_cache is not None:
        _save_timing_cache(config, timing_cache, warn)
    return BuiltEngine(engine, network_io(network), targets,
                       batch_range(tuple(network.get_input(0).shape), options))


def trtexec_command(trtexec: str, onnx_path: Path, engine_path: Path, options: BuildOptions, typed: bool,
                    timing_cache: Path | None, calibration_cache: Path | None, input_name: str = "image"
                    ) -> list[str]:
    """The equivalent trtexec command line (TensorRT only; `typed`: 11.x, strongly typed)."""
    command = [trtexec, f"--onnx={onnx_path}", f"--saveEngine={engine_path}",
               f"--memPoolSize=workspace:{options.workspace_mib}M",
               f"--builderOptimizationLevel={options.optimization_level}"]
    if timing_cache is not None:
        command.append(f"--timingCacheFile={timing_cache}")
    if not typed and options.precision == "fp16":
        command.append("--fp16")
    if not typed and options.precision == "int8":
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
