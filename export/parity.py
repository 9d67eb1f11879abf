"""The export's parity gate: ONNX Runtime (CPU) against PyTorch on real KITTI val frames.

Both see the same preprocessed tensors (the runtime's FramePreprocessor). The gate holds when the argmax
masks agree on >= 99.99 % of pixels and the largest |logit difference| is below 1e-3 of the logit range
(FP32 reordering noise is ~1e-6 of it; a wrong op or a layout slip is orders of magnitude above).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from runtime.contract import PreprocessSpec
from runtime.preprocess import FramePreprocessor

MIN_AGREEMENT = 0.9999
MAX_RELATIVE_DIFF = 1e-3
MIN_FRAMES = 20


class ParityError(RuntimeError):
    pass


@dataclass(frozen=True)
class ParityReport:
    frames: int
    pixels: int
    argmax_agreement: float
    max_abs_diff: float
    logit_range: float
    min_frames: int = MIN_FRAMES

    @property
    def relative_diff(self) -> float:
        return self.max_abs_diff / max(self.logit_range, 1e-12)

    @property
    def passed(self) -> bool:
        return (self.frames >= self.min_frames and self.argmax_agreement >= MIN_AGREEMENT
                and self.relative_diff <= MAX_RELATIVE_DIFF)

    def line(self) -> str:
        return (f"parity on {self.frames} KITTI val frames: "
                f"argmax agreement {self.argmax_agreement * 100:.4f} % "
                f"(floor {MIN_AGREEMENT * 100:.2f} %), max |logit diff| {self.max_abs_diff:.2e} = "
                f"{self.relative_diff:.1e} of the logit range {self.logit_range:.2f} "
                f"(ceiling {MAX_RELATIVE_DIFF:.0e})")

    def to_dict(self) -> dict:
        return {**asdict(self), "relative_diff": self.relative_diff, "passed": self.passed,
                "floors": {"argmax_agreement": MIN_AGREEMENT, "relative_diff": MAX_RELATIVE_DIFF,
                           "frames": self.min_frames}}


def val_frames(kitti_dir: str | Path, count: int) -> list[Path]:
    """`count` val images spread over um/umm/uu (all of val if it has fewer)."""
    from kitti.frames import select_kitti_frames

    return [path for _, path in select_kitti_frames(kitti_dir, count, split="val")]


def check_parity(model: torch.nn.Module, spec: PreprocessSpec, onnx_path: str | Path, frames: list[Path],
                 min_frames: int = MIN_FRAMES) -> ParityReport:
    import onnxruntime as ort

    from kitti.data import read_image

    if len(frames) < min_frames:
        raise ParityError(f"parity gate needs at least {min_frames} real frames, got {len(frames)}")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    ort_session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    name = ort_session.get_inputs()[0].name
    preprocess = FramePreprocessor(spec)
    agree = pixels = 0
    max_diff, low, high = 0.0, np.inf, -np.inf
    model = model.eval()
    for path in frames:
        batch = preprocess(read_image(path))
        with torch.inference_mode():
            reference = model(torch.from_numpy(batch)).numpy()
        candidate = ort_session.run(None, {name: batch})[0]
        if candidate.shape != reference.shape:
            raise ParityError(f"{onnx_path}: output shape {candidate.shape} != PyTorch {reference.shape}")
        agree += int((candidate.argmax(1) == reference.argmax(1)).sum())
        pixels += reference.shape[0] * reference.shape[2] * reference.shape[3]
        max_diff = max(max_diff, float(np.abs(candidate - reference).max()))
        low, high = min(low, float(reference.min())), max(high, float(reference.max()))
    return ParityReport(len(frames), pixels, agree / pixels, max_diff, high - low, min_frames)
