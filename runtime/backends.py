"""Inference backends behind one small interface: `spec`, `infer(batch) -> logits`, and a few labels.

An `.onnx` runs on ONNX Runtime (TensorRT or CUDA provider when present, else CPU); a `.engine`/`.plan`
runs on TensorRT (runtime/tensorrt_backend.py). The preprocessing contract always comes from the model
file's own metadata, never from constants copied here.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import numpy as np

from runtime.backend_base import Backend
from runtime.contract import (
    CALIBRATION_KEY,
    MODEL_KEY,
    ModelFileError,
    TensorInfo,
    batch_capacity,
    check_model,
)
from runtime.input_policy import ArtifactError, parse_json

ENGINE_SUFFIXES = (".engine", ".plan")
# ONNX Runtime's type strings for the element types a roadseg graph may carry.
ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(uint8)": "uint8",
              "tensor(int64)": "int64"}


def ort_tensor_info(node) -> TensorInfo:
    return TensorInfo(node.name, tuple(node.shape), ORT_DTYPES.get(node.type, node.type))


def available_providers() -> list[str]:
    try:
        import onnxruntime
    except ImportError:
        return []
    return list(onnxruntime.get_available_providers())


def cuda_provider_available() -> bool:
    """Whether ONNX Runtime here lists its CUDA provider (onnxruntime-gpu), i.e. whether GPU-first choices apply."""
    return "CUDAExecutionProvider" in available_providers()


GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def load_gpu_libraries(ort) -> None:
    """Load CUDA/cuDNN from pip's nvidia-* wheels (as torch installs them) before a GPU InferenceSession is made.

    onnxruntime-gpu links them when an InferenceSession is created through the system loader, which does not search
    site-packages: without this a machine whose CUDA came with torch silently runs on the CPU provider.
    Where the libraries are system-wide (JetPack, a CUDA install) or the build has no preload_dlls, it changes
    nothing.
    """
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    try:
        preload(msvc=False)
    except Exception:  # a best effort: the InferenceSession itself reports a provider that cannot start
        pass


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, path: str | Path, provider: str = "auto", threads: int | None = None,
                 spinning: bool = True, fused: bool = True) -> None:
        try:
            import onnxruntime as ort
        except ImportError as error:
            raise ModelFileError("onnxruntime is not installed: pip install -r requirements/runtime-cpu.txt "
                                 "(or runtime-gpu.txt, never both)") from error
        path = Path(path)
        if not path.is_file():
            raise ModelFileError(f"{path}: model file not found")
        options = ort.SessionOptions()
        # fused=False runs the graph as written (a Q/DQ file's DequantizeLinear -> float Conv): the reference
        # arithmetic the accuracy gate scores a TensorRT INT8 file with.
        options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if fused
                                            else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
        options.log_severity_level = 3
        if not spinning:
            # Spinning workers shave latency off back-to-back runs but starve other threads on the same cores:
            # a streaming loop's decode thread (seen on 2 cores: INT8 end-to-end 13.4 -> 10.1 ms without it).
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            options.intra_op_num_threads = threads
        providers = self._providers(provider, ort.get_available_providers())
        if any(p in GPU_PROVIDERS for p in providers):
            load_gpu_libraries(ort)
        try:
            self.ort_session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as error:  # ORT raises its own exception types for foreign or corrupt files
            message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ModelFileError(f"{path}: ONNX Runtime cannot load it ({message[:200]})") from error
        self.metadata = dict(self.ort_session.get_modelmeta().custom_metadata_map)
        self.spec, self.in_graph, self.precision = check_model(
            self.metadata, [ort_tensor_info(i) for i in self.ort_session.get_inputs()],
            [ort_tensor_info(o) for o in self.ort_session.get_outputs()], path)
        self.provider = self.ort_session.get_providers()[0]
        if provider in ("cuda", "tensorrt") and self.provider != providers[0]:
            # ORT falls back to the next provider when one cannot start (no CUDA/cuDNN/TensorRT libraries): a
            # forced backend must not quietly report CPU or CUDA timings under the other's name.
            raise ModelFileError(f"--backend {provider}: ONNX Runtime could not start {providers[0]} (it fell back "
                                 f"to {self.provider}); check the CUDA/cuDNN/TensorRT libraries it needs")
        self.device = "cpu" if self.provider == "CPUExecutionProvider" else self._gpu_name()
        self.input_name = self.ort_session.get_inputs()[0].name
        self.max_batch = batch_capacity(self.ort_session.get_inputs()[0].shape)
        self.output_name = self.ort_session.get_outputs()[0].name
        self.path = path

    @staticmethod
    def _providers(choice: str, available: list[str]) -> list[str]:
        wanted = {
            "auto": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
            "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
            "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
            "cpu": ["CPUExecutionProvider"],
        }.get(choice)
        if wanted is None:
            raise ModelFileError(f"--backend {choice}: expected auto, cpu, cuda or tensorrt")
        if choice in ("cuda", "tensorrt") and wanted[0] not in available:
            raise ModelFileError(f"--backend {choice}: ONNX Runtime here has no {wanted[0]} "
                                 f"(available: {', '.join(available)}); install requirements/runtime-gpu.txt")
        return [p for p in wanted if p in available]

    @staticmethod
    def _gpu_name() -> str:
        from runtime.machine import nvidia_smi

        names = nvidia_smi("gpu", ["name"], timeout_s=5)
        return names[0][0] if names and names[0][0] else "cuda"

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.ort_session.run([self.output_name], {self.input_name: batch})[0]


def model_description(metadata: dict[str, str]) -> dict:
    try:
        return json.loads(metadata.get(MODEL_KEY, "{}"))
    except json.JSONDecodeError:
        return {}


def open_backend(path: str | Path, backend: str = "auto", threads: int | None = None,
                 spinning: bool = True, precision: str = "auto") -> Backend:
    """Pick the backend from the file: engines run on TensorRT, ONNX files on ONNX Runtime, or on OpenVINO
    when asked (`backend="openvino"`, optional install; `precision` fp32|bf16 is its CPU hint).

    `spinning=False` when other threads (capture, decode) share the CPU with inference, as in a stream.
    """
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path}: model file not found")
    if path.suffix in ENGINE_SUFFIXES:
        if backend not in ("auto", "tensorrt"):
            raise ModelFileError(f"{path}: a TensorRT engine cannot run on --backend {backend}")
        from runtime.tensorrt_backend import TensorRTBackend

        return TensorRTBackend(path)
    if path.suffix != ".onnx":
        raise ModelFileError(f"{path}: unknown model type (expected .onnx, .engine or .plan)")
    if backend == "openvino":
        from runtime.openvino_backend import OpenVINOBackend

        return OpenVINOBackend(path, precision=precision, threads=threads, spinning=spinning)
    if precision not in ("auto", "fp32", "int8"):
        raise ModelFileError(f"--precision {precision}: ONNX Runtime runs the file's own precision; "
                             "bf16 is an OpenVINO CPU hint (--backend openvino)")
    if backend == "onnxruntime":
        backend = "auto"
    return OnnxRuntimeBackend(path, provider=backend, threads=threads, spinning=spinning)


# x86 instructions that multiply-add int8 into 32-bit sums. Without them ONNX Runtime's and OpenVINO's int8
# kernels go through 16-bit intermediate sums (VPMADDUBSW), which saturate on large folded weights.
INT8_DOT_PRODUCT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


def int8_saturation_warning(backend: Backend, path: str | Path) -> str | None:
    """A warning line when an INT8 file quantized for TensorRT (s8 activations, full-range weights) runs on an x86
    CPU without int8 dot-product instructions, where it can lose accuracy; None otherwise. The CPU-tuned file
    (7-bit weights) is made for exactly those CPUs."""
    from runtime.machine import cpu_flags  # looked up at call time: tests stand in for the CPU

    if backend.precision != "int8" or backend.device != "cpu" or platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    if calibration_flavour(backend.metadata) == "cpu-tuned":
        return None
    flags = cpu_flags()
    if not flags or flags & INT8_DOT_PRODUCT_FLAGS:
        return None
    return (f"warning: {path} is INT8 quantized for TensorRT; this CPU has no VNNI, and {backend.name}'s int8 "
            f"kernels can saturate on such a file and lose accuracy: use the CPU-tuned INT8 file of the same model "
            f"(`make calibrate` writes it beside this one) here")


def calibration_flavour(metadata: dict[str, str]) -> str | None:
    """The INT8 flavour the calibration stage recorded in a model's metadata (None: not recorded or unreadable)."""
    try:
        recorded = parse_json(metadata.get(CALIBRATION_KEY, "{}"), CALIBRATION_KEY)
    except ArtifactError:
        return None
    return recorded.get("flavour") if isinstance(recorded, dict) else None
