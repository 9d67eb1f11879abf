"""OpenVINO backend: the same ONNX files, the same contract, often the fastest path on an x86 CPU.

Optional: `pip install -r requirements/runtime-openvino.txt` (or `make setup-openvino`). Nothing here imports
OpenVINO until a backend is opened, so a runtime without it runs exactly as before.

Precision on CPU is a choice, not an accident: OpenVINO's own default on CPUs with bf16 units (AMX, AVX-512
BF16) runs float models in bf16, so the inference precision hint is always set explicitly. `fp32` means
f32 math; `bf16` is offered only where the CPU reports BF16 among its optimization capabilities; INT8 comes
from the Q/DQ files that `make calibrate` writes. An INT8 file's non-quantized layers (the logits path) run in
f32 (`int8`) or, where bf16 is native, in bf16 (`int8+bf16`, gated separately; on a 2-core AMX Xeon the two
were within each other's noise in `make bench`, and `--backend auto` keeps whichever its probe measures faster).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from runtime.backend_base import Backend
from runtime.contract import ModelFileError, TensorInfo, batch_capacity, check_model

INT8_BF16 = "int8+bf16"  # an INT8 Q/DQ file whose float rest runs in bf16
BF16_HINTED = ("bf16", INT8_BF16)
INSTALL_HINT = "pip install -r requirements/runtime-openvino.txt (or make setup-openvino)"


def openvino_installed() -> bool:
    try:
        return importlib.util.find_spec("openvino") is not None
    except (ImportError, ValueError):  # a broken install, or an import hook that hides it
        return False


def _core():
    try:
        import openvino
    except ImportError as error:
        raise ModelFileError(f"OpenVINO is not installed: {INSTALL_HINT}") from error
    return openvino.Core()


def cpu_capabilities(core=None) -> list[str]:
    """What OpenVINO's CPU plugin says this CPU accelerates (e.g. FP32, BF16, INT8); [] without OpenVINO."""
    if core is None:
        if not openvino_installed():
            return []
        core = _core()
    try:
        return [str(c) for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")]
    except RuntimeError:
        return []


def bf16_supported(core=None) -> bool:
    """bf16 is worth offering only where the CPU computes it natively (AMX or AVX-512 BF16): elsewhere
    OpenVINO would emulate it, slower than f32 and less accurate."""
    return "BF16" in cpu_capabilities(core)


def cpu_precisions(file_precision: str, core=None) -> list[str]:
    """The precisions this CPU can run a file of `file_precision` at: a float file at fp32 (and bf16 where
    native); an INT8 Q/DQ file as int8 (and int8+bf16 where bf16 is native)."""
    native = bf16_supported(core)
    if file_precision == "int8":
        return ["int8", INT8_BF16] if native else ["int8"]
    return ["fp32", "bf16"] if native else ["fp32"]


def hint(precision: str) -> str:
    """OpenVINO's INFERENCE_PRECISION_HINT for a backend precision: what the float layers compute in."""
    return "bf16" if precision in BF16_HINTED else "f32"


def read_metadata(model) -> dict[str, str]:
    """The ONNX file's metadata_props, which OpenVINO's ONNX reader keeps under rt_info['framework']."""
    try:
        framework = model.get_rt_info()["framework"]
    except (KeyError, RuntimeError, TypeError):
        return {}
    return {str(key): value.astype(str) if hasattr(value, "astype") else str(value)
            for key, value in framework.items()}


def openvino_tensor_info(port) -> TensorInfo:
    """A graph input/output as OpenVINO reads it from the file, in the form contract.check_graph_io takes."""
    try:
        name = port.get_any_name()
    except RuntimeError:  # an unnamed tensor
        name = "?"
    shape = port.get_partial_shape()
    dims = [d.get_length() if d.is_static else None for d in shape] if shape.rank.is_static else []
    try:
        dtype = port.get_element_type().to_dtype().name
    except (RuntimeError, TypeError):
        dtype = port.get_element_type().get_type_name()
    return TensorInfo(name, tuple(dims), dtype)


class OpenVINOBackend(Backend):
    name = "openvino"

    def __init__(self, path: str | Path, precision: str = "fp32", threads: int | None = None,
                 spinning: bool = True, device: str = "CPU") -> None:
        path = Path(path)
        if not path.is_file():
            raise ModelFileError(f"{path}: model file not found")
        if path.suffix != ".onnx":
            raise ModelFileError(f"{path}: OpenVINO runs the .onnx files here (got {path.suffix or 'no suffix'})")
        core = _core()
        try:
            model = core.read_model(str(path))
        except Exception as error:  # OpenVINO raises its own types for foreign or corrupt files
            message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ModelFileError(f"{path}: OpenVINO cannot read it ({message[:200]})") from error
        self.metadata = read_metadata(model)
        self.spec, self.in_graph, file_precision = check_model(
            self.metadata, [openvino_tensor_info(port) for port in model.inputs],
            [openvino_tensor_info(port) for port in model.outputs], path)
        if self.in_graph:  # the loop feeds it floats and reads logits; in-graph files run on ONNX Runtime
            raise ModelFileError(f"{path}: an in-graph pre/post model; run it with --backend onnxruntime")
        self.precision = self._resolve_precision(path, file_precision, precision, core)
        config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
                  "INFERENCE_PRECISION_HINT": hint(self.precision)}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if not spinning:
            # Threads pinned to cores cannot make room for a stream's capture/decode thread on a small CPU.
            config["ENABLE_CPU_PINNING"] = False
        try:
            self.compiled = core.compile_model(model, device, config)
        except Exception as error:
            message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ModelFileError(f"{path}: OpenVINO cannot compile it for {device} ({message[:200]})") from error
        self.request = self.compiled.create_infer_request()
        output = self.compiled.outputs[0]
        static = output.get_partial_shape().is_static and output.get_element_type().get_type_name() == "f32"
        self._output_shape = tuple(output.get_shape()) if static else None
        batch_dim = self.compiled.inputs[0].get_partial_shape()[0]
        self.max_batch = batch_capacity([batch_dim.get_length() if batch_dim.is_static else None])
        from openvino import Tensor  # installed: the core above came from it

        self._tensor = Tensor
        self.device = "cpu" if device == "CPU" else device.lower()
        self.provider = f"OpenVINO {device} {hint(self.precision)}"
        self.threads = int(self.compiled.get_property("INFERENCE_NUM_THREADS"))
        self.path = path

    @staticmethod
    def _resolve_precision(path: Path, file_precision: str, wanted: str, core) -> str:
        known = ("auto", "fp32", "bf16", "int8", INT8_BF16)
        if wanted not in known:
            raise ModelFileError(f"--precision {wanted}: expected one of {', '.join(known)} for {path.name}")
        int8_file = file_precision == "int8"
        if wanted in ("auto", "fp32", "int8"):
            return "int8" if int8_file else "fp32"
        if wanted == INT8_BF16 and not int8_file:
            raise ModelFileError(f"{path}: --precision {INT8_BF16} needs an INT8 Q/DQ file (this one is "
                                 f"{file_precision})")
        if not bf16_supported(core):
            raise ModelFileError(f"--precision {wanted}: this CPU has no native bf16 (OpenVINO capabilities: "
                                 f"{', '.join(cpu_capabilities(core))}); use fp32 or an INT8 file")
        # --precision bf16 on an INT8 file: its quantized layers stay int8, the float rest runs in bf16.
        return INT8_BF16 if int8_file else "bf16"

    def infer(self, batch: np.ndarray) -> np.ndarray:
        if self._output_shape is None:  # a dynamic output: copy what the request wrote
            self.request.infer({0: batch}, share_inputs=True)
            return self.request.get_output_tensor(0).data.copy()
        # Each result gets an array of its own, which OpenVINO writes into directly: the pipelined loop still
        # holds the last result while the next frame runs, and a copy out of the request's own buffer cost
        # ~0.2 ms of a 4 ms INT8 inference (Xeon with AMX, 2 threads).
        logits = np.empty(self._output_shape, np.float32)
        self.request.set_output_tensor(0, self._tensor(logits, shared_memory=True))
        self.request.infer({0: batch}, share_inputs=True, share_outputs=True)
        return logits
