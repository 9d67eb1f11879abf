"""Frame sources, on real files and a synthetic live camera: ordering, dropping, frame age, faults."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from fault_sources import FaultyReader
from stream_helpers import KITTI_VIDEO, write_video

from runtime.sources import (
    LIVE_QUEUE_DEPTH,
    PREFETCH_DEPTH,
    LiveSource,
    PrefetchSource,
    Reader,
    SourceError,
    SourceOptions,
    csi_pipeline,
    has_gstreamer,
    open_camera,
    open_images,
    open_path,
    open_uri,
    open_video,
)

needs_video = pytest.mark.skipif(not KITTI_VIDEO.is_file(), reason=f"KITTI video not found at {KITTI_VIDEO}")


def drain(source, per_frame_s: float = 0.0, limit: int = 10_000) -> list:
    """Read to the end; returns (index, name, shape, buffer id, age at hand-over) per frame."""
    seen = []
    with source:
        while len(seen) < limit:
            frame = source.read()
            if frame is None:
                break
            seen.append((frame.index, frame.name, frame.image.shape, id(frame.image),
                         time.perf_counter() - frame.timestamp))
            if per_frame_s:
                time.sleep(per_frame_s)
    return seen


@needs_video
def test_video_file_every_frame_in_order_through_reused_buffers():
    source = open_video(KITTI_VIDEO, SourceOptions())
    assert isinstance(source, PrefetchSource) and not source.live and source.fps == pytest.approx(10.0)
    seen = drain(source)
    assert [s[0] for s in seen] == list(range(108))
    assert seen[0][1] == "000000" and seen[-1][1] == "000107"
    assert {s[2] for s in seen} == {(376, 1242, 3)}
    assert source.frames_read == 108 and source.frames_dropped == 0 and source.error is None
    # A small pool of buffers is recycled: no allocation per frame.
    assert len({s[3] for s in seen}) <= PREFETCH_DEPTH + 1


@needs_video
def test_video_max_frames_and_loop():
    assert len(drain(open_video(KITTI_VIDEO, SourceOptions(max_frames=7)))) == 7
    seen = drain(open_video(KITTI_VIDEO, SourceOptions(loop=True, max_frames=130)))
    assert len(seen) == 130 and seen[-1][1] == "000129"


def test_video_file_faults(tmp_path: Path):
    empty = tmp_path / "empty.mp4"
    empty.touch()
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(1).integers(0, 255, 50_000, np.uint8).tobytes())
    cases = {tmp_path / "missing.mp4": "not found", empty: "empty file", corrupt: "corrupt"}
    for path, words in cases.items():
        with pytest.raises(SourceError, match=words) as info:
            open_video(path, SourceOptions())
        assert str(path) in str(info.value)


def test_camera_that_cannot_be_opened():
    with pytest.raises(SourceError, match="camera 57: cannot be opened"):
        open_camera(57, SourceOptions())


def test_image_folder_mixed_formats_and_unreadable_files(tmp_path: Path, capsys):
    rng = np.random.default_rng(2)
    color = rng.integers(0, 255, (40, 60, 3), np.uint8)
    cv2.imwrite(str(tmp_path / "a_color.png"), color)
    cv2.imwrite(str(tmp_path / "b_gray.png"), color[:, :, 0])
    cv2.imwrite(str(tmp_path / "c_rgba.png"), np.dstack([color, np.full((40, 60), 128, np.uint8)]))
    cv2.imwrite(str(tmp_path / "d_16bit.png"), color.astype(np.uint16) * 257)
    cv2.imwrite(str(tmp_path / "e_other_size.jpg"), rng.integers(0, 255, (30, 50, 3), np.uint8))
    (tmp_path / "f_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "g_text.jpg").write_text("hello")
    (tmp_path / "notes.txt").write_text("ignored: not an image suffix")
    source = open_images(str(tmp_path), SourceOptions())
    seen = drain(source)
    assert [s[1] for s in seen] == ["a_color", "b_gray", "c_rgba", "d_16bit", "e_other_size"]
    assert [s[2] for s in seen] == [(40, 60, 3)] * 4 + [(30, 50, 3)]
    assert source.reader.unreadable == [str(tmp_path / "f_corrupt.png"), str(tmp_path / "g_text.jpg")]
    out = capsys.readouterr().out
    assert "f_corrupt.png: unreadable image" in out and "g_text.jpg: unreadable image" in out

    # The 16-bit and gray frames become the same 8-bit BGR as the colour one.
    frames = []
    with open_images(str(tmp_path / "[abd]_*.png"), SourceOptions()) as glob_source:
        while (frame := glob_source.read()) is not None:
            frames.append(frame.image.copy())
    assert np.array_equal(frames[0], color) and np.array_equal(frames[2], color)
    assert np.array_equal(frames[1][:, :, 1], color[:, :, 0])

    with pytest.raises(SourceError, match="no images found"):
        open_images(str(tmp_path / "nothing_*.png"), SourceOptions())


def test_fast_live_source_drops_stale_frames_and_keeps_age_bounded():
    """A 400 FPS camera into a pipeline that takes 20 ms a frame: the loop falls behind, so frames older than
    the budget (one camera interval, 2.5 ms, by default) are dropped and counted as stale; what is handed
    over is never a backlog (a queue of every frame would reach ~0.5 s here)."""
    source = open_uri("synthetic://320x96@400", SourceOptions(max_frames=25))
    assert isinstance(source, LiveSource) and source.live and source.max_age == pytest.approx(0.0025)
    drain_started = time.perf_counter()
    seen = drain(source, per_frame_s=0.020)
    drain_ms = (time.perf_counter() - drain_started) * 1000
    assert len(seen) == 25
    assert source.frames_dropped > 25, (source.frames_read, source.frames_dropped)
    assert source.frames_dropped == sum(source.drops.values()) and source.drops["stale"] > 25, source.drops
    assert source.frames_read >= len(seen) + source.frames_dropped
    ages_ms = np.array([s[4] for s in seen[1:]]) * 1000
    # Against this run's own pace, not a fixed figure: a backlog would age frames by up to the whole drain time,
    # the freshest-frame policy by about one loop iteration.
    assert ages_ms.max() < drain_ms / 4 and np.median(ages_ms) < drain_ms / 25, (ages_ms, drain_ms)
    indices = [s[0] for s in seen]
    assert indices == sorted(indices) and indices[-1] - indices[0] > 2 * len(seen)
    assert len({s[3] for s in seen}) <= LIVE_QUEUE_DEPTH + 2  # buffers are recycled, not allocated per frame


class BurstReader(Reader):
    """A network camera's delivery pattern (a stand-in; the real one is in test_network_stream.py): bursts of
    4 frames at once every 200 ms, 20 FPS on average, frames numbered in their names."""

    def __init__(self, fps: float = 20.0, burst: int = 4, frames: int = 40) -> None:
        super().__init__("burst", fps)
        self._burst, self._frames, self._count = burst, frames, 0
        self._next = time.perf_counter()

    def read(self, buffer):
        if self._count == self._frames:
            return None
        if self._count % self._burst == 0:
            self._next += self._burst / self.fps
            time.sleep(max(0.0, self._next - time.perf_counter()))
        image = buffer if buffer is not None else np.empty((32, 64, 3), np.uint8)
        image.fill(self._count % 256)
        self._count += 1
        return image, f"{self._count - 1:06d}"


def test_bursty_live_source_keeps_every_frame_the_loop_can_process_in_time():
    """A loop taking 10 ms a frame has headroom over a 20 FPS source, but the source delivers 4 frames at once:
    'keep only the newest' would drop 3 of every 4. Within the default budget (one interval, 50 ms) the
    burst's frames wait 0-30 ms, so every frame is processed, in order."""
    source = LiveSource(BurstReader, reconnect=False)
    assert source.max_age == pytest.approx(0.05)
    seen = drain(source, per_frame_s=0.010)
    names = [int(s[1]) for s in seen]
    assert source.frames_dropped == 0 and names == list(range(40)), (source.drops, names)


