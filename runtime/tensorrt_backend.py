"""TensorRT engine backend: buffers allocated once, async copies and execution on one CUDA stream,
pinned host memory, and an optional CUDA graph of the whole enqueue.

Device work goes through cuda-python (`cuda.bindings.runtime`), as NVIDIA's own samples do; no torch.
The engine's JSON sidecar (written by `python -m export.engine`) carries the preprocessing contract and
the cache key. Before TensorRT is imported at all, `probe_cuda()` must find a working CUDA device: the
TensorRT runtime can crash the process without one (its lean runtime segfaults in deserialize, seen).
"""

from __future__ import annotations

import ctypes
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from runtime.backends import PRECISION_KEY, ModelFileError, spec_from_metadata
from runtime.contract import SIDECAR_FORMAT, parse_io_form, validate_sidecar

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


def probe_cuda(device: int = 0) -> tuple[GpuInfo | None, str]:
    """(GPU info, "") when CUDA works on `device`, else (None, why). Never touches TensorRT."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        return None, "cuda-python is not installed (pip install -r requirements/tensorrt.txt)"
    try:
        error, count = cudart.cudaGetDeviceCount()
        if error != cudart.cudaError_t.cudaSuccess:
            return None, f"no usable CUDA driver/device ({error.name})"
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


def sidecar_path(engine_path: str | Path) -> Path:
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


def read_sidecar(engine_path: str | Path) -> dict:
    path = sidecar_path(engine_path)
    if not path.is_file():
        raise ModelFileError(f"{engine_path}: no sidecar {path.name} (the engine's contract and cache key); "
                             "rebuild it with `python -m export.engine`")
    if path.stat().st_size > 1 << 20:
        raise ModelFileError(f"{path}: engine sidecar is over 1 MB; not one of ours")
    try:
        sidecar = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        raise ModelFileError(f"{path}: unreadable engine sidecar ({type(error).__name__})") from error
    return validate_sidecar(sidecar, path)


def key_mismatch(key: dict, gpu: GpuInfo, trt_version: str) -> str:
    """'' when an engine with this cache key runs here, else what differs (engines are tied to both)."""
    problems = []
    if key.get("tensorrt") != trt_version:
        problems.append(f"TensorRT {key.get('tensorrt')} vs {trt_version} here")
    built_gpu = key.get("gpu", {})
    if built_gpu.get("compute_capability") != gpu.compute_capability or built_gpu.get("name") != gpu.name:
        problems.append(f"GPU {built_gpu.get('name')} (sm {built_gpu.get('compute_capability')}) vs "
                        f"{gpu.name} (sm {gpu.compute_capability}) here")
    return "; ".join(problems)


def _check(result, what: str):
    """cuda-python returns (error, *values); raise on error, return the values."""
    from cuda.bindings import runtime as cudart

    error, *values = result if isinstance(result, tuple) else (result,)
    if error != cudart.cudaError_t.cudaSuccess:
        raise RuntimeError(f"{what} failed: {error.name}")
    return values[0] if len(values) == 1 else values


class TensorRTBackend:
    """Implements runtime.backends.Backend for a serialized TensorRT engine (8.6, 10.x and 11.x)."""

    name = "tensorrt"

    def __init__(self, path: str | Path, use_cuda_graph: bool = True, device: int = 0) -> None:
        path = Path(path)
        if not path.is_file():
            raise ModelFileError(f"{path}: engine file not found")
        sidecar = read_sidecar(path)
        self.metadata = dict(sidecar.get("metadata", {}))
        self.spec = spec_from_metadata(self.metadata, path)
        self.in_graph = parse_io_form(self.metadata, path)  # uint8 frames in, uint8 mask out (export/ingraph.py)
        self.precision = self.metadata.get(PRECISION_KEY, sidecar.get("cache_key", {}).get("precision", "fp32"))
        rebuild = sidecar.get("rebuild", "python -m export.engine")
        gpu, why = probe_cuda(device)
        if gpu is None:
            raise ModelFileError(f"{path}: a TensorRT engine needs a CUDA GPU: {why}; run the .onnx on "
                                 "--backend cpu instead")
        try:
            import tensorrt as trt
        except ImportError as error:
            raise ModelFileError(f"{path}: TensorRT is not installed (JetPack ships it; on a desktop "
                                 "pip install tensorrt)") from error
        mismatch = key_mismatch(sidecar.get("cache_key", {}), gpu, trt.__version__)
        if mismatch:
            raise ModelFileError(f"{path}: built for another target ({mismatch}); rebuild: {rebuild}")
        self.device = gpu.name
        self.path = path
        self._trt = trt
        self._load(path, rebuild)
        self._allocate()
        self._graph_exec = None
        self._use_cuda_graph = use_cuda_graph

    def _load(self, path: Path, rebuild: str) -> None:
        trt = self._trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise ModelFileError(f"{path}: TensorRT could not deserialize the engine; rebuild: {rebuild}")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelFileError(f"{path}: expected one input and one output, got {inputs} / {outputs}")
        self.input_name, self.output_name = inputs[0], outputs[0]

    def _allocate(self, batch: int = 1) -> None:
        """Device and pinned host buffers for `batch` frames, allocated once and reused every frame."""
        from cuda.bindings import runtime as cudart

        trt = self._trt
        height, width = self.spec.size_hw
        input_shape = (batch, height, width, 3) if self.in_graph else (batch, 3, height, width)
        if -1 in tuple(self.engine.get_tensor_shape(self.input_name)):
            self.context.set_input_shape(self.input_name, input_shape)
        output_shape = tuple(self.context.get_tensor_shape(self.output_name))
        self._stream = _check(cudart.cudaStreamCreate(), "cudaStreamCreate")
        self._buffers = {}
        for name, shape in ((self.input_name, input_shape), (self.output_name, output_shape)):
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            nbytes = int(np.prod(shape)) * dtype.itemsize
            device_ptr = _check(cudart.cudaMalloc(nbytes), "cudaMalloc")
            host_ptr = _check(cudart.cudaMallocHost(nbytes), "cudaMallocHost")
            host = np.ctypeslib.as_array(ctypes.cast(host_ptr, ctypes.POINTER(ctypes.c_byte)), (nbytes,))
            self._buffers[name] = (device_ptr, host.view(dtype).reshape(shape), nbytes)
            self.context.set_tensor_address(name, int(device_ptr))
        self.batch = batch

    def _enqueue(self) -> None:
        from cuda.bindings import runtime as cudart

        kind_h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        kind_d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        device_in, host_in, bytes_in = self._buffers[self.input_name]
        device_out, host_out, bytes_out = self._buffers[self.output_name]
        _check(cudart.cudaMemcpyAsync(device_in, host_in.ctypes.data, bytes_in, kind_h2d, self._stream), "H2D")
        if not self.context.execute_async_v3(int(self._stream)):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        _check(cudart.cudaMemcpyAsync(host_out.ctypes.data, device_out, bytes_out, kind_d2h, self._stream), "D2H")

    def _capture_graph(self) -> None:
        """Record copy-in, inference and copy-out once; later frames replay it with one launch."""
        from cuda.bindings import runtime as cudart

        mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        _check(cudart.cudaStreamBeginCapture(self._stream, mode), "cudaStreamBeginCapture")
        try:
            self._enqueue()
        finally:
            graph = _check(cudart.cudaStreamEndCapture(self._stream), "cudaStreamEndCapture")
        self._graph_exec = _check(cudart.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")

    def infer(self, batch: np.ndarray) -> np.ndarray:
        from cuda.bindings import runtime as cudart

        if batch.shape[0] != self.batch:
            raise ValueError(f"engine buffers hold batch {self.batch}, got {batch.shape[0]}")
        _, host_in, _ = self._buffers[self.input_name]
        np.copyto(host_in, batch, casting="same_kind")
        if self._graph_exec is not None:
            _check(cudart.cudaGraphLaunch(self._graph_exec, self._stream), "cudaGraphLaunch")
        else:
            self._enqueue()
            if self._use_cuda_graph:
                # TensorRT wants one plain enqueue first (it sets up lazily); capture from the second frame.
                _check(cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
                try:
                    self._capture_graph()
                except RuntimeError:
                    self._use_cuda_graph = False  # some engines (e.g. DLA) cannot be captured
                    cudart.cudaGetLastError()
        _check(cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        _, host_out, _ = self._buffers[self.output_name]
        return host_out.copy() if self.in_graph else host_out.astype(np.float32, copy=True)

    def close(self) -> None:
        from cuda.bindings import runtime as cudart

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
