"""The streaming runtime end to end: real ONNX Runtime InferenceSessions, real video files, real processes."""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from stream_helpers import (
    FAULT_STREAM,
    KITTI_VIDEO,
    assert_one_error_line,
    read_video,
    run_stream,
    start_stream,
    tiny_onnx_model,
)

from runtime import model_select
from runtime.artifacts import (
    FP16_ENGINE,
    FP16_INGRAPH_ONNX,
    FP16_ONNX,
    FP32_INGRAPH_ONNX,
    FP32_ONNX,
    INT8_CPU_ONNX,
    INT8_ENGINE,
    INT8_ONNX,
)
from runtime.contract import ModelFileError
from runtime.stream import main

needs_video = pytest.mark.skipif(not KITTI_VIDEO.is_file(), reason=f"KITTI video not found at {KITTI_VIDEO}")
STAGES = {"capture", "preprocess", "inference", "postprocess", "render", "end_to_end"}


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory) -> Path:
    return tiny_onnx_model(tmp_path_factory.getbasetemp())


@needs_video
@pytest.mark.slow
def test_kitti_video_to_mp4_masks_match_the_evaluator(tiny_onnx: Path, tmp_path: Path):
    out, masks, stats_path = tmp_path / "annotated.mp4", tmp_path / "masks", tmp_path / "stats.json"
    result = run_stream(str(KITTI_VIDEO), "--model", str(tiny_onnx), "--backend", "onnxruntime", "--device", "cpu",
                        "--headless", "--output", str(out), "--save-masks", str(masks), "--stats-json", str(stats_path))
    assert result.returncode == 0, result.stderr
    assert "108 read, 108 processed, 0 dropped" in result.stdout
    assert not list(tmp_path.glob(".*partial*")), "temporary video left behind"

    source_frames = read_video(KITTI_VIDEO)
    written = read_video(out)
    assert len(written) == len(source_frames) == 108
    assert written[0].shape == source_frames[0].shape == (376, 1242, 3)

    from kitti.evaluate import predict_sample
    from runtime.backends import open_backend
    from runtime.preprocess import FramePreprocessor

    backend = open_backend(tiny_onnx, "cpu")
    preprocessor = FramePreprocessor(backend.spec)
    equal = total = 0
    road_fractions = []
    for index in range(0, 108, 9):
        _, expected = predict_sample(backend, preprocessor, source_frames[index])
        saved = cv2.imread(str(masks / f"{index:06d}.png"), cv2.IMREAD_UNCHANGED)
        assert saved.shape == (376, 1242) and saved.dtype == np.uint8 and set(np.unique(saved)) <= {0, 255}
        equal += int(((saved == 255) == expected).sum())
        total += expected.size
        road_fractions.append(expected.mean())
        # The annotated frame is the source where there is no road (below the heads-up strip), up to mp4v loss.
        keep = ~expected[30:]
        difference = np.abs(written[index][30:].astype(int) - source_frames[index][30:].astype(int))[keep]
        assert difference.mean() < 12
        tinted = written[index][30:][expected[30:]].astype(int)
        assert (tinted[:, 0] - tinted[:, 1]).mean() > 40  # magenta: blue and red up, green down
    assert len(list(masks.glob("*.png"))) == 108
    assert equal / total >= 0.999
    assert 0.01 < np.mean(road_fractions) < 0.99  # the comparison covered both classes

    stats = json.loads(stats_path.read_text())
    assert (stats["frames_read"], stats["frames_processed"], stats["frames_dropped"]) == (108, 108, 0)
    assert stats["backend"] == "onnxruntime" and stats["precision"] == "fp32" and stats["fps"] > 0
    assert set(stats["stages"]) == STAGES
    for stage in stats["stages"].values():
        assert 0 <= stage["p50_ms"] <= stage["p90_ms"] <= stage["p99_ms"]
    assert "frame_age" not in stats and stats["live"] is False


