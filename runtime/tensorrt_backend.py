"""TensorRT engine backend (TensorRT 8.6/10/11 and TensorRT-RTX): buffers allocated once, async copies and
execution on one CUDA stream, pinned host memory, and a CUDA graph of the whole enqueue.

Device work goes through cuda-python (`cuda.bindings.runtime`), as NVIDIA's own samples do; no torch.
The engine's JSON sidecar (written by `python -m engine`) carries the preprocessing contract, the
flavour that built it and the cache key. Before TensorRT is imported at all, `probe_cuda()` must find a
working CUDA device: the TensorRT runtime can crash the process without one (its lean runtime segfaults in
deserialize, seen). TensorRT-RTX engines are checked with `Runtime.get_engine_validity` before they are
loaded, JIT-compile their kernels on this GPU and keep them in a runtime cache file beside the engine
(runtime/trt_flavour.py: runtime_cache_path), and capture their own CUDA graphs.
"""

from __future__ import annotations

import ctypes
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from runtime.backend_base import Backend
from runtime.contract import (
    MAX_BATCH,
    PRECISION_KEY,
    SIDECAR_FORMAT,
    ModelFileError,
    parse_batch_profile,
    parse_io_form,
    parse_preprocess,
    shorten,
    validate_sidecar,
)
from runtime.input_policy import ArtifactError, read_json, read_limited
from runtime.trt_flavour import (
    FLAVOURS,
    TENSORRT,
    TENSORRT_RTX,
    display_name,
    import_flavour,
    installed_flavours,
    runtime_cache_path,
    same_release,
)

MAX_ENGINE_BYTES = 4 << 30  # an FCN-8s engine is tens of MB; past this a file is not one of ours

__all__ = ["SIDECAR_FORMAT", "TensorRTBackend", "probe_cuda", "read_sidecar", "sidecar_path"]


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str  # "8.7" on Orin, "9.0" on H100
    cuda_runtime: str
    cuda_driver: str

    def to_dict(self) -> dict:
        return asdict(self)


def _cuda_version(number: int) -> str:
    return f"{number // 1000}.{(number % 1000) // 10}"


def import_cudart():
    """cuda-python's runtime module: `cuda.bindings.runtime` (12.6.1+ and 13.x), else the older `cuda.cudart`
    of the 12.x line (what JetPack 6's CUDA 12 pairs with)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        from cuda import cudart  # cuda-python < 12.6.1
    return cudart


def _driver_hint(error_name: str) -> str:
    if error_name != "cudaErrorInsufficientDriver":
        return ""
    try:
        from importlib.metadata import version

        line = version("cuda-bindings").split(".")[0]
    except Exception:  # not installed as a distribution (e.g. JetPack's own build)
        line = "?"
    return (f": cuda-bindings {line}.x needs a CUDA {line} driver; on a CUDA 12 driver (JetPack 6, desktop "
            "drivers before 580) install requirements/tensorrt-cuda12.txt instead")


def probe_cuda(device: int = 0) -> tuple[GpuInfo | None, str]:
    """(GPU info, "") when CUDA works on `device`, else (None, why). Never touches TensorRT."""
    try:
        cudart = import_cudart()
    except ImportError:
        return None, "cuda-python is not installed (pip install -r requirements/tensorrt.txt)"
    try:
        error, count = cudart.cudaGetDeviceCount()
        if error != cudart.cudaError_t.cudaSuccess:
            return None, f"no usable CUDA driver/device ({error.name}){_driver_hint(error.name)}"
        if count <= device:
            return None, f"no CUDA device {device} (found {count})"
        error, props = cudart.cudaGetDeviceProperties(device)
        if error != cudart.cudaError_t.cudaSuccess:
            return None, f"cannot query CUDA device {device} ({error.name})"
        _, runtime_version = cudart.cudaRuntimeGetVersion()
        _, driver_version = cudart.cudaDriverGetVersion()
    except Exception as error:  # a broken driver install raises from inside the bindings
        return None, f"CUDA probe failed ({type(error).__name__}: {error})"
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    return GpuInfo(name.strip("\x00 "), f"{props.major}.{props.minor}", _cuda_version(runtime_version),
                   _cuda_version(driver_version)), ""


def cuda_check(result, what: str):
    """cuda-python returns (error, *values); raise on error, return the values (None when there are none)."""
    cudart = import_cudart()
    error, *values = result if isinstance(result, tuple) else (result,)
    if error != cudart.cudaError_t.cudaSuccess:
        raise RuntimeError(f"{what} failed: {error.name}")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def sidecar_path(engine_path: str | Path) -> Path:
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


def read_sidecar(engine_path: str | Path) -> dict:
    path = sidecar_path(engine_path)
    if not path.is_file():
        raise ModelFileError(f"{engine_path}: no sidecar {path.name} (the engine's contract and cache key); "
                             "rebuild it with `python -m engine`")
    try:
        sidecar = read_json(path, what="unreadable engine sidecar")
    except ArtifactError as error:
        raise ModelFileError(f"{path}: {error}") from error
    validate_sidecar(sidecar, path)
    flavour = sidecar_flavour(sidecar)
    if flavour not in FLAVOURS:
        raise ModelFileError(f"{path}: engine sidecar names an unknown flavour {shorten(flavour)} (expected "
                             f"{' or '.join(FLAVOURS)})")
    return sidecar


def sidecar_flavour(sidecar: dict) -> str:
    """Sidecars written before TensorRT-RTX support carry no flavour: they are TensorRT's."""
    return sidecar.get("flavour") or sidecar["cache_key"].get("flavour") or TENSORRT


