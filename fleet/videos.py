"""Recorded drives: finding the videos, planning them as frame segments, reading one segment with OpenCV.

A segment is (video, first frame, end frame); an actor's call decodes it on its own, seeking with
CAP_PROP_POS_FRAMES and checking that the decoder really stands there (some containers seek to the keyframe
before), so the segments of one video decode in parallel and every frame is decoded exactly once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from runtime.ioutil import sha256_file
from runtime.preprocess import as_bgr8
from runtime.sources import Reader, SourceError, open_video_reader

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm", ".mpg", ".mpeg", ".ts")
# A segment starts with a seek, which decodes from the keyframe before it: long segments keep that to a few percent
# for the usual keyframe every second or two (a 30 fps drive: 17 s a segment), and a drive still splits into
# hundreds of segments to spread over a cluster. Results leave an actor in blocks of OUTPUT_BLOCK_FRAMES.
DEFAULT_SEGMENT_FRAMES = 512
TO_END = -1  # a segment's end when it runs to the end of the file (frame counts in containers can be wrong)


@dataclass(frozen=True)
class VideoPlan:
    """One readable video: where its outputs go and how many frames its container says it has."""

    path: str
    stem: str
    frame_count: int
    fps: float
    fingerprint: str


@dataclass(frozen=True)
class Unreadable:
    path: str
    reason: str  # one line


def find_videos(inputs: list[str]) -> tuple[list[Path], list[Unreadable]]:
    """Video files named directly, and the video files (by suffix) inside named folders, in a stable order."""
    found: list[Path] = []
    missing: list[Unreadable] = []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
        elif path.is_file():
            found.append(path)
        else:
            missing.append(Unreadable(text, f"{text}: no such file or folder"))
    unique = list(dict.fromkeys(p.resolve() for p in found))
    return unique, missing


def fingerprint(video: Path, model_sha256: str, settings: str) -> str:
    """What a finished video's outputs were made from: the video's bytes, the model's bytes and the output
    settings. A rerun skips a video only when all three are unchanged."""
    return hashlib.sha256(f"{sha256_file(video)}|{model_sha256}|{settings}".encode()).hexdigest()


def plan_video(path: Path, model_sha256: str, settings: str) -> VideoPlan:
    """Open the video once (it must decode a frame) and read its frame count; SourceError names the file."""
    reader = open_video_reader(path)  # the runtime's checks: exists, not empty, opens, decodes a frame
    fps = reader.fps
    reader.release()
    capture = cv2.VideoCapture(str(path))
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    capture.release()
    return VideoPlan(str(path), path.stem, max(count, 0), fps, fingerprint(path, model_sha256, settings))


def segments(plan: VideoPlan, video_id: int, segment_frames: int = DEFAULT_SEGMENT_FRAMES) -> list[dict]:
    """The video as rows for ray.data.from_items: [start, end) frame ranges, the last one open-ended."""
    starts = list(range(0, max(plan.frame_count, 1), segment_frames))
    rows = []
    for number, start in enumerate(starts):
        last = number == len(starts) - 1
        rows.append({"video_id": video_id, "path": plan.path, "segment": number, "start": start,
                     "end": TO_END if last else start + segment_frames})
    return rows


def open_at(path: str, start: int) -> cv2.VideoCapture:
    """A capture whose next read() returns frame `start`: seek, verify, else read forward from the start."""
    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        raise SourceError(f"{path}: cannot be opened as a video")
    if start == 0:
        return capture
    capture.set(cv2.CAP_PROP_POS_FRAMES, start)
    if int(capture.get(cv2.CAP_PROP_POS_FRAMES)) == start:
        return capture
    capture.release()
    capture = cv2.VideoCapture(path)  # the container cannot seek exactly: decode our way there
    for _ in range(start):
        if not capture.grab():
            break
    return capture


class SegmentReader(Reader):
    """One segment of a video as a runtime Reader: frames [start, end) (to the end of the file with TO_END), opened
    at `start` on the first read. A file that cannot be opened any more ends the segment with no frames (the
    source's `error` says why): the run reports the video as incomplete and goes on."""

    def __init__(self, path: str, start: int, end: int) -> None:
        super().__init__(f"{path} [{start}, {'end' if end == TO_END else end})", input_paths=[Path(path)])
        self.path, self.start, self.end = path, start, end
        self.capture: cv2.VideoCapture | None = None
        self.frames_read = 0

    def read(self, buffer: np.ndarray | None) -> tuple[np.ndarray, str] | None:
        if self.end != TO_END and self.start + self.frames_read >= self.end:
            return None
        if self.capture is None:
            cv2.setNumThreads(1)  # one decode thread a segment: the segments of a run decode side by side
            self.capture = open_at(self.path, self.start)
        ok, image = self.capture.read(buffer) if buffer is not None else self.capture.read()
        if not ok or image is None:
            return None
        self.frames_read += 1
        return as_bgr8(image), str(self.start + self.frames_read - 1)

    @property
    def file_ended(self) -> bool:
        """Whether the file ended inside this segment (or the segment runs to the end)."""
        return self.end == TO_END or self.frames_read < self.end - self.start

    def release(self) -> None:
        if self.capture is not None:
            self.capture.release()
            self.capture = None