def test_a_tight_budget_drops_stale_frames_but_never_the_newest():
    """With a 15 ms budget the same loop falls behind each burst: the frames that would wait longer are dropped
    as stale, while each burst's last frame (the freshest there is) is always processed."""
    source = LiveSource(BurstReader, reconnect=False, max_age=0.015)
    names = {int(s[1]) for s in drain(source, per_frame_s=0.010)}
    assert source.frames_dropped == source.drops["stale"] > 0 and source.drops["queue_full"] == 0, source.drops
    assert {4 * burst + 3 for burst in range(10)} <= names
    assert source.frames_read == len(names) + source.frames_dropped == 40


@pytest.mark.usefixtures("faulty_scheme")
def test_live_source_that_stalls_ends_cleanly():
    source = open_uri("faulty://64x32@200?stall_after=5", SourceOptions(stall_timeout=0.5))
    started = time.perf_counter()
    seen = drain(source)
    assert len(seen) <= 5 and seen
    assert "stalled (no frame for 0.5 s)" in source.error
    assert time.perf_counter() - started < 60  # ends, rather than waiting forever (not a speed check)


@pytest.mark.usefixtures("faulty_scheme")
def test_live_source_reconnects_with_backoff_then_gives_up():
    ok = open_uri("faulty://64x32@500?disconnect_after=4", SourceOptions(max_frames=10, backoff_start=0.01))
    assert len(drain(ok)) == 10 and ok.reconnects >= 2 and ok.error is None

    lost = LiveSource(_failing_after_first_open(), reconnect_attempts=3, backoff_start=0.05)
    started = time.perf_counter()
    seen = drain(lost)
    elapsed = time.perf_counter() - started
    assert len(seen) <= 4
    assert "disconnected; 3 reconnect attempts failed" in lost.error
    assert 0.05 + 0.1 + 0.2 <= elapsed < 60  # the backoff doubles between attempts (the upper bound: no hang)


