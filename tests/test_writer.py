"""Files written off the loop's thread: every frame kept, the right pixels in each, failures end the run in one
line; the heads-up FPS; a frame size the codec refuses is named."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from stream_helpers import KITTI_VIDEO, assert_one_error_line, read_video, run_stream, tiny_onnx_model

from runtime.backends import open_backend
from runtime.outputs import MaskWriter, Outputs, Renderer, VideoFileOutput
from runtime.pipeline import HudLine, run_pipeline
from runtime.sources import SourceOptions, open_video
from runtime.stats import StreamStats

needs_video = pytest.mark.skipif(not KITTI_VIDEO.is_file(), reason=f"KITTI video not found at {KITTI_VIDEO}")
FRAMES = 40


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    return tiny_onnx_model(tmp_path_factory.getbasetemp())


class SlowMaskWriter(MaskWriter):
    """A real PNG writer on a slow disk: 15 ms more per mask, so the writer's queue fills and blocks the loop."""

    def write(self, name: str, mask: np.ndarray) -> None:
        time.sleep(0.015)
        super().write(name, mask)


def stream_to_files(backend, folder: Path, pipelined: bool, background: bool) -> StreamStats:
    video = VideoFileOutput(folder / "out.mp4", 10.0)
    masks = (SlowMaskWriter if background else MaskWriter)(folder / "masks")
    outputs = Outputs(Renderer("overlay", 0.5), video=video, masks=masks, background=background)
    stats = StreamStats(live=False)
    with open_video(KITTI_VIDEO, SourceOptions(max_frames=FRAMES)) as source:
        try:
            run_pipeline(source, backend, outputs, stats, hud=False, pipelined=pipelined)
        finally:
            outputs.close()
    return stats


@needs_video
@pytest.mark.parametrize("pipelined", [False, True])
def test_a_slow_writer_keeps_every_frame_with_the_right_pixels(tiny_onnx: Path, tmp_path: Path, pipelined: bool):
    backend = open_backend(tiny_onnx, "cpu", spinning=False)
    reference = stream_to_files(backend, tmp_path / "inline", pipelined, background=False)
    background = stream_to_files(backend, tmp_path / "background", pipelined, background=True)
    assert reference.frames_processed == background.frames_processed == FRAMES
    # Back-pressure, not drops: the loop waited for the slow writer (for a free queue slot or source buffer)
    # instead of losing frames, so it ran at most at the writer's pace.
    assert background.fps < 1.05 * 1000 / 15, background.fps
    inline_video = read_video(tmp_path / "inline/out.mp4")
    background_video = read_video(tmp_path / "background/out.mp4")
    assert len(inline_video) == len(background_video) == FRAMES
    for index, (expected, written) in enumerate(zip(inline_video, background_video, strict=True)):
        # A buffer recycled before the writer drew on it would show another frame here.
        assert np.array_equal(expected, written), f"frame {index} differs"
    names = sorted(p.name for p in (tmp_path / "background/masks").glob("*.png"))
    assert names == [f"{index:06d}.png" for index in range(FRAMES)]
    for name in names[::7]:
        assert np.array_equal(cv2.imread(str(tmp_path / "inline/masks" / name), cv2.IMREAD_UNCHANGED),
                              cv2.imread(str(tmp_path / "background/masks" / name), cv2.IMREAD_UNCHANGED))


@needs_video
def test_a_failure_in_the_writer_ends_the_run_in_one_line_and_the_video_is_finalised(tiny_onnx: Path,
                                                                                      tmp_path: Path):
    masks, out = tmp_path / "masks", tmp_path / "out.mp4"
    (masks / "000005.png").mkdir(parents=True)  # a folder where the 6th mask must go: the rename fails
    result = run_stream(str(KITTI_VIDEO), "--model", str(tiny_onnx), "--headless", "--quiet",
                        "--save-masks", str(masks), "--output", str(out))
    assert result.returncode != 0
    assert "000005.png" in assert_one_error_line(result.stderr)
    written = read_video(out)
    assert 5 <= len(written) < 108  # what was written before the failure is a playable video
    assert not list(tmp_path.glob(".*partial*"))


@pytest.mark.parametrize("width, height", [(1, 1), (9000, 3000)])
def test_a_frame_size_the_codec_refuses_is_named(tiny_onnx: Path, tmp_path: Path, width: int, height: int):
    image = tmp_path / f"frame_{width}x{height}.png"
    cv2.imwrite(str(image), np.full((height, width, 3), 90, np.uint8))
    result = run_stream(str(image), "--model", str(tiny_onnx), "--headless", "--quiet",
                        "--output", str(tmp_path / "x.mp4"))
    assert result.returncode == 2
    line = assert_one_error_line(result.stderr)
    assert f"cannot encode {width}x{height} frames" in line and "x.mp4" in line, line
    assert not (tmp_path / "x.mp4").exists()


def test_the_heads_up_line_shows_a_frame_rate_from_the_second_frame():
    stats = StreamStats(live=False)
    hud = HudLine(SimpleNamespace(name="onnxruntime", precision="int8", device="cpu"), stats)
    texts = []
    start = time.perf_counter()
    for index in range(20):  # a fast stream: 20 frames well within one HUD refresh period
        end = start + (index + 1) * 0.002
        stats.record((0.1, 0.2, 1.0, 0.2, 0.3), end - 0.0018, end, end - 0.0018)
        texts.append(hud.text())
    assert texts[0].startswith("warming up")
    rates = [float(text.split(" FPS")[0]) for text in texts[1:]]
    assert all(400 <= fps <= 600 for fps in rates), texts  # one result every 2 ms, never "0.0 FPS"
