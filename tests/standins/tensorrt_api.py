"""Recording stand-ins of the TensorRT Python API, one per version family: 8.5, 8.6, 10.x, 11.x and TensorRT-RTX.

STAND-INS, NOT TensorRT: they cannot build or run anything. They reproduce *which names each version
has* (from NVIDIA's API docs and the 10-to-11 migration guide, see /work/shared/notes) and record every
call, so tests can check the calls the engine builder makes per version and precision, and the runtime
backend's load path (which needs a GPU for real). Names a version lacks raise AttributeError, as the real
pybind11 bindings do:

- 11.x has no BuilderFlag.FP16/INT8, IBuilderConfig.int8_calibrator / set_calibration_profile,
  Builder.platform_has_fast_fp16, NetworkDefinitionCreationFlag.EXPLICIT_BATCH, IInt8EntropyCalibrator2.
- 8.6 and 10.x have all of them (10.x deprecates the calibrators and EXPLICIT_BATCH, still present);
  8.5 lacks IBuilderConfig.builder_optimization_level (added in 8.6).
- TensorRT-RTX ("rtx") is 11's strongly typed API plus target compute capabilities, get_engine_validity,
  IRuntimeConfig / IRuntimeCache, and minus DLA.

Classes carry the real binding names (IBuilderConfig, INetworkDefinition, ...) and argument names, so
tests/test_tensorrt_rtx_real.py can check every shared name against the real `tensorrt_rtx` module.
"""

from __future__ import annotations

import hashlib
import json
import types
from pathlib import Path


class Flag:
    """An enum member: int() gives its value, like TensorRT's pybind enums."""

    def __init__(self, name: str, value: int) -> None:
        self.name, self.value = name, value

    def __int__(self) -> int:
        return self.value

    def __repr__(self) -> str:
        return self.name


def enum(name: str, members: list[str] | dict[str, int]) -> type:
    values = members if isinstance(members, dict) else {m: i for i, m in enumerate(members)}
    flags = {m: Flag(m, v) for m, v in values.items()}
    return type(name, (), {**flags, "__members__": dict(flags)})


class Dims(tuple):
    """trt.Dims: a sequence of ints, not a tuple, in the bindings."""