@needs_video
def test_module_form_and_side_by_side(tiny_onnx: Path, tmp_path: Path):
    import subprocess
    import sys

    from stream_helpers import REPO

    out = tmp_path / "sbs.avi"
    result = subprocess.run([sys.executable, "-m", "runtime.stream", str(KITTI_VIDEO), "--model", str(tiny_onnx),
                             "--headless", "--max-frames", "5", "--view", "side-by-side", "--output", str(out),
                             "--quiet"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    frames = read_video(out)
    assert len(frames) == 5 and frames[0].shape == (376, 2 * 1242, 3)


def test_image_folder_with_an_unreadable_file(tiny_onnx: Path, tmp_path: Path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(3)
    cv2.imwrite(str(images / "a.png"), rng.integers(0, 255, (120, 400, 3), np.uint8))
    cv2.imwrite(str(images / "b.png"), rng.integers(0, 255, (90, 300), np.uint8))  # grayscale
    cv2.imwrite(str(images / "c.png"), rng.integers(0, 65535, (100, 350, 4), np.uint16))  # 16-bit RGBA
    (images / "d.png").write_bytes(b"broken")
    masks = tmp_path / "masks"
    result = run_stream(str(images / "*.png"), "--model", str(tiny_onnx), "--headless",
                        "--save-masks", str(masks), "--output", str(tmp_path / "o.mp4"))
    assert result.returncode == 3
    line = assert_one_error_line(result.stderr)
    assert "1 of 4 images could not be read" in line and "d.png" in line
    assert "d.png: unreadable image" in result.stdout
    shapes = {p.stem: cv2.imread(str(p), cv2.IMREAD_UNCHANGED).shape for p in masks.glob("*.png")}
    assert shapes == {"a": (120, 400), "b": (90, 300), "c": (100, 350)}
    written = read_video(tmp_path / "o.mp4")
    assert len(written) == 3 and written[0].shape == (120, 400, 3)  # later sizes are fitted to the first


def test_synthetic_live_source_drops_and_reports_frame_age(tiny_onnx: Path, tmp_path: Path):
    stats_path = tmp_path / "live.json"
    result = run_stream("synthetic://1242x376@400", "--model", str(tiny_onnx), "--headless",
                        "--max-frames", "40", "--stats-json", str(stats_path), "--output", str(tmp_path / "l.mp4"))
    assert result.returncode == 0, result.stderr
    stats = json.loads(stats_path.read_text())
    assert stats["live"] is True and stats["frames_processed"] == 40
    assert stats["frames_dropped"] > 0
    assert stats["frames_read"] >= stats["frames_processed"] + stats["frames_dropped"]
    age, end_to_end = stats["frame_age"], stats["stages"]["end_to_end"]
    # The newest frame is taken, so its age is about one pipeline pass plus one source period, not a backlog.
    assert age["p50_ms"] <= end_to_end["p50_ms"] + 2.5 + 20, (age, end_to_end)
    assert age["p90_ms"] <= end_to_end["p90_ms"] + 2.5 + 30, (age, end_to_end)


@needs_video
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_signal_leaves_a_playable_video(tiny_onnx: Path, tmp_path: Path, signum: int):
    """Ctrl-C, kill, and a closed terminal (SIGHUP) all finish the video."""
    out = tmp_path / "stopped.mp4"
    process = start_stream(str(KITTI_VIDEO), "--loop", "--model", str(tiny_onnx), "--headless",
                           "--output", str(out), "--quiet")
    deadline = time.monotonic() + 60
    while not any(p.stat().st_size > 50_000 for p in tmp_path.glob(".stopped.*partial.mp4")) and \
            time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        time.sleep(0.1)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert f"stopped by {signal.Signals(signum).name}" in stdout
    assert not list(tmp_path.glob(".stopped.*partial.mp4")) and out.is_file()
    frames = read_video(out)
    capture = cv2.VideoCapture(str(out))
    assert capture.get(cv2.CAP_PROP_FRAME_COUNT) == len(frames) > 0  # the index was written: finalised
    assert frames[-1].shape == (376, 1242, 3)


def _not_ours_onnx(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.usefixtures("faulty_scheme")
def test_faults_give_one_line_and_nonzero_exit(tiny_onnx: Path, tmp_path: Path, capsys):
    empty = tmp_path / "zero.mp4"
    empty.touch()
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(bytes(range(256)) * 300)
    garbage_engine = tmp_path / "other_gpu.engine"
    garbage_engine.write_bytes(b"not an engine built here")
    model = ["--model", str(tiny_onnx), "--headless"]
    cases = [
        ([str(KITTI_VIDEO), "--model", str(tmp_path / "nope.onnx")], "model file not found"),
        ([str(KITTI_VIDEO), "--model", str(_not_ours_onnx(tmp_path / "x.onnx"))], "not a roadseg model"),
        ([str(KITTI_VIDEO), "--model", str(garbage_engine)], "other_gpu.engine"),
        ([str(KITTI_VIDEO), "--model", str(tmp_path / "m.pt")], "model file not found"),
        (["--camera", "61", *model], "camera 61: cannot be opened"),
        ([str(tmp_path / "missing.mp4"), *model], "missing.mp4: video file not found"),
        ([str(empty), *model], "zero.mp4: empty file"),
        ([str(corrupt), *model], "corrupt.mp4: "),
        ([str(tmp_path / "none_*.png"), *model], "no images found"),
        ([*model], "no source: give one or more SOURCE"),
        (["camera:x", *model], "camera:x: expected camera:N"),
        ([str(KITTI_VIDEO), "--backend", "openvino", "--device", "cuda", *model], "OpenVINO runs on the CPU here"),
        ([str(KITTI_VIDEO), "--backend", "onnxruntime", "--precision", "bf16", *model], "--precision bf16"),
        ([str(KITTI_VIDEO), "--push-timeout", "0", *model], "--push-timeout 0"),
        ([str(KITTI_VIDEO), "--model", str(garbage_engine), "--device", "cpu"], "give the .onnx"),
        ([str(KITTI_VIDEO), str(KITTI_VIDEO), "--output", str(tmp_path / "both.mp4"), *model],
         "several sources write a folder"),
        ([str(KITTI_VIDEO), "--alpha", "1.5", *model], "--alpha 1.5"),
        ([str(KITTI_VIDEO), "--output", str(tmp_path / "x.gif"), *model], "unsupported container"),
        (["faulty://64x32@200?stall_after=3", "--stall-timeout", "0.3", *model], "stalled"),
        (["faulty://64x32@200?disconnect_after=3&reconnect=fail", "--reconnect-attempts", "2",
          *model], "disconnected; 2 reconnect attempts failed"),
    ]
    for argv, words in cases:
        code = main(argv)
        err = capsys.readouterr().err
        assert code != 0, argv
        assert words in assert_one_error_line(err), (argv, err)


def test_stalled_source_still_finalises_the_video(tiny_onnx: Path, tmp_path: Path):
    out = tmp_path / "stall.mp4"
    result = run_stream("faulty://320x96@100?stall_after=8", "--stall-timeout", "0.5",
                        "--model", str(tiny_onnx), "--headless", "--output", str(out), script=FAULT_STREAM)
    assert result.returncode == 3
    assert "stalled" in assert_one_error_line(result.stderr)
    processed = int(re.search(r"(\d+) processed", result.stdout)[1])
    assert 1 <= processed <= 8 and len(read_video(out)) == processed


def test_default_model_choice(tmp_path: Path, monkeypatch):
    build, models = tmp_path / "build", tmp_path / "models"
    build.mkdir()
    models.mkdir()
    monkeypatch.setattr("runtime.backends.available_providers", lambda: ["CPUExecutionProvider"])
    monkeypatch.setattr(model_select, "tensorrt_usable", lambda: False)
    with pytest.raises(ModelFileError, match="run `make export`"):
        model_select.default_model(build, models)
    (models / "shipped.onnx").touch()
    assert model_select.default_model(build, models) == models / "shipped.onnx"
    for name in (FP32_ONNX, INT8_ONNX, FP16_ENGINE):
        (build / name).touch()
    assert model_select.default_model(build, models) == build / INT8_ONNX  # no CUDA: no engine
    (build / INT8_CPU_ONNX).touch()
    assert model_select.default_model(build, models) == build / INT8_CPU_ONNX
    monkeypatch.setattr(model_select, "tensorrt_usable", lambda: True)
    (build / INT8_ENGINE).touch()
    assert model_select.default_model(build, models) == build / INT8_ENGINE
    monkeypatch.setattr(model_select, "tensorrt_usable", lambda: False)
    monkeypatch.setattr("runtime.backends.available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    (build / FP16_ONNX).touch()
    assert model_select.default_model(build, models) == build / FP16_ONNX
    (build / FP32_INGRAPH_ONNX).touch()  # on a GPU the in-graph form goes first
    assert model_select.default_model(build, models) == build / FP32_INGRAPH_ONNX
    (build / FP16_INGRAPH_ONNX).touch()
    assert model_select.default_model(build, models) == build / FP16_INGRAPH_ONNX
    monkeypatch.setattr("runtime.backends.available_providers", lambda: ["CPUExecutionProvider"])
    assert model_select.default_model(build, models) == build / INT8_CPU_ONNX  # on a CPU it does not


def test_unreachable_display_is_refused_before_qt_can_abort(tiny_onnx: Path, tmp_path: Path, monkeypatch, capsys):
    """Qt kills the process when it cannot reach the X server, so the runtime checks first: automatic mode
    falls back to headless, --display fails with one line."""
    from runtime.outputs import display_problem, gui_backend

    if gui_backend().upper() == "NONE":
        pytest.skip("this OpenCV has no GUI backend")
    monkeypatch.setenv("DISPLAY", ":97")
    assert "no X server answers at DISPLAY=:97" in display_problem()
    image_dir = tmp_path / "one"
    image_dir.mkdir()
    cv2.imwrite(str(image_dir / "a.png"), np.zeros((50, 80, 3), np.uint8))
    assert main([str(image_dir), "--model", str(tiny_onnx), "--quiet"]) == 0
    assert "1 read, 1 processed" in capsys.readouterr().out
    assert main([str(image_dir), "--model", str(tiny_onnx), "--display"]) == 2
    assert "no X server answers" in assert_one_error_line(capsys.readouterr().err)
    monkeypatch.delenv("DISPLAY")
    assert "DISPLAY is not set" in display_problem()
