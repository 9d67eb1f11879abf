"""The interface every inference backend implements, apart from runtime/backends.py so that the backends in their
own modules (OpenVINO, TensorRT) can derive from it without an import circle."""

from __future__ import annotations

import numpy as np

from runtime.contract import PreprocessSpec


class Backend:
    """What the loops, the benchmarks and the fleet read from a backend: `spec`, `infer(batch) -> logits`, and a
    few labels. A backend sets the attributes without a default; the others keep theirs unless they differ."""

    name: str  # "onnxruntime", "openvino" or "tensorrt"
    precision: str  # "fp32", "fp16", "bf16" or "int8"
    device: str  # "cpu" or the GPU's name
    spec: PreprocessSpec
    metadata: dict[str, str]
    max_batch: int = 1  # the most frames one infer() call takes (1 for a model with a fixed batch of 1)
    in_graph: bool = False  # uint8 frames in, uint8 mask out: the model does pre/post itself (export/ingraph.py)
    provider: str | None = None  # the engine inside a runtime with several (ONNX Runtime's execution provider)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError
