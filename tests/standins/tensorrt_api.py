"""Recording stand-ins of the TensorRT Python API, one per version family: 8.6, 10.x and 11.x.

STAND-INS, NOT TensorRT: they cannot build or run anything. They reproduce *which names each version
has* (from NVIDIA's API docs and the 10-to-11 migration guide, see /work/shared/notes) and record every
call, so tests can check the calls the engine builder makes per version and precision. Names a version
lacks raise AttributeError, as the real pybind11 bindings do:

- 11.x has no BuilderFlag.FP16/INT8, IBuilderConfig.int8_calibrator / set_calibration_profile,
  Builder.platform_has_fast_fp16, NetworkDefinitionCreationFlag.EXPLICIT_BATCH, IInt8EntropyCalibrator2.
- 8.6 and 10.x have all of them (10.x deprecates the calibrators and EXPLICIT_BATCH, still present).
"""

from __future__ import annotations

import hashlib
import json
import types
from pathlib import Path


class Flag:
    """An enum member: int() gives its bit position, like TensorRT's pybind enums."""

    def __init__(self, name: str, value: int) -> None:
        self.name, self.value = name, value

    def __int__(self) -> int:
        return self.value

    def __repr__(self) -> str:
        return self.name


def enum(name: str, members: list[str]) -> type:
    return type(name, (), {m: Flag(m, i) for i, m in enumerate(members)})


class Strict:
    """Setting an attribute the real binding class lacks raises AttributeError (pybind11 behaviour)."""

    _settable: tuple[str, ...] = ()

    def __setattr__(self, key: str, value) -> None:
        if not key.startswith("_") and key not in self._settable:
            raise AttributeError(f"'{type(self).__name__}' object has no attribute '{key}'")
        object.__setattr__(self, key, value)


