"""One video's outputs in OUT/<video stem>/: a PNG mask per frame (runtime/outputs.py's MaskWriter, the same
files `runtime/stream.py --save-masks` writes), an optional overlay video, and stats.json.

stats.json is written last and only for a video whose every frame was written: it is the mark a rerun looks
for (with the fingerprint of the video, the model and the settings) to skip a finished video. Every file is
written atomically, and a mask is named by its frame index, so writing one twice leaves the same file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from runtime.outputs import MaskWriter, Renderer, VideoFileOutput
from runtime.stats import LatencyRing, write_stats_json

STATS_NAME = "stats.json"
MASKS_DIR = "masks"
OVERLAY_NAME = "overlay.mp4"
MAX_STATS_BYTES = 1 << 20


def frame_name(index: int) -> str:
    """A frame's file name: its 0-based position in the video, as runtime/sources.py's CaptureReader names it."""
    return f"{index:06d}"


def finished_fingerprint(folder: Path) -> str | None:
    """The fingerprint in a video folder's complete stats.json, None when absent, partial or not ours."""
    path = folder / STATS_NAME
    try:
        if not path.is_file() or path.stat().st_size > MAX_STATS_BYTES:
            return None
        stats = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(stats, dict) or stats.get("complete") is not True:
        return None
    found = stats.get("fingerprint")
    return found if isinstance(found, str) else None


class VideoOutputs:
    """Masks (and the overlay) of one video, written as its frames arrive in order."""

    def __init__(self, folder: Path, fps: float, overlay: bool, alpha: float = 0.5) -> None:
        self.folder = folder
        self.masks = MaskWriter(folder / MASKS_DIR)
        self.overlay = VideoFileOutput(folder / OVERLAY_NAME, fps) if overlay else None
        self.renderer = Renderer("overlay", alpha) if overlay else None
        self.indices: set[int] = set()
        self.duplicates = 0
        self.file_ended_at: int | None = None
        self.inference = LatencyRing()

    def write(self, index: int, mask_png: bytes, inference_ms: float, file_ended: bool,
              overlay: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """Frame `index`'s mask file (encoded by runtime/outputs.py's encode_mask_png) and, with an overlay video,
        its (mask, frame)."""
        if index in self.indices:  # a retried block delivered twice: the file is already there
            self.duplicates += 1
            return
        self.masks.write_encoded(frame_name(index), bytes(mask_png))
        if self.overlay is not None and overlay is not None:
            mask, frame = overlay
            self.overlay.write(self.renderer.render(frame, mask, scratch=False))
        self.indices.add(index)
        self.inference.add(inference_ms)
        if file_ended:
            self.file_ended_at = index if self.file_ended_at is None else max(self.file_ended_at, index)

    def missing(self, frame_count: int) -> str | None:
        """Why this video is not complete, or None: every frame from 0 to the end of the file written once."""
        written = len(self.indices)
        expected = max(self.indices) + 1 if self.indices else 0
        if written == 0:
            return "no frames could be decoded"
        if written != expected:
            return f"{expected - written} of {expected} frames missing"
        if written < frame_count and self.file_ended_at != expected - 1:
            return f"decoded {written} of {frame_count} frames"
        return None

    def close(self) -> None:
        if self.overlay is not None:
            self.overlay.close()

    def finish(self, summary: dict) -> None:
        write_stats_json(self.folder / STATS_NAME, summary)
