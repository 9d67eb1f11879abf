"""Recorded drives: finding the videos, planning them as frame segments, decoding one segment with OpenCV.

A segment is (video, first frame, end frame); a Ray task decodes it on its own, seeking with
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
from runtime.sources import SourceError, open_video_reader

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm", ".mpg", ".mpeg", ".ts")
DEFAULT_SEGMENT_FRAMES = 32
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


def decode_segments(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Ray Data's map_batches form of decode_segment, for batches of one segment row."""
    if len(batch["path"]) != 1:
        raise ValueError(f"decode_segments takes one segment per batch, got {len(batch['path'])}")
    return decode_segment({key: values[0] for key, values in batch.items()})


def decode_segment(row: dict) -> dict[str, np.ndarray]:
    """A segment row -> its frames as a batch: uint8 BGR frames (stacked; all frames of one video share a size),
    their indices, and whether the file ended inside the segment. A file that cannot be opened any more gives no
    frames: the run reports the video as incomplete and goes on."""
    # One decode thread: the segments of the run decode in parallel, each in its own task.
    cv2.setNumThreads(1)
    start, end = int(row["start"]), int(row["end"])
    frames: list[np.ndarray] = []
    try:
        capture = open_at(str(row["path"]), start)
    except SourceError:
        capture = None
    try:
        while capture is not None and (end == TO_END or start + len(frames) < end):
            ok, image = capture.read()
            if not ok or image is None:
                break
            frames.append(as_bgr8(image))
    finally:
        if capture is not None:
            capture.release()
    count = len(frames)
    ended = end == TO_END or count < end - start
    return {
        "frame": np.stack(frames) if frames else np.zeros((0, 1, 1, 3), np.uint8),
        "video_id": np.full(count, row["video_id"], np.int32),
        "segment": np.full(count, row["segment"], np.int32),
        "index": np.arange(start, start + count, dtype=np.int64),
        "file_ended": np.full(count, ended, bool),
    }
