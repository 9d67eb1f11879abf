"""A RECORDING STAND-IN for cuda-python's runtime module (`cuda.bindings.runtime`) and a TensorRT execution context.

No GPU here: device memory is host bytearrays, pinned host memory is real ctypes memory at a real address (the
backend builds numpy views on it), copies move real bytes, stream capture records operations and a graph launch
replays them. Every call is recorded by name, so a test sees the order of H2D -> execute -> D2H -> sync, whether a
frame ran from a captured graph, and that close() freed everything it allocated. It proves the backend's
bookkeeping, not that a real GPU runs an engine.
"""

from __future__ import annotations

import ctypes
import enum
import itertools
from collections.abc import Callable
from types import SimpleNamespace

import numpy as np


class CudaError(enum.Enum):
    cudaSuccess = 0
    cudaErrorStreamCaptureUnsupported = 900


class RecordingCudart:
    cudaError_t = CudaError
    cudaMemcpyKind = SimpleNamespace(cudaMemcpyHostToDevice="H2D", cudaMemcpyDeviceToHost="D2H")
    cudaStreamCaptureMode = SimpleNamespace(cudaStreamCaptureModeThreadLocal="thread-local")

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.device: dict[int, bytearray] = {}
        self.host: dict[int, ctypes.Array] = {}
        self.streams: set[int] = set()
        self.graphs: dict[int, list[Callable[[], None]]] = {}
        self.graph_execs: dict[int, list[Callable[[], None]]] = {}
        self._capturing: list[Callable[[], None]] | None = None
        self._handles = itertools.count(0x1000, 0x1000)

    def _ok(self, name: str, *values):
        self.calls.append(name)
        return (CudaError.cudaSuccess, *values)

    def enqueue(self, name: str, operation: Callable[[], None]) -> None:
        """Run on the stream now, or record it while a capture is open."""
        self.calls.append(name)
        if self._capturing is not None:
            self._capturing.append(operation)
        else:
            operation()

    def cudaSetDevice(self, device: int):
        return self._ok("cudaSetDevice")

    def cudaStreamCreate(self):
        stream = next(self._handles)
        self.streams.add(stream)
        return self._ok("cudaStreamCreate", stream)

    def cudaStreamDestroy(self, stream: int):
        self.streams.remove(stream)
        return self._ok("cudaStreamDestroy")

    def cudaMalloc(self, nbytes: int):
        pointer = next(self._handles)
        self.device[pointer] = bytearray(nbytes)
        return self._ok("cudaMalloc", pointer)

    def cudaFree(self, pointer: int):
        del self.device[pointer]
        return self._ok("cudaFree")

    def cudaMallocHost(self, nbytes: int):
        buffer = (ctypes.c_byte * nbytes)()
        self.host[ctypes.addressof(buffer)] = buffer
        return self._ok("cudaMallocHost", ctypes.addressof(buffer))

    def cudaFreeHost(self, pointer: int):
        del self.host[pointer]
        return self._ok("cudaFreeHost")

    def cudaMemcpyAsync(self, destination: int, source: int, nbytes: int, kind: str, stream: int):
        assert stream in self.streams, "copy on a stream that does not exist"
        if kind == "H2D":
            def copy() -> None:
                self.device[destination][:nbytes] = ctypes.string_at(source, nbytes)
        else:
            def copy() -> None:
                ctypes.memmove(destination, bytes(self.device[source][:nbytes]), nbytes)
        self.enqueue(f"memcpy {kind}", copy)
        return (CudaError.cudaSuccess,)

    def cudaStreamSynchronize(self, stream: int):
        return self._ok("cudaStreamSynchronize")

    def cudaStreamBeginCapture(self, stream: int, mode: str):
        self._capturing = []
        return self._ok("cudaStreamBeginCapture")

    def cudaStreamEndCapture(self, stream: int):
        graph = next(self._handles)
        self.graphs[graph], self._capturing = self._capturing or [], None
        return self._ok("cudaStreamEndCapture", graph)

    def cudaGraphInstantiate(self, graph: int, flags: int):
        executable = next(self._handles)
        self.graph_execs[executable] = list(self.graphs[graph])
        return self._ok("cudaGraphInstantiate", executable)

    def cudaGraphDestroy(self, graph: int):
        del self.graphs[graph]
        return self._ok("cudaGraphDestroy")

    def cudaGraphLaunch(self, executable: int, stream: int):
        self.calls.append("cudaGraphLaunch")
        for operation in self.graph_execs[executable]:
            operation()
        return (CudaError.cudaSuccess,)

    def cudaGraphExecDestroy(self, executable: int):
        del self.graph_execs[executable]
        return self._ok("cudaGraphExecDestroy")

    def cudaGetLastError(self):
        return self._ok("cudaGetLastError")


class StandinContext:
    """A TensorRT execution context whose 'engine' turns an N x 3 x H x W float input into 2-class logits:
    road = channel 0 - channel 1, not road = its negative, computed on the stand-in device memory."""

    def __init__(self, cudart: RecordingCudart, input_shape: tuple[int, ...]) -> None:
        self.cudart, self.input_shape = cudart, input_shape
        self.addresses: dict[str, int] = {}

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        batch, _, height, width = self.input_shape
        return (batch, 2, height, width) if name == "logits" else self.input_shape

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        self.input_shape = tuple(shape)
        return True

    def set_tensor_address(self, name: str, address: int) -> bool:
        self.addresses[name] = address
        return True

    def execute_async_v3(self, stream: int) -> bool:
        def run() -> None:
            image = np.frombuffer(self.cudart.device[self.addresses["image"]], np.float32).reshape(self.input_shape)
            road = image[:, 0] - image[:, 1]
            logits = np.stack([road, -road], axis=1).astype(np.float32)
            self.cudart.device[self.addresses["logits"]][:] = logits.tobytes()

        self.cudart.enqueue("execute_async_v3", run)
        return True


def standin_engine(input_shape: tuple[int, ...]) -> SimpleNamespace:
    return SimpleNamespace(get_tensor_shape=lambda name: input_shape, get_tensor_dtype=lambda name: "float32")


def standin_trt() -> SimpleNamespace:
    return SimpleNamespace(nptype=lambda dtype: np.float32)
