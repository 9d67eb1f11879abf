"""The window path: a real OpenCV (Qt) window on an Xvfb display, checked through a screenshot of the screen.

Xvfb's -fbdir keeps its framebuffer in an XWD file, so the screenshot is read straight from there. The window
must show the streamed frame (found by template matching) under the heads-up line.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from stream_helpers import KITTI_VIDEO, start_stream, tiny_onnx_model

from runtime.outputs import HUD_HEIGHT, gui_backend

SCREEN_WH = (1600, 900)

pytestmark = [
    pytest.mark.skipif(shutil.which("Xvfb") is None, reason="no Xvfb binary (apt-get install xvfb)"),
    pytest.mark.skipif(gui_backend().upper() == "NONE",
                       reason="this OpenCV has no GUI backend (opencv-python-headless installed)"),
    pytest.mark.skipif(not KITTI_VIDEO.is_file(), reason=f"KITTI video not found at {KITTI_VIDEO}"),
]


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory) -> Path:
    return tiny_onnx_model(tmp_path_factory.getbasetemp())


@pytest.fixture()
def xvfb(tmp_path: Path):
    """A private X display; yields (DISPLAY value, path of the framebuffer XWD file)."""
    read_fd, write_fd = os.pipe()
    process = subprocess.Popen(["Xvfb", "-displayfd", str(write_fd), "-screen", "0",
                                f"{SCREEN_WH[0]}x{SCREEN_WH[1]}x24", "-fbdir", str(tmp_path), "-nolisten", "tcp"],
                               pass_fds=(write_fd,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        number = pipe.readline().strip()  # Xvfb writes its display number here once it accepts clients
    try:
        assert number.isdigit(), "Xvfb did not start"
        yield f":{number}", tmp_path / "Xvfb_screen0"
    finally:
        process.terminate()
        process.wait(timeout=10)


def read_xwd(path: Path) -> np.ndarray:
    """An X Window Dump (ZPixmap, 24/32 bits per pixel) -> H x W x 3 BGR."""
    data = path.read_bytes()
    header = np.frombuffer(data[:100], ">u4")
    header_size, pixmap_format, width, height = int(header[0]), int(header[2]), int(header[4]), int(header[5])
    byte_order, bits_per_pixel, bytes_per_line, ncolors = (int(header[7]), int(header[11]), int(header[12]),
                                                           int(header[19]))
    assert pixmap_format == 2 and bits_per_pixel == 32, (pixmap_format, bits_per_pixel)
    start = header_size + 12 * ncolors
    pixels = np.frombuffer(data, np.uint8, height * bytes_per_line, start).reshape(height, bytes_per_line)
    pixels = pixels[:, : width * 4].reshape(height, width, 4)
    return np.ascontiguousarray(pixels[:, :, :3] if byte_order == 0 else pixels[:, :, 3:0:-1])


def test_stream_shows_frames_in_a_real_window(tiny_onnx: Path, tmp_path: Path, xvfb):
    display, framebuffer = xvfb
    frame = cv2.VideoCapture(str(KITTI_VIDEO)).read()[1]
    images = tmp_path / "still"
    images.mkdir()
    cv2.imwrite(str(images / "frame.png"), frame)
    # --alpha 0: the window shows the frame itself (plus the heads-up line), so it can be found exactly.
    process = start_stream(str(images), "--loop", "--model", str(tiny_onnx), "--display",
                           "--alpha", "0", "--quiet", env={"DISPLAY": display})
    patch = frame[120:300, 300:900]
    best, location, screen = 0.0, (0, 0), None
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and best < 0.98:
            assert process.poll() is None, process.communicate()
            time.sleep(0.3)
            screen = read_xwd(framebuffer)
            scores = cv2.matchTemplate(screen, patch, cv2.TM_CCOEFF_NORMED)
            _, best, _, location = cv2.minMaxLoc(scores)
    finally:
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=30)
    cv2.imwrite(str(tmp_path / "screenshot.png"), screen)
    assert best >= 0.98, (f"streamed frame not on screen (best match {best:.3f}); see {tmp_path / 'screenshot.png'}; "
                          f"the stream said: {stdout[-300:]!r} / {stderr[-500:]!r}")
    assert process.returncode == 0, stderr
    assert "stopped by SIGINT" in stdout and "Traceback" not in stderr

    # The window is at 1:1 scale: its top-left is the match minus the patch's offset in the frame.
    left, top = location[0] - 300, location[1] - 120
    window = screen[top:top + frame.shape[0], left:left + frame.shape[1]]
    assert window.shape == frame.shape
    below_hud = np.abs(window[HUD_HEIGHT:].astype(int) - frame[HUD_HEIGHT:].astype(int)).mean()
    assert below_hud < 3, below_hud
    hud = window[:HUD_HEIGHT].astype(int)
    assert hud.mean() < frame[:HUD_HEIGHT].mean() * 0.6  # the strip is darkened ...
    assert (hud.min(axis=2) > 200).sum() > 100  # ... and carries white text (FPS and stage times)
