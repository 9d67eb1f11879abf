"""Frames -> road masks with one backend: what a Ray Data actor and a Ray Serve replica each hold.

The same steps as runtime/pipeline.py's serial loop (preprocess -> backend.infer -> postprocess), so a mask
made here equals the slim runtime's for the same frame and model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtime.backend_choice import open_requested
from runtime.backends import Backend, open_backend
from runtime.contract import MAX_BATCH
from runtime.pipeline import frame_preprocessor, warm_up
from runtime.postprocess import MaskPostprocessor

DYNAMIC = None  # a model whose batch dimension is symbolic: any batch size runs in one call


def model_batch_limit(backend: Backend) -> int | None:
    """The batch the model's input takes: DYNAMIC (None) when its batch axis is symbolic, else the backend's limit
    (a fixed batch, or a TensorRT engine's profile maximum)."""
    return DYNAMIC if backend.max_batch >= MAX_BATCH else backend.max_batch


def fuller_batch_pays(model_limit: int | None, device: str) -> bool:
    """Whether a fuller batch costs less a frame: a fixed batch N > 1 (padded to N anyway) or a symbolic batch on a
    GPU. A model fixed at batch 1 runs a batch's frames one after another, and on a CPU a symbolic batch costs the
    sum of its frames (measured with the Lite0 model on 2 cores, docs/fleet.md)."""
    if model_limit is DYNAMIC:
        return device != "cpu"
    return model_limit > 1


def resolve_backend(model: Path, runtime: str, device: str, precision: str) -> tuple[str, str, str]:
    """(open_backend's name, precision, label) that every actor or replica opens: runtime/stream.py's own reading
    of --backend/--device/--precision (its measured choice for auto), made here once so that a bad model or pair
    fails in one line before a cluster starts, and pinned to the runtime and device it chose."""
    opened, choice = open_requested(model, runtime, device, precision, threads=1)
    if choice is not None:
        print(choice.line(), flush=True)
    if opened.name == "openvino":
        name, precision = "openvino", "bf16" if "bf16" in opened.precision else "fp32"
    elif opened.name == "onnxruntime":
        name, precision = opened.device, "auto"  # ONNX Runtime with that provider
    else:
        name = opened.name
    return name, precision, f"{opened.name} {opened.precision}"


@dataclass
class SegmentedFrames:
    """Masks of a batch of frames (each at its frame's size, 1 = road) and the inference milliseconds of each
    frame (a frame inferred together with others gets its share of the call)."""

    masks: list[np.ndarray]
    inference_ms: list[float] = field(default_factory=list)


class FrameSegmenter:
    """One backend with its preprocessor and postprocessor, warmed up once."""

    def __init__(self, model: str | Path, backend: str = "auto", threads: int | None = None,
                 precision: str = "auto") -> None:
        self.model = Path(model)
        # Not spinning: a replica or actor shares its cores with decoding and Ray's own threads.
        self.backend = open_backend(self.model, backend, threads=threads, spinning=False, precision=precision)
        self.batch_limit = model_batch_limit(self.backend)
        self._preprocess = frame_preprocessor(self.backend)
        self._postprocess = MaskPostprocessor(self.backend.spec.road_index)
        warm_up(self.backend, self._preprocess)

    @property
    def label(self) -> str:
        return f"{self.backend.name} {self.backend.precision} on {self.backend.device}"

    def __call__(self, frames: list[np.ndarray]) -> SegmentedFrames:
        if self.batch_limit is DYNAMIC and len(frames) > 1:
            return self._in_one_call(frames)
        if self.batch_limit is not DYNAMIC and self.batch_limit > 1:  # a fixed batch N: chunks of N, padded
            result = SegmentedFrames([])
            for start in range(0, len(frames), self.batch_limit):
                chunk = self._in_one_call(frames[start:start + self.batch_limit], pad_to=self.batch_limit)
                result.masks += chunk.masks
                result.inference_ms += chunk.inference_ms
            return result
        result = SegmentedFrames([])
        for frame in frames:  # a model fixed at batch 1: the batch runs frame by frame
            tensor = self._preprocess(frame)
            started = time.perf_counter()
            logits = self.backend.infer(tensor)
            result.inference_ms.append((time.perf_counter() - started) * 1000.0)
            result.masks.append(self._postprocess(logits[0], frame.shape[:2]).copy())
        return result

    def _in_one_call(self, frames: list[np.ndarray], pad_to: int = 0) -> SegmentedFrames:
        tensors = [self._preprocess(frame).copy() for frame in frames]
        tensors += [np.zeros_like(tensors[0])] * max(0, pad_to - len(frames))
        tensor = np.concatenate(tensors)
        started = time.perf_counter()
        logits = self.backend.infer(tensor)
        share = (time.perf_counter() - started) * 1000.0 / len(frames)
        masks = [self._postprocess(logits[i], frame.shape[:2]).copy() for i, frame in enumerate(frames)]
        return SegmentedFrames(masks, [share] * len(frames))