def key_mismatch(key: dict, gpu: GpuInfo, trt_version: str, flavour: str = TENSORRT) -> str:
    """'' when an engine with this cache key runs here, else what differs.

    TensorRT engines are tied to the release and the GPU that built them; TensorRT-RTX engines to the release
    and to the compute capabilities they were built for (the GPU's own kernels are compiled at load).
    """
    problems = []
    built_flavour = key.get("flavour", TENSORRT)
    if built_flavour != flavour:
        problems.append(f"built by {display_name(built_flavour)}, loading with {display_name(flavour)}")
    if not same_release(str(key.get("tensorrt")), trt_version):
        problems.append(f"{display_name(flavour)} {key.get('tensorrt')} vs {trt_version} here")
    if flavour == TENSORRT_RTX:
        targets = key.get("compute_capabilities") or []
        if gpu.compute_capability not in targets:
            problems.append(f"built for compute capabilities {', '.join(targets) or 'none'}, this GPU "
                            f"({gpu.name}) is {gpu.compute_capability}")
        return "; ".join(problems)
    built_gpu = key.get("gpu") or {}
    if built_gpu.get("compute_capability") != gpu.compute_capability or built_gpu.get("name") != gpu.name:
        problems.append(f"GPU {built_gpu.get('name')} (sm {built_gpu.get('compute_capability')}) vs "
                        f"{gpu.name} (sm {gpu.compute_capability}) here")
    return "; ".join(problems)


def import_engine_flavour(path: Path, flavour: str, rebuild: str):
    """The module of the flavour that built the engine, or one line saying what is missing."""
    if flavour not in installed_flavours():
        others = [display_name(f) for f in installed_flavours() if f != flavour]
        here = f"this machine has {others[0]}" if others else "no TensorRT is installed here"
        install = ("make setup-rtx" if flavour == TENSORRT_RTX
                   else "JetPack ships it; on a desktop pip install tensorrt")
        raise ModelFileError(f"{path}: built by {display_name(flavour)}, which is not installed ({here}); "
                             f"install it ({install}) or rebuild for this machine: {rebuild}")
    try:
        return import_flavour(flavour)
    except ImportError as error:
        raise ModelFileError(f"{path}: cannot import {flavour} ({error}); rebuild: {rebuild}") from error


def check_engine_validity(trt, runtime, data: bytes, path: Path, rebuild: str, warn=print) -> None:
    """TensorRT-RTX: ask the runtime whether this engine can run on this GPU before deserializing it."""
    if not hasattr(runtime, "get_engine_validity"):
        return
    validity, diagnostics = runtime.get_engine_validity(data)
    if validity == trt.EngineValidity.VALID:
        return
    reasons = [name for name, flag in trt.EngineInvalidityDiagnostics.__members__.items()
               if int(diagnostics) & int(flag)]
    detail = ", ".join(reasons) or "no diagnostics"
    if validity == trt.EngineValidity.SUBOPTIMAL:
        warn(f"warning: {path}: TensorRT-RTX says this engine runs suboptimally here ({detail}); "
             f"rebuild: {rebuild}")
        return
    raise ModelFileError(f"{path}: TensorRT-RTX says this engine cannot run here ({detail}); rebuild: {rebuild}")


class RuntimeCacheFile:
    """TensorRT-RTX's JIT runtime cache, persisted beside the engine so kernels compile once per GPU."""

    def __init__(self, trt, engine, path: Path, warn=print) -> None:
        self.path = path
        self.config = engine.create_runtime_config()
        self.cache = self.config.create_runtime_cache()
        if path.is_file() and not self.cache.deserialize(path.read_bytes()):
            # Another release, GPU or driver: TensorRT-RTX recompiles and this run's save replaces it.
            warn(f"note: {path}: runtime cache from another environment; kernels are recompiled")
        if not self.config.set_runtime_cache(self.cache):
            raise ModelFileError(f"{path}: TensorRT-RTX refused its runtime cache")
        strategy = getattr(trt, "CudaGraphStrategy", None)
        if strategy is not None:
            self.config.cuda_graph_strategy = strategy.WHOLE_GRAPH_CAPTURE

    def save(self) -> None:
        from runtime.ioutil import atomic_write_bytes

        atomic_write_bytes(self.path, bytes(self.cache.serialize()))


def engine_max_batch(sidecar: dict, path: Path) -> int:
    """The most frames one call may take: the sidecar's batch profile; a sidecar without one (or an engine built
    with --profile alone) describes a fixed batch or the profile's max shape."""
    if "batch" in sidecar:
        return parse_batch_profile(sidecar["batch"], path)["max"]
    profile = sidecar.get("cache_key", {}).get("build_options", {}).get("profile")
    if isinstance(profile, list) and len(profile) == 3 and isinstance(profile[2], list) and profile[2]:
        max_shape = profile[2][0]
        if isinstance(max_shape, int) and 1 <= max_shape <= MAX_BATCH:
            return max_shape
    return 1


class TensorRTBackend(Backend):
    """A Backend for a serialized TensorRT (8.6, 10.x, 11.x) or TensorRT-RTX engine."""

    name = "tensorrt"

    def __init__(self, path: str | Path, use_cuda_graph: bool = True, device: int = 0) -> None:
        path = Path(path)
        if not path.is_file():
            raise ModelFileError(f"{path}: engine file not found")
        sidecar = read_sidecar(path)
        self.metadata = dict(sidecar.get("metadata", {}))
        self.spec = parse_preprocess(self.metadata, path)
        self.in_graph = parse_io_form(self.metadata, path)  # uint8 frames in, uint8 mask out (export/ingraph.py)
        self.precision = self.metadata.get(PRECISION_KEY, sidecar.get("cache_key", {}).get("precision", "fp32"))
        rebuild = sidecar.get("rebuild", "python -m engine")
        self.flavour = sidecar_flavour(sidecar)
        self._graph_exec = None
        self._runtime_cache = None
        gpu, why = probe_cuda(device)
        if gpu is None:
            raise ModelFileError(f"{path}: a {display_name(self.flavour)} engine needs a CUDA GPU: {why}; run the "
                                 ".onnx on --backend cpu instead")
        trt = import_engine_flavour(path, self.flavour, rebuild)
        mismatch = key_mismatch(sidecar.get("cache_key", {}), gpu, trt.__version__, self.flavour)
        if mismatch:
            raise ModelFileError(f"{path}: built for another target ({mismatch}); rebuild: {rebuild}")
        cuda_check(import_cudart().cudaSetDevice(device), f"cudaSetDevice({device})")
        self.device = gpu.name
        self.path = path
        self._trt = trt
        self.max_batch = engine_max_batch(sidecar, path)
        self._rebuild = rebuild
        self._load(path, rebuild, sidecar, gpu)
        self._allocate()
        # TensorRT-RTX captures its own CUDA graphs (RuntimeCacheFile sets the strategy).
        self._use_cuda_graph = use_cuda_graph and self.flavour != TENSORRT_RTX

    def _load(self, path: Path, rebuild: str, sidecar: dict, gpu: GpuInfo) -> None:
        trt = self._trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        try:
            data = read_limited(path, MAX_ENGINE_BYTES)
        except ArtifactError as error:
            raise ModelFileError(str(error)) from error
        check_engine_validity(trt, self._runtime, data, path, rebuild)
        dla_core = sidecar.get("cache_key", {}).get("build_options", {}).get("dla_core")
        if dla_core is not None:
            # A DLA engine deserializes onto the runtime's DLA core: set it first, or it lands on core 0.
            self._runtime.DLA_core = int(dla_core)
        self.engine = self._runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise ModelFileError(f"{path}: {display_name(self.flavour)} could not deserialize the engine; "
                                 f"rebuild: {rebuild}")
        if self.flavour == TENSORRT_RTX:
            self._runtime_cache = RuntimeCacheFile(trt, self.engine, runtime_cache_path(path, gpu.compute_capability))
            self.context = self.engine.create_execution_context(self._runtime_cache.config)
        else:
            self.context = self.engine.create_execution_context()
        if self.context is None:
            raise ModelFileError(f"{path}: cannot create an execution context; rebuild: {rebuild}")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelFileError(f"{path}: expected one input and one output, got {inputs} / {outputs}")
        self.input_name, self.output_name = inputs[0], outputs[0]

    def _allocate(self, batch: int = 1) -> None:
        """Device and pinned host buffers for `batch` frames, allocated once and reused every frame."""
        cudart = import_cudart()

        trt = self._trt
        height, width = self.spec.size_hw
        input_shape = (batch, height, width, 3) if self.in_graph else (batch, 3, height, width)
        if -1 in tuple(self.engine.get_tensor_shape(self.input_name)):
            self.context.set_input_shape(self.input_name, input_shape)
        output_shape = tuple(self.context.get_tensor_shape(self.output_name))
        self._stream = cuda_check(cudart.cudaStreamCreate(), "cudaStreamCreate")
        self._buffers = {}
        for name, shape in ((self.input_name, input_shape), (self.output_name, output_shape)):
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            nbytes = int(np.prod(shape)) * dtype.itemsize
            device_ptr = cuda_check(cudart.cudaMalloc(nbytes), "cudaMalloc")
            host_ptr = cuda_check(cudart.cudaMallocHost(nbytes), "cudaMallocHost")
            host = np.ctypeslib.as_array(ctypes.cast(host_ptr, ctypes.POINTER(ctypes.c_byte)), (nbytes,))
            self._buffers[name] = (device_ptr, host.view(dtype).reshape(shape), nbytes)
            self.context.set_tensor_address(name, int(device_ptr))
        self.batch = batch

    def _enqueue(self) -> None:
        cudart = import_cudart()

        kind_h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        kind_d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        device_in, host_in, bytes_in = self._buffers[self.input_name]
        device_out, host_out, bytes_out = self._buffers[self.output_name]
        cuda_check(cudart.cudaMemcpyAsync(device_in, host_in.ctypes.data, bytes_in, kind_h2d, self._stream), "H2D")
        if not self.context.execute_async_v3(int(self._stream)):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        cuda_check(cudart.cudaMemcpyAsync(host_out.ctypes.data, device_out, bytes_out, kind_d2h, self._stream), "D2H")

    def _capture_graph(self) -> None:
        """Record copy-in, inference and copy-out once; later frames replay it with one launch."""
        cudart = import_cudart()

        mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        cuda_check(cudart.cudaStreamBeginCapture(self._stream, mode), "cudaStreamBeginCapture")
        try:
            self._enqueue()
        finally:
            graph = cuda_check(cudart.cudaStreamEndCapture(self._stream), "cudaStreamEndCapture")
        try:
            self._graph_exec = cuda_check(cudart.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
        finally:
            cudart.cudaGraphDestroy(graph)  # the executable graph keeps what it needs

    def _resize(self, batch: int) -> None:
        """Buffers (and the captured CUDA graph, which bakes in their addresses and shapes) for a new batch size.
        A multi-camera run settles on one size, so this happens when a camera joins or leaves, not per frame."""
        if not 1 <= batch <= self.max_batch:
            raise ValueError(f"{self.path}: the engine takes 1..{self.max_batch} frames a call, got {batch}; rebuild "
                             f"with --batch {batch}: {self._rebuild}")
        self._release_buffers()
        self._allocate(batch)  # the next call enqueues once and captures a new graph where graphs are used

    def infer(self, batch: np.ndarray) -> np.ndarray:
        cudart = import_cudart()

        if batch.shape[0] != self.batch:
            self._resize(batch.shape[0])
        _, host_in, _ = self._buffers[self.input_name]
        np.copyto(host_in, batch, casting="same_kind")
        if self._graph_exec is not None:
            cuda_check(cudart.cudaGraphLaunch(self._graph_exec, self._stream), "cudaGraphLaunch")
        else:
            self._enqueue()
            if self._use_cuda_graph:
                # TensorRT wants one plain enqueue first (it sets up lazily); capture from the second frame.
                cuda_check(cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
                try:
                    self._capture_graph()
                except RuntimeError:
                    self._use_cuda_graph = False  # some engines (e.g. DLA) cannot be captured
                    cudart.cudaGetLastError()
        cuda_check(cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        _, host_out, _ = self._buffers[self.output_name]
        return host_out.copy() if self.in_graph else host_out.astype(np.float32, copy=True)

    def close(self) -> None:
        if getattr(self, "_runtime_cache", None) is not None:
            cache, self._runtime_cache = self._runtime_cache, None
            try:
                cache.save()
            except OSError as error:  # a read-only engine folder costs a recompile next time, nothing else
                print(f"warning: {cache.path}: runtime cache not saved ({error})")
        self._release_buffers()

    def _release_buffers(self) -> None:
        cudart = import_cudart()

        if getattr(self, "_graph_exec", None) is not None:
            cudart.cudaGraphExecDestroy(self._graph_exec)
            self._graph_exec = None
        for device_ptr, host, _ in getattr(self, "_buffers", {}).values():
            cudart.cudaFree(device_ptr)
            cudart.cudaFreeHost(host.ctypes.data)
        self._buffers = {}
        if getattr(self, "_stream", None) is not None:
            cudart.cudaStreamDestroy(self._stream)
            self._stream = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: the bindings may already be gone
            pass
