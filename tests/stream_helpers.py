"""Shared by the streaming-runtime tests: a tiny real ONNX model, the KITTI video, and running the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ROADSEG_SHARED_DATA", REPO.parent / "shared" / "data"))
KITTI_VIDEO = SHARED_DATA / "kitti_raw" / "2011_09_26_drive_0001_image_02.mp4"
STREAM = REPO / "runtime" / "stream.py"
FAULT_STREAM = REPO / "tests" / "fault_stream.py"  # STREAM that also opens the faulty:// test camera
TINY_SIZE_HW = (96, 320)


def tiny_onnx_model(base: Path) -> Path:
    """A real FCN-8s (width 0.125, random weights, fixed seed) exported with the real exporter; built once
    per pytest run and shared through its base temp folder."""
    path = base / "roadseg_tiny_model" / "tiny.onnx"
    if path.is_file():
        return path
    from conftest import random_fcn8s

    from export.onnx_export import export_onnx
    from runtime.contract import PreprocessSpec

    model = random_fcn8s()
    export_onnx(model, PreprocessSpec(*TINY_SIZE_HW), {"arch": "fcn8s_vgg16", "width": 0.125},
                {"note": "test model, random weights"}, path)
    return path


def run_stream(*args: str, timeout: float = 120, env: dict | None = None,
               script: Path = STREAM) -> subprocess.CompletedProcess:
    """`python runtime/stream.py ARGS` as a real process, the way a user types it (`script=FAULT_STREAM` for a run
    with faulty:// sources)."""
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env={**os.environ, **(env or {})})


def start_stream(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(STREAM), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO, env={**os.environ, **(env or {})})


def read_video(path: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    assert capture.isOpened(), f"{path} does not open as a video"
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames


def write_video(path: Path, frames: int, size_wh: tuple[int, int], fps: float) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size_wh)
    rng = np.random.default_rng(0)
    for index in range(frames):
        image = rng.integers(0, 255, (size_wh[1], size_wh[0], 3), np.uint8)
        cv2.putText(image, str(index), (10, size_wh[1] - 10), cv2.FONT_HERSHEY_SIMPLEX, 1, (255, 255, 255), 2)
        writer.write(image)
    writer.release()
    return path


def assert_one_error_line(stderr: str) -> str:
    """A fault must end in one `error: ...` line and never a traceback."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr
    return lines[0]
