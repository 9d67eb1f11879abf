"""fleet/ on a real local Ray cluster (2 CPUs, no dashboard, no usage statistics, loopback only), shared by
every test here: Ray Data batch masks against the slim runtime's, a killed actor, resuming, bad input.

Skipped where Ray is not installed, except in CI: .ci/run sets ROADSEG_REQUIRE_RAY=1 after `make setup-fleet`,
and there a missing Ray fails these tests instead of skipping them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from stream_helpers import KITTI_VIDEO, REPO, read_video, run_stream

if importlib.util.find_spec("ray") is None:
    if os.environ.get("ROADSEG_REQUIRE_RAY") == "1":
        raise RuntimeError("ROADSEG_REQUIRE_RAY=1 but Ray is not installed (make setup-fleet)")
    pytest.skip("Ray is not installed (make setup-fleet)", allow_module_level=True)

from conftest import run_cli  # noqa: E402

from fleet import batch as fleet_batch  # noqa: E402
from fleet.cluster import connect, disconnect  # noqa: E402
from fleet.outputs import MASKS_DIR, STATS_NAME  # noqa: E402

MODEL = REPO / "models" / "fcn8s_vgg16_w0.25_cpu.int8_cpu.onnx"
# Three short drives cut from the real KITTI video (frame ranges), different lengths so segments end unevenly.
CLIPS = {"drive_a": (0, 20), "drive_b": (30, 55), "drive_c": (60, 108)}
SEGMENT_FRAMES = 8
SERVING_BATCH_WAIT_MS = 20.0
BACKEND = "onnxruntime"  # both sides on the same backend: OpenVINO's masks differ from ONNX Runtime's in a few pixels

needs_video = pytest.mark.skipif(not KITTI_VIDEO.is_file(), reason=f"KITTI video not found at {KITTI_VIDEO}")


@pytest.fixture(scope="module")
def cluster():
    """One local cluster for the module: starting Ray costs seconds."""
    info = connect(num_cpus=2, object_store_mb=256)
    yield info
    disconnect()


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("drives")
    frames = read_video(KITTI_VIDEO)
    height, width = frames[0].shape[:2]
    for name, (first, end) in CLIPS.items():
        writer = cv2.VideoWriter(str(folder / f"{name}.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (width, height))
        for frame in frames[first:end]:
            writer.write(frame)
        writer.release()
    return folder


@pytest.fixture(scope="module")
def runtime_masks(clips, tmp_path_factory) -> dict[str, Path]:
    """Each clip streamed by runtime/stream.py, the single-machine runtime, as a user runs it."""
    masks = {}
    for name in CLIPS:
        out = tmp_path_factory.mktemp(f"stream_{name}")
        result = run_stream(str(clips / f"{name}.mp4"), "--model", str(MODEL), "--backend", BACKEND, "--headless",
                            "--quiet", "--save-masks", str(out))
        assert result.returncode == 0, result.stderr
        masks[name] = out
    return masks


def batch_args(inputs: list[Path], out: Path, *extra: str):
    return fleet_batch.parse_args([*map(str, inputs), "--out", str(out), "--model", str(MODEL), "--no-progress",
                                   "--segment-frames", str(SEGMENT_FRAMES), "--backend", BACKEND, *extra])


def assert_masks_equal(fleet_masks: Path, runtime_masks: Path) -> int:
    expected = sorted(p.name for p in runtime_masks.glob("*.png"))
    assert sorted(p.name for p in fleet_masks.glob("*.png")) == expected
    for name in expected:
        ours = cv2.imread(str(fleet_masks / name), cv2.IMREAD_UNCHANGED)
        theirs = cv2.imread(str(runtime_masks / name), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(ours, theirs), f"{fleet_masks / name} differs from the runtime's"
    assert not [p.name for p in fleet_masks.parent.rglob(".*")], "temporary files left behind"
    return len(expected)


@needs_video
def test_batch_masks_equal_the_runtime_and_a_rerun_skips_finished_videos(cluster, clips, runtime_masks, tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all" * 64)
    out = tmp_path / "out"
    summary = fleet_batch.run_batch(batch_args([clips, broken], out))

    assert set(summary["videos"]) == set(CLIPS)
    assert list(summary["failed"]) == [str(broken)]  # the run went on past it, and says why in one line
    assert "cannot be opened as a video" in summary["failed"][str(broken)]
    assert "\n" not in summary["failed"][str(broken)]
    assert json.loads((out / "summary.json").read_text()) == summary
    for name, (first, end) in CLIPS.items():
        assert assert_masks_equal(out / name / MASKS_DIR, runtime_masks[name]) == end - first
        stats = json.loads((out / name / STATS_NAME).read_text())
        assert stats["complete"] is True and stats["frames"] == end - first and stats["duplicates_delivered"] == 0

    written = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    again = fleet_batch.run_batch(batch_args([clips, broken], out))
    assert sorted(again["skipped_finished"]) == sorted(CLIPS) and again["videos"] == {} and again["frames"] == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == written  # nothing rewritten

    (out / "drive_b" / STATS_NAME).unlink()  # as if the run had stopped inside drive_b
    resumed = fleet_batch.run_batch(batch_args([clips], out))
    assert list(resumed["videos"]) == ["drive_b"] and sorted(resumed["skipped_finished"]) == ["drive_a", "drive_c"]
    assert_masks_equal(out / "drive_b" / MASKS_DIR, runtime_masks["drive_b"])


@needs_video
@pytest.mark.parametrize("segment_frames", [32, fleet_batch.DEFAULT_SEGMENT_FRAMES])
def test_long_segments_leave_the_actor_in_blocks_with_every_mask_and_the_overlay(cluster, clips, runtime_masks,
                                                                                 tmp_path, segment_frames):
    """Segments longer than an output block: drive_c (48 frames) leaves as 32 + 16, or (segments of 32) as a
    segment whose last frame closes its block, then a segment that runs to the end of the file."""
    from runtime.sources import count_video_frames

    out = tmp_path / "out"
    args = batch_args([clips], out, "--overlay")
    args.segment_frames = segment_frames
    summary = fleet_batch.run_batch(args)
    assert set(summary["videos"]) == set(CLIPS) and summary["failed"] == {} and summary["steady_fps"] > 0
    for name, (first, end) in CLIPS.items():
        assert assert_masks_equal(out / name / MASKS_DIR, runtime_masks[name]) == end - first
        assert count_video_frames(out / name / "overlay.mp4") == end - first


def mask_actor_pids() -> set[int]:
    """Ray names its worker processes after the actor they run (ray::MapWorker(MapBatches(MaskActor)))."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"MaskActor" in (entry / "cmdline").read_bytes():
                    pids.add(int(entry.name))
            except OSError:
                continue
    return pids


