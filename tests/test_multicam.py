"""Several cameras through one model: `runtime/stream.py SRC SRC ...` as real processes on the real KITTI drive and
synthetic live cameras, and the muxer (runtime/mux.py) on real sources."""

from __future__ import annotations

import json
import re
import shutil
import signal
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from stream_helpers import (
    FAULT_STREAM,
    KITTI_VIDEO,
    TINY_SIZE_HW,
    assert_one_error_line,
    read_video,
    run_stream,
    start_stream,
    tiny_onnx_model,
)

from runtime.multicam import camera_names
from runtime.mux import CameraFeed, FrameMuxer
from runtime.sources import SourceOptions, open_path

needs_video = pytest.mark.skipif(not KITTI_VIDEO.is_file(), reason=f"KITTI video not found at {KITTI_VIDEO}")
FRAMES = 6


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory) -> Path:
    return tiny_onnx_model(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def tiny_batch_1_onnx(tmp_path_factory) -> Path:
    """The same kind of model with its batch axis fixed at 1, as the models shipped in models/ are."""
    from conftest import random_fcn8s

    from export.onnx_export import export_onnx
    from runtime.contract import PreprocessSpec

    path = tmp_path_factory.mktemp("batch1") / "tiny_batch1.onnx"
    model = random_fcn8s()
    export_onnx(model, PreprocessSpec(*TINY_SIZE_HW), {"arch": "fcn8s_vgg16"}, {}, path, dynamic_batch=False)
    return path


@pytest.fixture()
def drives(tmp_path) -> list[Path]:
    """Two cameras' recordings: copies of the real KITTI drive under two names."""
    paths = [tmp_path / "front.mp4", tmp_path / "rear.mp4"]
    for path in paths:
        shutil.copyfile(KITTI_VIDEO, path)
    return paths


@needs_video
def test_two_files_one_batch_per_step_with_per_camera_outputs_equal_to_single_runs(tiny_onnx, drives, tmp_path):
    out, masks, stats = tmp_path / "out", tmp_path / "masks", tmp_path / "stats.json"
    result = run_stream(*map(str, drives), "--model", str(tiny_onnx), "--headless", "--max-frames", str(FRAMES),
                        "--output", str(out), "--save-masks", str(masks), "--stats-json", str(stats), "--quiet",
                        timeout=300)
    assert result.returncode == 0, result.stderr
    summary = json.loads(stats.read_text())
    assert set(summary["cameras"]) == {"front", "rear"}
    assert summary["total"]["frames_processed"] == 2 * FRAMES and summary["total"]["frames_dropped"] == 0
    assert summary["total"]["batch_sizes"] == {"2": FRAMES}  # one inference call per step, both cameras in it
    for name in ("front", "rear"):
        camera = summary["cameras"][name]
        assert camera["frames_processed"] == FRAMES and camera["frame_age"]["p99_ms"] > 0
        assert len(read_video(out / f"{name}.mp4")) == FRAMES
        assert len(list((masks / name).glob("*.png"))) == FRAMES
    assert f"wrote {out / 'front.mp4'} ({FRAMES} frames)" in result.stdout
    # The batched masks are the masks one camera alone gets.
    single = tmp_path / "single"
    alone = run_stream(str(drives[0]), "--model", str(tiny_onnx), "--headless", "--max-frames", str(FRAMES),
                       "--save-masks", str(single), "--quiet", timeout=300)
    assert alone.returncode == 0, alone.stderr
    for png in sorted(single.glob("*.png")):
        assert np.array_equal(cv2.imread(str(png)), cv2.imread(str(masks / "front" / png.name))), png.name


@needs_video
def test_a_batch_1_model_runs_one_call_per_camera_and_says_so_once(tiny_batch_1_onnx, drives, tmp_path):
    stats = tmp_path / "stats.json"
    result = run_stream(*map(str, drives), "--model", str(tiny_batch_1_onnx), "--headless", "--max-frames", "3",
                        "--stats-json", str(stats), "--quiet", timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("model takes 1 frame a call: 2 cameras run as 2 calls a step") == 1
    assert json.loads(stats.read_text())["total"]["batch_sizes"] == {"1": 6}


@needs_video
def test_an_unreadable_source_among_several_is_named_in_one_line_and_the_others_stream(tiny_onnx, drives, tmp_path):
    missing = tmp_path / "side.mp4"
    out = tmp_path / "out"
    result = run_stream(str(drives[0]), str(missing), "--model", str(tiny_onnx), "--headless", "--max-frames",
                        str(FRAMES), "--output", str(out), "--quiet", timeout=300)
    assert result.returncode == 3, result.stderr
    assert f"warning: {missing}: video file not found; the other sources go on" in result.stdout
    assert str(missing) in assert_one_error_line(result.stderr)
    assert len(read_video(out / "front.mp4")) == FRAMES and not (out / "side.mp4").exists()


def test_a_live_camera_that_dies_is_retired_in_one_line_and_the_other_goes_on(tiny_onnx, tmp_path):
    dying = "faulty://320x96@60?disconnect_after=5&reconnect=fail"
    stats = tmp_path / "stats.json"
    result = run_stream("synthetic://320x96@60", dying, "--reconnect-attempts", "1", "--model", str(tiny_onnx),
                        "--headless", "--max-frames", "40", "--stats-json", str(stats), "--quiet", timeout=300,
                        script=FAULT_STREAM)
    assert result.returncode == 3, result.stderr
    retired = [line for line in result.stdout.splitlines() if "retired" in line and line.startswith("warning:")]
    assert len(retired) == 1 and "disconnected; 1 reconnect attempts failed" in retired[0], result.stdout
    summary = json.loads(stats.read_text())
    healthy, dead = summary["cameras"].values()
    # 40 frames taken from the healthy camera: processed, or dropped as stale when the loop was slower than 60 FPS
    # (one more may still be waiting in its slot at the end).
    assert healthy["frames_processed"] + healthy["frames_dropped"] >= 39 and healthy["retired"] is None
    assert 1 <= dead["frames_processed"] <= 5 and "disconnected" in dead["retired"]
    assert "disconnected" in assert_one_error_line(result.stderr)


@needs_video
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_finalises_every_cameras_video(tiny_onnx, drives, tmp_path, signum):
    out = tmp_path / "out"
    process = start_stream(*map(str, drives), "--loop", "--model", str(tiny_onnx), "--headless",
                           "--output", str(out), "--quiet")
    def growing(name: str) -> bool:  # the writer's unique temporary beside DIR/<name>.mp4 holds some frames
        return any(p.stat().st_size > 50_000 for p in out.glob(f".{name}.*partial.mp4"))

    deadline = time.monotonic() + 240
    while not (growing("front") and growing("rear")):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no camera video grew within 240 s"
        time.sleep(0.2)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr and f"stopped by {signal.Signals(signum).name}" in stdout
    for name in ("front", "rear"):
        video = out / f"{name}.mp4"
        assert video.is_file() and not list(out.glob(f".{name}.*partial.mp4"))
        frames = read_video(video)
        assert cv2.VideoCapture(str(video)).get(cv2.CAP_PROP_FRAME_COUNT) == len(frames) > 0  # index written


@pytest.mark.usefixtures("faulty_scheme")
def test_a_stalled_camera_delays_the_others_by_at_most_the_push_timeout():
    options = SourceOptions(stall_timeout=30.0)
    feeds = [CameraFeed("steady", open_path("synthetic://64x32@100", options)),
             CameraFeed("stuck", open_path("faulty://64x32@100?stall_after=2", options))]
    muxer = FrameMuxer(feeds, push_timeout=0.02)
    try:
        taken, gaps = [], []
        last = time.perf_counter()
        for _ in range(20):
            batch = muxer.next_batch()
            now = time.perf_counter()
            taken.append([item.camera.name for item in batch])
            gaps.append(now - last)
            last = now
            for item in batch:
                item.camera.source.release(item.frame)
        names = [name for batch in taken for name in batch]
        # The stuck camera's 2 frames (taken, or one dropped as stale when a loaded machine was late), then batches
        # of the steady camera alone: counts rather than positions.
        assert names.count("stuck") + sum(feeds[1].all_drops().values()) == 2 and names.count("stuck") >= 1
        assert names.count("steady") >= 18 and all(len(b) <= 2 for b in taken)
        assert sum(gaps) < 25.0
    finally:
        muxer.close()
        for feed in feeds:
            feed.source.close()


def test_live_cameras_faster_than_the_loop_drop_only_stale_frames_counted_per_camera():
    feeds = [CameraFeed(f"cam{i}", open_path("synthetic://64x32@200", SourceOptions())) for i in range(3)]
    muxer = FrameMuxer(feeds, push_timeout=0.01)
    try:
        for _ in range(15):
            for item in muxer.next_batch():
                time.sleep(0.01)  # a loop slower than the 200 FPS cameras: 3 x 10 ms a step
                item.camera.source.release(item.frame)
    finally:
        muxer.close()
        for feed in feeds:
            feed.source.close()
    for feed in feeds:
        drops = feed.all_drops()
        assert drops["stale"] > 0 and drops["queue_full"] == 0, (feed.name, drops)


def test_camera_names_are_short_unique_and_safe_for_file_names():
    assert camera_names(["runs/front.mp4", "camera 0", "rtsp://10.0.0.2/live/ch1", "data/frames/", "x/front.avi",
                         "frames/*.png"]) == ["front", "camera0", "10.0.0.2_live_ch1", "frames", "front-2", "frames-2"]
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", name) for name in camera_names(["../../etc/passwd", "a b"]))