class ParserError:
    """nvonnxparser::IParserError: code reads it through str()."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text


class Strict:
    """Setting an attribute the real binding class lacks raises AttributeError (pybind11 behaviour)."""

    _settable: tuple[str, ...] = ()

    def __setattr__(self, key: str, value) -> None:
        if not key.startswith("_") and key not in self._settable:
            raise AttributeError(f"'{type(self).__name__}' object has no attribute '{key}'")
        object.__setattr__(self, key, value)


# Values as the real bindings have them (TensorRT 10 headers; TensorRT-RTX 1.7 seen in its module).
BUILDER_FLAG_VALUES = {"FP16": 0, "INT8": 1, "DEBUG": 2, "GPU_FALLBACK": 3, "STRICT_TYPES": 4, "REFIT": 4,
                       "OBEY_PRECISION_CONSTRAINTS": 9, "PREFER_PRECISION_CONSTRAINTS": 10, "REFIT_IDENTICAL": 19}
RTX_COMPUTE_CAPABILITIES = {"NONE": 0, "CURRENT": 1, "SM75": 75, "SM80": 80, "SM86": 86, "SM89": 89, "SM120": 120,
                            "SM121": 121}
RTX_DIAGNOSTICS = {"VERSION_MISMATCH": 1, "UNSUPPORTED_CC": 2, "OLD_CUDA_DRIVER": 4, "OLD_CUDA_RUNTIME": 8,
                   "INSUFFICIENT_GPU_MEMORY": 16, "MALFORMED_ENGINE": 32, "CUDA_ERROR": 64}
STANDIN_ENGINE = b"STANDIN-ENGINE\n"


def make_tensorrt(version: str, dla_cores: int = 0) -> types.ModuleType:
    """A fresh stand-in module for TensorRT `version` (e.g. "8.6.1", "10.3.0", "11.4.0") or, with
    version "rtx" / "rtx-1.7.1.116", for TensorRT-RTX. `dla_cores`: what Builder.num_DLA_cores reports."""
    rtx = version.startswith("rtx")
    if rtx:
        version = version.partition("-")[2] or "1.7.1.116"
    major = 11 if rtx else int(version.split(".")[0])
    minor = int(version.split(".")[1])
    trt = types.ModuleType(f"tensorrt{'_rtx' if rtx else ''}_standin_{version.replace('.', '_')}")
    trt.__version__ = version
    trt.roadseg_flavour = "tensorrt_rtx" if rtx else "tensorrt"
    trt.calls = []  # (what, detail) in call order
    calls = trt.calls
    has_opt_level = (major, minor) >= (8, 6)
    if rtx:
        dla_cores = 0

    def record(what: str, *detail) -> None:
        calls.append((what, *detail))

    builder_flags = ["GPU_FALLBACK", "REFIT", "DEBUG", "STRICT_TYPES" if major < 10 else "REFIT_IDENTICAL"]
    if major < 11:
        builder_flags += ["FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS"]
    trt.BuilderFlag = enum("BuilderFlag", {f: BUILDER_FLAG_VALUES[f] for f in builder_flags})
    network_flags = {"EXPLICIT_BATCH": 0} if major < 10 else ({"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1}
                                                             if major == 10 else {"STRONGLY_TYPED": 0})
    trt.NetworkDefinitionCreationFlag = enum("NetworkDefinitionCreationFlag", network_flags)
    trt.MemoryPoolType = enum("MemoryPoolType", ["WORKSPACE", "DLA_MANAGED_SRAM"])
    trt.DeviceType = enum("DeviceType", ["GPU", "DLA"])
    trt.TensorIOMode = enum("TensorIOMode", ["NONE", "INPUT", "OUTPUT"])
    trt.DataType = enum("DataType", {"FLOAT": 0, "HALF": 1, "INT8": 2})
    if rtx:
        trt.ComputeCapability = enum("ComputeCapability", RTX_COMPUTE_CAPABILITIES)
        trt.EngineValidity = enum("EngineValidity", ["VALID", "SUBOPTIMAL", "INVALID"])
        trt.EngineInvalidityDiagnostics = enum("EngineInvalidityDiagnostics", RTX_DIAGNOSTICS)
        trt.CudaGraphStrategy = enum("CudaGraphStrategy", ["DISABLED", "WHOLE_GRAPH_CAPTURE"])
    trt.nptype = lambda dtype: {"FLOAT": "float32", "HALF": "float16", "INT8": "int8"}[dtype.name]

    class Logger:
        WARNING, INFO, ERROR = 2, 3, 1

        def __init__(self, min_severity: int = 2) -> None:
            record("Logger", min_severity)

    class ITimingCache:
        def __init__(self, data: bytes) -> None:
            self.data = bytes(data)

        def serialize(self) -> bytes:
            return b"TIMING:" + hashlib.sha256(self.data).hexdigest()[:8].encode()

    class IOptimizationProfile:
        def set_shape(self, input: str, min, opt, max) -> None:  # noqa: A002 - the binding's names
            record("OptimizationProfile.set_shape", input, tuple(min), tuple(opt), tuple(max))

    class ITensor:
        def __init__(self, name: str, shape: tuple, dtype=None) -> None:
            self.name, self.shape = name, shape
            self.dtype = dtype if dtype is not None else trt.DataType.FLOAT

    class INetworkDefinition:
        def __init__(self, flags: int) -> None:
            self.flags = flags
            self.inputs: list[ITensor] = []
            self.outputs: list[ITensor] = []
            self.onnx_sha256 = ""

        @property
        def num_inputs(self) -> int:
            return len(self.inputs)

        @property
        def num_outputs(self) -> int:
            return len(self.outputs)

        def get_input(self, index: int) -> ITensor:
            return self.inputs[index]

        def get_output(self, index: int) -> ITensor:
            return self.outputs[index]

    config_settable = ["default_device_type", "DLA_core", "profiling_verbosity"]
    if has_opt_level:
        config_settable.append("builder_optimization_level")
    if major < 11:
        config_settable.append("int8_calibrator")
    if rtx:
        config_settable.append("num_compute_capabilities")

    class IBuilderConfig(Strict):
        _settable = tuple(config_settable)

        def __init__(self) -> None:
            self._flags: list[str] = []
            self._timing_cache = None
            self._targets: dict[int, object] = {}

        def set_memory_pool_limit(self, pool, pool_size: int) -> None:
            record("BuilderConfig.set_memory_pool_limit", pool.name, pool_size)

        def set_flag(self, flag) -> None:
            record("BuilderConfig.set_flag", flag.name)
            self._flags.append(flag.name)

        def create_timing_cache(self, serialized_timing_cache: bytes) -> ITimingCache:
            record("BuilderConfig.create_timing_cache", bytes(serialized_timing_cache))
            return ITimingCache(serialized_timing_cache)

        def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
            """Refuses a cache whose bytes start with FOREIGN (as TensorRT refuses another GPU's)."""
            record("BuilderConfig.set_timing_cache", ignore_mismatch)
            if cache.data.startswith(b"FOREIGN"):
                return False
            self._timing_cache = cache
            return True

        def get_timing_cache(self) -> ITimingCache:
            return self._timing_cache

        def add_optimization_profile(self, profile) -> int:
            record("BuilderConfig.add_optimization_profile")
            return 0

        def __setattr__(self, key: str, value) -> None:
            super().__setattr__(key, value)
            if not key.startswith("_"):
                record(f"BuilderConfig.{key}=", getattr(value, "name", value if key != "int8_calibrator" else
                                                       type(value).__name__))

    if has_opt_level:
        IBuilderConfig.builder_optimization_level = 3
    if major < 11:
        def set_calibration_profile(self, profile) -> bool:
            record("BuilderConfig.set_calibration_profile")
            return True

        IBuilderConfig.set_calibration_profile = set_calibration_profile
    if rtx:
        IBuilderConfig.num_compute_capabilities = 0

        def set_compute_capability(self, compute_capability, index: int) -> bool:
            record("BuilderConfig.set_compute_capability", compute_capability.name, index)
            if compute_capability.name in ("NONE",) or not 0 <= index < self.num_compute_capabilities:
                return False
            self._targets[index] = compute_capability
            return True

        def get_compute_capability(self, index: int) -> object:
            return self._targets.get(index, trt.ComputeCapability.NONE)

        IBuilderConfig.set_compute_capability = set_compute_capability
        IBuilderConfig.get_compute_capability = get_compute_capability

    class Builder:
        def __init__(self, logger: Logger) -> None:
            record("Builder")

        @property
        def num_DLA_cores(self) -> int:
            return dla_cores

        def create_network(self, flags: int = 0) -> INetworkDefinition:
            record("Builder.create_network", flags)
            return INetworkDefinition(flags)

        def create_builder_config(self) -> IBuilderConfig:
            return IBuilderConfig()

        def create_optimization_profile(self) -> IOptimizationProfile:
            return IOptimizationProfile()

        def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> bytes:
            record("Builder.build_serialized_network")
            calibrator = getattr(config, "int8_calibrator", None) if major < 11 else None
            cache = calibrator.read_calibration_cache() if calibrator is not None else None
            description = {"standin": version, "onnx_sha256": network.onnx_sha256, "flags": config._flags,
                           "calibration_cache": None if cache is None else bytes(cache).decode(),
                           "targets": [t.name for _, t in sorted(config._targets.items())],
                           "io": [[t.name, list(t.shape), t.dtype.name] for t in network.inputs + network.outputs]}
            return STANDIN_ENGINE + json.dumps(description, sort_keys=True).encode()

    if major < 11:
        Builder.platform_has_fast_fp16 = property(lambda self: record("Builder.platform_has_fast_fp16") or True)
        Builder.platform_has_fast_int8 = property(lambda self: record("Builder.platform_has_fast_int8") or True)

    class OnnxParser:
        def __init__(self, network: INetworkDefinition, logger: Logger) -> None:
            self.network = network
            self.errors: list[str] = []

        def parse_from_file(self, model: str) -> bool:
            import onnx

            record("OnnxParser.parse_from_file", Path(model).name)
            try:
                proto = onnx.load(model)
            except Exception as error:  # a stand-in parser: any failure is a parse error
                self.errors.append(f"cannot read {model}: {type(error).__name__}")
                return False
            for values, target in ((proto.graph.input[:1], self.network.inputs),
                                   (proto.graph.output, self.network.outputs)):
                for value in values:
                    dims = tuple(d.dim_value if d.dim_value else -1 for d in value.type.tensor_type.shape.dim)
                    target.append(ITensor(value.name, dims))
            self.network.onnx_sha256 = hashlib.sha256(Path(model).read_bytes()).hexdigest()
            return True

        @property
        def num_errors(self) -> int:
            return len(self.errors)

        def get_error(self, index: int) -> ParserError:
            return ParserError(self.errors[index])

    class IRuntimeCache:
        """Its serialized form names the GPU it was made on; deserialize refuses another GPU's."""

        def __init__(self) -> None:
            self.data = b""

        def serialize(self) -> bytes:
            record("IRuntimeCache.serialize")
            return b"RTXCACHE:" + trt.standin_gpu.encode() + b":" + self.data

        def deserialize(self, blob: bytes) -> bool:
            record("IRuntimeCache.deserialize", len(blob))
            prefix = b"RTXCACHE:" + trt.standin_gpu.encode() + b":"
            if not bytes(blob).startswith(prefix):
                return False
            self.data = bytes(blob)[len(prefix):]
            return True

    class IRuntimeConfig(Strict):
        _settable = ("cuda_graph_strategy",)

        def __init__(self) -> None:
            self._cache = None

        def create_runtime_cache(self) -> IRuntimeCache:
            return IRuntimeCache()

        def set_runtime_cache(self, cache: IRuntimeCache) -> bool:
            record("IRuntimeConfig.set_runtime_cache")
            self._cache = cache
            return True

        def get_runtime_cache(self) -> IRuntimeCache:
            return self._cache

    class IExecutionContext:
        def __init__(self, engine, runtime_config) -> None:
            self.engine = engine
            self.runtime_config = runtime_config

    class ICudaEngine:
        def __init__(self, description: dict) -> None:
            self.io = description.get("io", [])

        @property
        def num_io_tensors(self) -> int:
            return len(self.io)

        def get_tensor_name(self, index: int) -> str:
            return self.io[index][0]

        def get_tensor_mode(self, name: str) -> object:
            position = [row[0] for row in self.io].index(name)
            return trt.TensorIOMode.INPUT if position == 0 else trt.TensorIOMode.OUTPUT

        def get_tensor_shape(self, name: str) -> Dims:
            return Dims(next(row[1] for row in self.io if row[0] == name))

        def get_tensor_dtype(self, name: str) -> object:
            return getattr(trt.DataType, next(row[2] for row in self.io if row[0] == name))

        def create_execution_context(self, runtime_config=None) -> IExecutionContext:
            record("ICudaEngine.create_execution_context", runtime_config is not None)
            return IExecutionContext(self, runtime_config)

    if rtx:
        def create_runtime_config(self) -> IRuntimeConfig:
            return IRuntimeConfig()

        ICudaEngine.create_runtime_config = create_runtime_config

    class Runtime(Strict):
        _settable = ("DLA_core",)

        def __init__(self, logger: Logger) -> None:
            record("Runtime")

        def deserialize_cuda_engine(self, serialized_engine: bytes) -> object:
            record("Runtime.deserialize_cuda_engine", getattr(self, "DLA_core", None))
            data = bytes(serialized_engine)
            if not data.startswith(STANDIN_ENGINE):
                return None
            return ICudaEngine(json.loads(data[len(STANDIN_ENGINE):]))

    if rtx:
        def get_engine_validity(self, buffer: bytes) -> tuple:
            """VALID for a stand-in engine built for the stand-in GPU's target, else INVALID with reasons."""
            record("Runtime.get_engine_validity")
            data = bytes(buffer)
            if not data.startswith(STANDIN_ENGINE):
                return trt.EngineValidity.INVALID, RTX_DIAGNOSTICS["MALFORMED_ENGINE"]
            description = json.loads(data[len(STANDIN_ENGINE):])
            if description.get("standin") != version:
                return trt.EngineValidity.INVALID, RTX_DIAGNOSTICS["VERSION_MISMATCH"]
            if trt.standin_target not in description.get("targets", []):
                return trt.EngineValidity.INVALID, RTX_DIAGNOSTICS["UNSUPPORTED_CC"]
            return trt.EngineValidity.VALID, 0

        Runtime.get_engine_validity = get_engine_validity
        trt.standin_gpu = "NVIDIA GeForce RTX 4090"
        trt.standin_target = "SM89"

    for cls in (Logger, Builder, OnnxParser, IBuilderConfig, ITimingCache, IOptimizationProfile, ITensor,
                INetworkDefinition, Runtime, ICudaEngine, IExecutionContext):
        setattr(trt, cls.__name__, cls)
    if rtx:
        trt.IRuntimeConfig, trt.IRuntimeCache = IRuntimeConfig, IRuntimeCache

    if major < 11:
        class IInt8EntropyCalibrator2:
            def __init__(self) -> None:
                record("IInt8EntropyCalibrator2.__init__")

        trt.IInt8EntropyCalibrator2 = IInt8EntropyCalibrator2
    return trt


VERSIONS = {"8.5": "8.5.2", "8.6": "8.6.1", "10": "10.3.0", "11": "11.4.0", "rtx": "rtx-1.7.1.116"}