@needs_video
def test_an_actor_killed_mid_run_is_restarted_and_no_frame_is_lost_or_written_twice(cluster, clips, runtime_masks,
                                                                                    tmp_path):
    out = tmp_path / "out"
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(fleet_batch.run_batch(batch_args([clips], out))))
    runner.start()
    killed = None
    deadline = time.monotonic() + 120
    while runner.is_alive() and time.monotonic() < deadline:
        # Once the first masks are written the actor is busy with later segments: kill it there.
        if killed is None and len(list((out / "drive_a" / MASKS_DIR).glob("*.png"))) >= SEGMENT_FRAMES:
            pids = mask_actor_pids()
            assert len(pids) == 1
            killed = pids.pop()
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.02)
    runner.join(timeout=120)
    assert killed is not None, "the run ended before the actor could be killed"
    assert set(result["videos"]) == set(CLIPS) and result["failed"] == {}
    assert killed not in mask_actor_pids()
    for name in CLIPS:
        assert_masks_equal(out / name / MASKS_DIR, runtime_masks[name])
        assert json.loads((out / name / STATS_NAME).read_text())["duplicates_delivered"] == 0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@needs_video
def test_an_unreachable_cluster_fails_in_one_line_naming_its_address(clips, tmp_path):
    address = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = run_cli("-m", "fleet.batch", str(clips / "drive_a.mp4"), "--out", str(tmp_path / "out"), "--model",
                     str(MODEL), "--address", address, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and address in result.stderr, result.stderr
    assert time.monotonic() - started < 60


def test_bad_arguments_fail_in_one_line(tmp_path):
    result = run_cli("-m", "fleet.batch", str(tmp_path / "nothing_here"), "--out", str(tmp_path / "out"),
                     "--model", str(tmp_path / "missing.onnx"))
    assert result.returncode == 2 and "missing.onnx" in result.stderr and result.stderr.count("\n") == 1


# ------------------------------------------------------------------------------------------------ serve


@pytest.fixture(scope="module")
def serving(cluster):
    """The deployment on the shared cluster, HTTP on a free loopback port, ONNX Runtime like the references. A
    batch-1 model waits for no fuller batch by default; here partial batches wait SERVING_BATCH_WAIT_MS, so that
    frames sent together form batches however the requests happen to be spread out on a loaded machine."""
    from fleet import serve as fleet_serve

    port = free_port()
    handle = fleet_serve.start(MODEL, port, backend=BACKEND, max_batch=8, batch_wait_ms=SERVING_BATCH_WAIT_MS)
    yield handle, port
    from ray import serve

    serve.shutdown()


@pytest.fixture(scope="module")
def kitti_frames() -> list[np.ndarray]:
    from runtime.sources import read_video_frames

    return read_video_frames(KITTI_VIDEO, 24)


def runtime_mask(frame: np.ndarray) -> np.ndarray:
    """The slim runtime's steps for one frame: its preprocessor, ONNX Runtime, its postprocessor."""
    from runtime.backends import open_backend
    from runtime.pipeline import frame_preprocessor
    from runtime.postprocess import MaskPostprocessor

    backend = open_backend(MODEL, BACKEND)
    logits = backend.infer(frame_preprocessor(backend)(frame))
    return MaskPostprocessor(backend.spec.road_index)(logits[0], frame.shape[:2]).copy()


@needs_video
def test_serve_returns_every_cameras_frames_in_order_with_the_runtimes_masks(serving, kitti_frames):
    from fleet.frames import decode_mask, encode_frame
    from fleet.loadgen import run_load

    handle, _port = serving
    frames = [encode_frame(frame, "png") for frame in kitti_frames]  # lossless: the replica sees these pixels
    # Bounded, and generous with in-flight frames and grace: a loaded CI machine must not turn slowness into drops.
    report, logs = run_load(handle, frames, cameras=3, fps=3.0, seconds=2.0, max_in_flight=64, grace_s=120.0,
                            keep_masks=True)
    assert report["dropped"] == report["lost"] == report["errors"] == 0
    assert report["in_order"]
    expected = {}
    for camera, log in enumerate(logs):
        assert log.answered_seqs == list(range(6)), f"camera {camera}: {log.answered_seqs}"
        for seq, mask_png in log.masks.items():
            index = (camera * 13 + seq) % len(frames)
            if index not in expected:
                expected[index] = runtime_mask(kitti_frames[index])
            assert np.array_equal(decode_mask(mask_png), expected[index]), f"camera {camera} frame {seq}"
    assert sum(int(size) * count for size, count in report["batch_histogram"].items()) == 18


@needs_video
def test_serve_forms_batches_when_frames_wait_and_says_its_batch_sizes(serving, kitti_frames):
    from fleet.frames import encode_frame

    handle, _port = serving
    data, shape = encode_frame(kitti_frames[0], "raw")
    handle.reset_histogram.remote().result()
    responses = [handle.segment.remote({"frame": data, "shape": shape, "camera": i, "seq": 0}) for i in range(8)]
    answers = [response.result(timeout_s=120) for response in responses]
    histogram = handle.batch_histogram.remote().result()
    assert sum(size * count for size, count in histogram.items()) == 8
    assert max(histogram) > 1, histogram  # eight frames waiting: one model call at a time, several frames a batch
    assert max(answer["batch_size"] for answer in answers) == max(histogram)
    import onnxruntime

    first = onnxruntime.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"]).get_inputs()[0].shape[0]
    # The limit is read from the model's input: a fixed batch (1 today) or a symbolic dimension.
    info = handle.info.remote().result()
    assert info["model_batch_limit"] == (first if isinstance(first, int) else "dynamic")
    assert info["batch_wait_ms"] == SERVING_BATCH_WAIT_MS


def test_a_partial_batch_waits_only_where_a_fuller_batch_costs_less_a_frame():
    """A model fixed at batch 1, or a symbolic batch on a CPU (a batch costs the sum of its frames), gains nothing
    from a fuller batch: no wait. A symbolic batch on a GPU, or a fixed batch N > 1 (padded anyway), waits."""
    from fleet.segmenter import DYNAMIC
    from fleet.serve import DEFAULT_BATCH_WAIT_MS, serving_batch_wait_ms

    gpu = "NVIDIA H100 80GB HBM3"
    assert serving_batch_wait_ms(1, None, "cpu") == serving_batch_wait_ms(1, None, gpu) == 0.0
    assert serving_batch_wait_ms(DYNAMIC, None, "cpu") == 0.0
    assert serving_batch_wait_ms(DYNAMIC, None, gpu) == serving_batch_wait_ms(4, None, "cpu") == DEFAULT_BATCH_WAIT_MS
    assert DEFAULT_BATCH_WAIT_MS > 0
    assert serving_batch_wait_ms(1, 7.5, "cpu") == serving_batch_wait_ms(DYNAMIC, 0.0, gpu) + 7.5 == 7.5


def test_an_actor_batches_frames_of_a_symbolic_batch_model_on_a_gpu_only():
    """On a CPU a batch costs the sum of its frames and stalls the reader and encoder: one frame a call, as the
    runtime's loop; on a GPU a symbolic batch takes several; a fixed batch always takes its size."""
    from fleet.segmenter import DYNAMIC

    assert fleet_batch.frames_per_call(DYNAMIC, "cpu") == 1
    assert fleet_batch.frames_per_call(DYNAMIC, "NVIDIA H100 80GB HBM3") == fleet_batch.GPU_FRAMES_PER_CALL > 1
    assert fleet_batch.frames_per_call(4, "cpu") == fleet_batch.frames_per_call(4, "NVIDIA H100 80GB HBM3") == 4
    assert fleet_batch.frames_per_call(1, "cpu") == 1


@needs_video
def test_serve_http_ingress_takes_png_and_raw_frames_and_refuses_garbage_in_one_line(serving, kitti_frames):
    import urllib.error
    import urllib.request

    from fleet.frames import decode_mask, encode_frame

    _handle, port = serving
    url = f"http://127.0.0.1:{port}/segment"
    expected = runtime_mask(kitti_frames[5])
    for encoding in ("png", "raw"):
        data, shape = encode_frame(kitti_frames[5], encoding)
        headers = {"X-Camera": "front", "X-Seq": "5", **({"X-Shape": ",".join(map(str, shape))} if shape else {})}
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=120) as answer:
            assert answer.headers["X-Camera"] == "front" and answer.headers["X-Seq"] == "5"
            assert np.array_equal(decode_mask(answer.read()), expected)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(urllib.request.Request(url, data=b"\x00" * 100), timeout=120)
    assert refused.value.code == 400
    assert refused.value.read().decode().count("\n") == 1
