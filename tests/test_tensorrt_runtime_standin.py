"""The TensorRT runtime backend's CUDA path against a RECORDING CUDA STAND-IN (tests/standins/cuda_runtime.py).

No GPU here, so loading a real engine is out of reach; what is checked is everything the backend does around
it: buffers allocated once, each frame copied in, executed and copied out on its stream in that order, the second
frame captured into a CUDA graph and later frames replayed from it with the right results, and close() freeing
every allocation, the graph and the stream. Test names end in _standin.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from standins.cuda_runtime import RecordingCudart, StandinContext, standin_engine, standin_trt

import runtime.tensorrt_backend as tensorrt_backend
from runtime.artifacts import FP16_ENGINE
from runtime.contract import PreprocessSpec

HEIGHT, WIDTH = 8, 16


@pytest.fixture()
def backend_standin(monkeypatch):
    cudart = RecordingCudart()
    monkeypatch.setattr(tensorrt_backend, "import_cudart", lambda: cudart)
    backend = object.__new__(tensorrt_backend.TensorRTBackend)  # past __init__'s GPU probe and engine load
    backend.spec = PreprocessSpec(HEIGHT, WIDTH)
    backend.in_graph = False
    backend.max_batch = 1  # a batch-1 engine, as its sidecar would say
    backend.path, backend._rebuild = Path(FP16_ENGINE), "python -m engine --batch N"
    backend.input_name, backend.output_name = "image", "logits"
    backend.engine = standin_engine((1, 3, HEIGHT, WIDTH))
    backend.context = StandinContext(cudart, (1, 3, HEIGHT, WIDTH))
    backend._trt = standin_trt()
    backend._graph_exec = None
    backend._runtime_cache = None
    backend._use_cuda_graph = True
    backend._allocate()
    yield backend, cudart
    backend.close()


def expected_logits(batch: np.ndarray) -> np.ndarray:
    road = batch[:, 0] - batch[:, 1]
    return np.stack([road, -road], axis=1)


def test_allocate_enqueue_graph_infer_close_standin(backend_standin):
    backend, cudart = backend_standin
    assert cudart.calls.count("cudaMalloc") == 2 and cudart.calls.count("cudaMallocHost") == 2
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((1, 3, HEIGHT, WIDTH)).astype(np.float32) for _ in range(4)]
    results = []
    for index, batch in enumerate(batches):
        start = len(cudart.calls)
        results.append(backend.infer(batch))
        frame_calls = cudart.calls[start:]
        if index == 0:  # one plain enqueue, in order, then the capture of the next launch's work
            plain = frame_calls[:frame_calls.index("cudaStreamSynchronize")]
            assert plain == ["memcpy H2D", "execute_async_v3", "memcpy D2H"], frame_calls
            assert "cudaStreamBeginCapture" in frame_calls and "cudaGraphInstantiate" in frame_calls
        else:  # replayed from the graph: no new enqueue, no new allocation
            assert frame_calls[0] == "cudaGraphLaunch" and "execute_async_v3" not in frame_calls, frame_calls
            assert "cudaMalloc" not in frame_calls
    for batch, result in zip(batches, results, strict=True):
        np.testing.assert_allclose(result, expected_logits(batch), rtol=0, atol=1e-6)
    assert results[1] is not results[2]  # each result is the caller's own copy, not the pinned buffer


def test_close_frees_every_allocation_standin(backend_standin):
    backend, cudart = backend_standin
    backend.infer(np.ones((1, 3, HEIGHT, WIDTH), np.float32))
    backend.infer(np.ones((1, 3, HEIGHT, WIDTH), np.float32))
    backend.close()
    assert not cudart.device and not cudart.host and not cudart.streams and not cudart.graph_execs
    assert not cudart.graphs  # the captured graph was destroyed once instantiated
    backend.close()  # twice is harmless


def test_wrong_batch_is_refused_before_any_copy_standin(backend_standin):
    backend, cudart = backend_standin
    start = len(cudart.calls)
    with pytest.raises(ValueError, match=r"takes 1\.\.1 frames a call, got 2"):
        backend.infer(np.ones((2, 3, HEIGHT, WIDTH), np.float32))
    assert cudart.calls[start:] == []