def make_tensorrt(version: str) -> types.ModuleType:
    """A fresh stand-in module for TensorRT `version` (e.g. "8.6.1", "10.3.0", "11.4.0")."""
    major = int(version.split(".")[0])
    trt = types.ModuleType(f"tensorrt_standin_{version.replace('.', '_')}")
    trt.__version__ = version
    trt.calls = []  # (what, detail) in call order
    calls = trt.calls

    def record(what: str, *detail) -> None:
        calls.append((what, *detail))

    builder_flags = ["GPU_FALLBACK", "REFIT", "DEBUG", "STRICT_TYPES" if major < 10 else "REFIT_IDENTICAL"]
    if major < 11:
        builder_flags += ["FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS"]
    trt.BuilderFlag = enum("BuilderFlag", builder_flags)
    network_flags = ["EXPLICIT_BATCH"] if major < 10 else (["EXPLICIT_BATCH", "STRONGLY_TYPED"]
                                                          if major == 10 else ["STRONGLY_TYPED"])
    trt.NetworkDefinitionCreationFlag = enum("NetworkDefinitionCreationFlag", network_flags)
    trt.MemoryPoolType = enum("MemoryPoolType", ["WORKSPACE", "DLA_MANAGED_SRAM"])
    trt.DeviceType = enum("DeviceType", ["GPU", "DLA"])
    trt.TensorIOMode = enum("TensorIOMode", ["NONE", "INPUT", "OUTPUT"])

    class Logger:
        WARNING, INFO, ERROR = 2, 3, 1

        def __init__(self, severity: int = 2) -> None:
            record("Logger", severity)

    class TimingCache:
        def __init__(self, data: bytes) -> None:
            self.data = bytes(data)

        def serialize(self) -> bytes:
            return b"TIMING:" + hashlib.sha256(self.data).hexdigest()[:8].encode()

    class OptimizationProfile:
        def set_shape(self, name: str, minimum, optimum, maximum) -> None:
            record("OptimizationProfile.set_shape", name, tuple(minimum), tuple(optimum), tuple(maximum))

    class Tensor:
        def __init__(self, name: str, shape: tuple) -> None:
            self.name, self.shape = name, shape

    class Network:
        def __init__(self, flags: int) -> None:
            self.flags = flags
            self.inputs: list[Tensor] = []
            self.onnx_sha256 = ""

        @property
        def num_inputs(self) -> int:
            return len(self.inputs)

        def get_input(self, index: int) -> Tensor:
            return self.inputs[index]

    config_settable = ["builder_optimization_level", "default_device_type", "DLA_core", "profiling_verbosity"]
    if major < 11:
        config_settable.append("int8_calibrator")

    class BuilderConfig(Strict):
        _settable = tuple(config_settable)

        def __init__(self) -> None:
            self._flags: list[str] = []
            self._timing_cache = None

        def set_memory_pool_limit(self, pool, size: int) -> None:
            record("BuilderConfig.set_memory_pool_limit", pool.name, size)

        def set_flag(self, flag) -> None:
            record("BuilderConfig.set_flag", flag.name)
            self._flags.append(flag.name)

        def create_timing_cache(self, data: bytes) -> TimingCache:
            record("BuilderConfig.create_timing_cache", bytes(data))
            return TimingCache(data)

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            record("BuilderConfig.set_timing_cache", ignore_mismatch)
            self._timing_cache = cache
            return True

        def get_timing_cache(self) -> TimingCache:
            return self._timing_cache

        def add_optimization_profile(self, profile) -> int:
            record("BuilderConfig.add_optimization_profile")
            return 0

        def __setattr__(self, key: str, value) -> None:
            super().__setattr__(key, value)
            if not key.startswith("_"):
                record(f"BuilderConfig.{key}=", getattr(value, "name", value if key != "int8_calibrator" else
                                                       type(value).__name__))

    if major < 11:
        def set_calibration_profile(self, profile) -> bool:
            record("BuilderConfig.set_calibration_profile")
            return True

        BuilderConfig.set_calibration_profile = set_calibration_profile

    class Builder:
        def __init__(self, logger: Logger) -> None:
            record("Builder")

        def create_network(self, flags: int = 0) -> Network:
            record("Builder.create_network", flags)
            return Network(flags)

        def create_builder_config(self) -> BuilderConfig:
            return BuilderConfig()

        def create_optimization_profile(self) -> OptimizationProfile:
            return OptimizationProfile()

        def build_serialized_network(self, network: Network, config: BuilderConfig) -> bytes:
            record("Builder.build_serialized_network")
            calibrator = getattr(config, "int8_calibrator", None) if major < 11 else None
            cache = calibrator.read_calibration_cache() if calibrator is not None else None
            description = {"standin": version, "onnx_sha256": network.onnx_sha256, "flags": config._flags,
                           "calibration_cache": None if cache is None else bytes(cache).decode()}
            return b"STANDIN-ENGINE\n" + json.dumps(description, sort_keys=True).encode()

    if major < 11:
        Builder.platform_has_fast_fp16 = property(lambda self: record("Builder.platform_has_fast_fp16") or True)
        Builder.platform_has_fast_int8 = property(lambda self: record("Builder.platform_has_fast_int8") or True)

    class OnnxParser:
        def __init__(self, network: Network, logger: Logger) -> None:
            self.network = network
            self.errors: list[str] = []

        def parse_from_file(self, path: str) -> bool:
            import onnx

            record("OnnxParser.parse_from_file", Path(path).name)
            try:
                model = onnx.load(path)
            except Exception as error:  # a stand-in parser: any failure is a parse error
                self.errors.append(f"cannot read {path}: {type(error).__name__}")
                return False
            graph_input = model.graph.input[0]
            dims = tuple(d.dim_value if d.dim_value else -1 for d in graph_input.type.tensor_type.shape.dim)
            self.network.inputs.append(Tensor(graph_input.name, dims))
            self.network.onnx_sha256 = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            return True

        @property
        def num_errors(self) -> int:
            return len(self.errors)

        def get_error(self, index: int) -> str:
            return self.errors[index]

    trt.Logger, trt.Builder, trt.OnnxParser = Logger, Builder, OnnxParser

    if major < 11:
        class IInt8EntropyCalibrator2:
            def __init__(self) -> None:
                record("IInt8EntropyCalibrator2.__init__")

        trt.IInt8EntropyCalibrator2 = IInt8EntropyCalibrator2
    return trt


VERSIONS = {"8.6": "8.6.1", "10": "10.3.0", "11": "11.4.0"}