def _failing_after_first_open():
    opened = []

    def factory():
        if opened:
            raise SourceError("synthetic: cannot be opened")
        opened.append(1)
        return FaultyReader(64, 32, 500, disconnect_after=4)

    return factory


def test_realtime_file_drops_when_the_pipeline_is_slower(tmp_path: Path):
    video = write_video(tmp_path / "fast.mp4", frames=30, size_wh=(64, 48), fps=100)
    every = drain(open_video(video, SourceOptions()), per_frame_s=0.03)
    assert len(every) == 30
    paced = open_video(video, SourceOptions(realtime=True))
    assert paced.live
    seen = drain(paced, per_frame_s=0.03)
    assert 3 <= len(seen) < 30 and paced.frames_dropped > 0 and paced.error is None


def test_uri_forms(tmp_path: Path):
    pipeline = csi_pipeline(1)
    assert pipeline.startswith("nvarguscamerasrc sensor-id=1 ! ") and pipeline.endswith("appsink drop=true "
                                                                                          "max-buffers=1 sync=false")
    if not has_gstreamer():
        with pytest.raises(SourceError, match="no GStreamer support"):
            open_uri("csi://0", SourceOptions())
        with pytest.raises(SourceError, match="no GStreamer support"):
            open_uri("videotestsrc ! videoconvert ! appsink", SourceOptions())
    with pytest.raises(SourceError, match="unknown source"):
        open_uri("gopher://x", SourceOptions())
    with pytest.raises(SourceError, match="camera 63"):
        open_path("63", SourceOptions())
    cv2.imwrite(str(tmp_path / "x.png"), np.zeros((8, 8, 3), np.uint8))
    assert len(drain(open_path(str(tmp_path), SourceOptions()))) == 1
    assert len(drain(open_path("synthetic://32x16@100", SourceOptions(max_frames=3)))) == 3
