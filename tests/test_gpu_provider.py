"""ONNX Runtime's GPU providers as the runtime asks for them, checked with the real CPU build of ONNX Runtime.

A real onnxruntime-gpu InferenceSession on a GPU was measured on an H100 (docs/benchmarks.md); here the one
behaviour that needs no GPU is checked: a provider that cannot start is named, never silently replaced.
"""

from __future__ import annotations

from pathlib import Path

import onnxruntime
import pytest
from stream_helpers import tiny_onnx_model

from runtime.backends import OnnxRuntimeBackend, load_gpu_libraries
from runtime.contract import ModelFileError


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    return tiny_onnx_model(tmp_path_factory.getbasetemp())


@pytest.fixture()
def claims_cuda(monkeypatch) -> None:
    """ONNX Runtime lists the CUDA provider (as onnxruntime-gpu does on a machine whose CUDA libraries are
    missing), while the InferenceSession can only start on the CPU: what a broken GPU install looks like."""
    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])


def test_forced_cuda_that_falls_back_to_cpu_is_refused(tiny_onnx: Path, claims_cuda) -> None:
    with pytest.raises(ModelFileError, match="could not start CUDAExecutionProvider .*fell back to "
                                             "CPUExecutionProvider"):
        OnnxRuntimeBackend(tiny_onnx, provider="cuda")


def test_auto_keeps_the_fallback_and_names_it(tiny_onnx: Path, claims_cuda) -> None:
    backend = OnnxRuntimeBackend(tiny_onnx, provider="auto")
    assert backend.provider == "CPUExecutionProvider" and backend.device == "cpu"


def test_preloading_gpu_libraries_is_harmless_without_them() -> None:
    calls = []

    class Ort:
        @staticmethod
        def preload_dlls(**kwargs) -> None:
            calls.append(kwargs)
            raise OSError("libcudnn.so.9: cannot open shared object file")

    load_gpu_libraries(Ort)  # a best effort: must not raise
    load_gpu_libraries(object())  # an ONNX Runtime without preload_dlls (older, or a CPU build)
    assert calls == [{"msvc": False}]
