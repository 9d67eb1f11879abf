"""Nothing lost, nothing trusted: a generated corpus of careless or hostile command lines, through the entry points.

Each run draws a fresh seed (printed at the start of every test and in every failure; ROADSEG_CORPUS_SEED=N replays
it) and from it the cases of each class: outputs aimed at inputs or at each other, at device nodes, FIFOs and
folders; full and read-only disks; two runs sharing an output; sources that fail part-way or claim an absurd frame
rate; artifacts (sidecars, engines, manifests, accuracy tables, checkpoints, ONNX graphs) that lie about themselves.
What must hold: exit non-zero with one `error:` line naming the path, no traceback, and every input and every
earlier good file byte-for-byte as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import resource
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from conftest import REPO, run_cli
from entry_points import HOSTILE_KINDS, write_hostile
from entry_points import call_main as call_entry_point
from onnx import TensorProto, helper
from stream_helpers import STREAM, assert_one_error_line, read_video, run_stream, tiny_onnx_model, write_video

from runtime.artifacts import ACCURACY_JSON_FILE, FP16_ENGINE, FP32_ENGINE, FP32_ONNX
from runtime.contract import PREPROCESS_KEY, PreprocessSpec

SEED = int(os.environ.get("ROADSEG_CORPUS_SEED", random.SystemRandom().randrange(2**32)))


def call_main(main: Callable[[list[str]], int], argv: list[str], case: str) -> tuple[int, str]:
    return call_entry_point(main, argv, f"[seed {SEED}] {case}")


VIDEO_FRAMES = 12


@pytest.fixture(autouse=True)
def print_seed():
    print(f"corpus seed {SEED} (replay: ROADSEG_CORPUS_SEED={SEED})")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    return tiny_onnx_model(tmp_path_factory.getbasetemp())


@pytest.fixture()
def scene(tmp_path: Path, tiny_onnx: Path) -> dict[str, Path]:
    """A run's inputs and the things a careless path can point at, each in its own copy."""
    model = tmp_path / "model.onnx"
    model.write_bytes(tiny_onnx.read_bytes())
    video = write_video(tmp_path / "drive.mp4", VIDEO_FRAMES, (320, 96), 10.0)
    images = tmp_path / "frames"
    images.mkdir()
    for index, frame in enumerate(read_video(video)[:3]):
        cv2.imwrite(str(images / f"f{index}.png"), frame)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    (tmp_path / "folder").mkdir()
    os.symlink(video, tmp_path / "link-to-drive.mp4")
    os.link(model, tmp_path / "hardlink-to-model.onnx")
    return {"model": model, "video": video, "images": images, "image": images / "f1.png", "fifo": fifo,
            "folder": tmp_path / "folder", "symlink": tmp_path / "link-to-drive.mp4",
            "hardlink": tmp_path / "hardlink-to-model.onnx", "tmp": tmp_path}


def inputs_snapshot(scene: dict[str, Path]) -> dict[str, str]:
    files = [scene["model"], scene["video"], *sorted(scene["images"].iterdir())]
    return {str(path): digest(path) for path in files}


# ------------------------------------------------------------------------------------------------- outputs

def stream_output_cases(scene: dict[str, Path], rng: random.Random) -> list[tuple[str, list[str], str]]:
    """(case, stream arguments, text the error line must hold), drawn from every class of bad output path."""
    other = scene["tmp"] / "annotated.mp4"
    file_targets = [("the source video", scene["video"], "is the source input"),
                    ("a symlink to the source", scene["symlink"], "is the source input"),
                    ("the model", scene["model"], "is the --model input"),
                    ("a hard link to the model", scene["hardlink"], "is the --model input"),
                    ("/dev/null", Path("/dev/null"), "is a character device"),
                    ("a FIFO", scene["fifo"], "is a FIFO"),
                    ("a folder", scene["folder"], "is a folder")]
    cases = []
    for name, target, expected in file_targets:
        flag = rng.choice(["--output", "--stats-json"]) if target.suffix != ".onnx" else "--stats-json"
        if flag == "--output" and target.suffix not in (".mp4", ""):
            flag = "--stats-json"
        cases.append((f"{flag} onto {name}", [str(scene["video"]), flag, str(target)], expected))
    cases.append(("--stats-json onto the --output video",
                  [str(scene["video"]), "--output", str(other), "--stats-json", str(other)], "is also the --output"))
    cases.append(("--save-masks onto the images folder read", [str(scene["images"]), "--save-masks",
                                                               str(scene["images"])], "input folder"))
    cases.append(("--stats-json onto an input image", [str(scene["images"]), "--stats-json",
                                                       str(scene["image"])], "is the source input"))
    masks = scene["tmp"] / "m"
    cases.append(("--output inside the --save-masks folder",
                  [str(scene["video"]), "--save-masks", str(masks), "--output", str(masks / "o.mp4")],
                  "--save-masks folder"))
    rng.shuffle(cases)
    return cases


def test_outputs_never_replace_inputs_device_nodes_or_each_other(scene: dict[str, Path]):
    from runtime.stream import main

    rng = random.Random(SEED)
    before = inputs_snapshot(scene)
    for case, argv, expected in stream_output_cases(scene, rng):
        code, stderr = call_main(main, [*argv, "--model", str(scene["model"]), "--headless", "--quiet"], case)
        assert code == 2 and expected in stderr, f"[seed {SEED}] {case}: exit {code}, {stderr[-500:]}"
        assert inputs_snapshot(scene) == before, f"[seed {SEED}] {case}: an input changed"
    assert stat.S_ISFIFO(os.stat(scene["fifo"]).st_mode) and stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert scene["folder"].is_dir() and not list(scene["tmp"].glob(".*partial*"))


def test_evaluate_json_never_replaces_the_model(scene: dict[str, Path], synthetic_kitti: Path):
    from train.evaluate import main

    rng = random.Random(SEED + 1)
    before = digest(scene["model"])
    flag = rng.choice(["--json", "--pr-curve"])
    target = rng.choice([scene["model"], scene["hardlink"]])
    code, stderr = call_main(main, ["--model", str(scene["model"]), "--data", str(synthetic_kitti), flag, str(target),
                                    "--no-progress"], f"evaluate {flag} onto the model")
    assert code == 2 and "is the --model input" in stderr and digest(scene["model"]) == before


# ------------------------------------------------------------------------------------ full and read-only disks

def small_filesystem(tmp_path: Path, size_kb: int, read_only: bool = False) -> tuple[Path, Callable | None]:
    """A real small (or read-only) file system: a tmpfs where this process may mount one (root, CAP_SYS_ADMIN);
    elsewhere a plain folder and a per-process file size limit (RLIMIT_FSIZE: the kernel fails the write with
    EFBIG, as a full disk fails it with ENOSPC). Returns (folder, preexec_fn for the writing process)."""
    folder = tmp_path / ("ro" if read_only else "tiny")
    folder.mkdir()
    options = f"size={size_kb}k" + (",ro" if read_only else "")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                             capture_output=True).returncode == 0
    if mounted:
        return folder, None
    if read_only:
        return folder / "not-a-folder.txt", None  # a path below a file: no file can be created there either
    limit = size_kb * 1024

    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return folder, limit_file_size


def unmount(folder: Path) -> None:
    subprocess.run(["umount", str(folder)], capture_output=True)


def test_full_disk_keeps_the_good_video_and_the_stats_land(scene: dict[str, Path], tmp_path: Path):
    folder, preexec = small_filesystem(tmp_path, 160)
    try:
        good = folder / "annotated.mp4"
        first = run_stream(str(scene["video"]), "--model", str(scene["model"]), "--headless", "--quiet",
                           "--max-frames", "1", "--output", str(good))
        assert first.returncode == 0, first.stderr
        before = digest(good)
        stats = tmp_path / "stats.json"
        if preexec is None:
            (folder / "filler").write_bytes(b"\0" * max(0, 160 * 1024 - 2 * good.stat().st_size - 8192))
        full = subprocess.run([sys.executable, str(STREAM), str(scene["video"]), "--model", str(scene["model"]),
                               "--headless", "--quiet", "--output", str(good), "--stats-json", str(stats)],
                              capture_output=True, text=True, cwd=REPO, timeout=120, preexec_fn=preexec)
        line = assert_one_error_line(full.stderr)
        assert full.returncode != 0 and str(good) in line, (SEED, full.stderr)
        assert "wrote" not in full.stdout
        assert digest(good) == before and len(read_video(good)) == 1  # the earlier good file, untouched
        assert not list(folder.glob(".*partial*"))  # nor a temporary left behind on the full disk
        assert json.loads(stats.read_text())["frames_processed"] == VIDEO_FRAMES  # the run's stats still landed
    finally:
        unmount(folder)


def test_read_only_output_is_one_line_before_the_run(scene: dict[str, Path], tmp_path: Path):
    from runtime.stream import main

    folder, _ = small_filesystem(tmp_path, 64, read_only=True)
    try:
        for flag, name in (("--output", "o.mp4"), ("--stats-json", "s.json")):
            code, stderr = call_main(main, [str(scene["video"]), "--model", str(scene["model"]), "--headless",
                                            "--quiet", flag, str(folder / name)], f"{flag} on a read-only disk")
            assert code == 2 and f"{flag} {folder / name}" in stderr, stderr
    finally:
        unmount(folder)


def test_two_runs_with_one_output_never_mix(scene: dict[str, Path], tmp_path: Path):
    """Each run writes its own temporary file: the output is one run's complete video, never a mix."""
    out = tmp_path / "both.mp4"
    frames = sorted(random.Random(SEED + 2).sample(range(3, VIDEO_FRAMES + 1), 2))
    runs = [subprocess.Popen([sys.executable, str(STREAM), str(scene["video"]), "--model", str(scene["model"]),
                              "--headless", "--quiet", "--max-frames", str(n), "--output", str(out)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO) for n in frames]
    results = [run.communicate(timeout=120) for run in runs]
    assert all(run.returncode == 0 for run in runs), results
    assert len(read_video(out)) in frames and not list(tmp_path.glob(".*partial*"))


# ------------------------------------------------------------------------------------------------- sources

def test_source_failing_part_way_exits_3_saying_how_far(tmp_path: Path, tiny_onnx: Path):
    rng = np.random.default_rng(SEED)
    video = write_video(tmp_path / "clip.mp4", 30, (320, 96), 10.0)
    data = bytearray(video.read_bytes())
    start = len(data) // 3
    data[start:2 * start] = rng.integers(0, 256, start, np.uint8).tobytes()  # the middle third garbled
    video.write_bytes(bytes(data))
    result = run_stream(str(video), "--model", str(tiny_onnx), "--headless", "--quiet")
    line = assert_one_error_line(result.stderr)
    assert result.returncode == 3 and "decoding failed part-way" in line and "of 30 frames read" in line, result.stderr


def test_absurd_source_frame_rate_is_blamed_on_the_source(tmp_path: Path, capsys):
    from runtime.outputs import DEFAULT_FPS, VideoFileOutput

    fps = random.Random(SEED).choice([0.001, 0.5, 5000.0, 90000.0])
    output = VideoFileOutput(tmp_path / "o.mp4", fps, source="drive.mp4")
    assert output.fps == DEFAULT_FPS
    warning = capsys.readouterr().err
    assert "drive.mp4" in warning and f"{fps:g} frames/s" in warning


def test_calibration_keeps_only_the_frames_it_uses(tmp_path: Path):
    """A 1024x1024 source of 64 frames (200 MB decoded): picking 4 must not hold them all (peak RSS checked in
    a fresh process), and the frames kept are exactly those a full decode gives at those indices."""
    video = tmp_path / "big.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (1024, 1024))
    gradient = np.tile(np.linspace(0, 255, 1024, dtype=np.uint8), (1024, 1)).astype(np.uint8)
    for index in range(64):  # smooth content with a moving square: quick to encode, every frame different
        frame = cv2.merge([gradient, gradient.T, np.full_like(gradient, index * 4)])
        cv2.rectangle(frame, (index * 12, 100), (index * 12 + 80, 180), (255, 255, 255), -1)
        writer.write(frame)
    writer.release()
    probe = ("import resource, sys, numpy as np; from runtime.sources import count_video_frames, "
             "read_video_frames_at; from kitti.frames import evenly_spaced; "
             "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; v = sys.argv[1]; "
             "kept = read_video_frames_at(v, evenly_spaced(list(range(count_video_frames(v))), 4)); "
             "grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before; "
             "print([i for i, _ in kept], grew // 1024)")
    result = run_cli("-c", probe, str(video), timeout=180)
    assert result.returncode == 0, result.stderr
    indices, grew_mb = result.stdout.split("]")
    assert indices + "]" == "[0, 21, 42, 63]"
    assert int(grew_mb) < 100, f"peak memory grew {grew_mb} MB to keep 4 frames of 1024x1024"
    from runtime.sources import read_video_frames, read_video_frames_at

    everything = read_video_frames(video, 20)
    for index, frame in read_video_frames_at(video, [3, 19]):
        assert np.array_equal(frame, everything[index])


# ------------------------------------------------------------------------------------------------- readers

def conv_model(path: Path, inputs: int = 1, outputs: int = 1, classes: int = 2, size_hw=(32, 64),
               meta_size_hw=(32, 64), meta_classes: int = 2) -> Path:
    """A one-Conv graph with roadseg metadata that can disagree with it (extra inputs/outputs, classes, size)."""
    height, width = size_hw
    nodes, graph_inputs, graph_outputs, weights = [], [], [], []
    for index in range(inputs):
        graph_inputs.append(helper.make_tensor_value_info(f"image{index}", TensorProto.FLOAT, [1, 3, height, width]))
    for index in range(outputs):
        name = f"w{index}"
        weights.append(helper.make_tensor(name, TensorProto.FLOAT, [classes, 3, 1, 1],
                                          np.ones(classes * 3, np.float32)))
        nodes.append(helper.make_node("Conv", [f"image{index % inputs}", name], [f"out{index}"]))
        graph_outputs.append(helper.make_tensor_value_info(f"out{index}", TensorProto.FLOAT,
                                                           [1, classes, height, width]))
    model = helper.make_model(helper.make_graph(nodes, "g", graph_inputs, graph_outputs, weights),
                              opset_imports=[helper.make_opsetid("", 17)])
    names = ["road", *[f"c{i}" for i in range(1, meta_classes)]]
    entry = model.metadata_props.add()
    entry.key, entry.value = PREPROCESS_KEY, PreprocessSpec(*meta_size_hw, class_names=tuple(names)).to_json()
    onnx.save(model, str(path))
    return path


GRAPH_LIES = {
    "a second graph input": {"inputs": 2, "outputs": 2},
    "a second output": {"outputs": 2},
    "a 5-class output under 2-class metadata": {"classes": 5},
    "a graph of another size than its metadata": {"size_hw": (48, 64)},
}


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_both_backends_refuse_a_graph_that_contradicts_its_metadata(tmp_path: Path, backend: str, tiny_onnx: Path):
    if backend == "openvino":
        from runtime.openvino_backend import openvino_installed

        if not openvino_installed():
            pytest.skip("OpenVINO is not installed (make setup-openvino)")
    from runtime.stream import main

    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), np.zeros((32, 64, 3), np.uint8))
    lies = sorted(GRAPH_LIES.items())
    random.Random(SEED).shuffle(lies)
    for name, lie in lies:
        model = conv_model(tmp_path / f"{name.replace(' ', '_')}.onnx", **lie)
        code, stderr = call_main(main, [str(image), "--model", str(model), "--backend", backend, "--headless",
                                        "--quiet"], f"{backend}: {name}")
        assert code == 2 and str(model) in stderr, f"[seed {SEED}] {backend}, {name}: exit {code} {stderr[-400:]}"
    honest = conv_model(tmp_path / "honest.onnx")
    code, stderr = call_main(main, [str(image), "--model", str(honest), "--backend", backend, "--headless", "--quiet"],
                             f"{backend}: the honest graph")
    assert code == 0, stderr


def sidecar_for(engine: Path, onnx_path: Path) -> dict:
    from engine.build import onnx_io
    from runtime.contract import SIDECAR_FORMAT
    from runtime.trt_flavour import TENSORRT

    model = onnx.load(str(onnx_path))
    metadata = {p.key: p.value for p in model.metadata_props}
    data = engine.read_bytes()
    return {"format": SIDECAR_FORMAT, "flavour": TENSORRT, "metadata": metadata,
            "cache_key": {"onnx": onnx_path.name, "flavour": TENSORRT, "tensorrt": "10.0.0", "precision": "fp32"},
            "engine_sha256": hashlib.sha256(data).hexdigest(), "engine_bytes": len(data),
            "io": onnx_io(onnx_path), "rebuild": "python -m engine"}


def test_engine_check_trusts_nothing_its_sidecar_says(tmp_path: Path, tiny_onnx: Path):
    from engine.check import main

    onnx_path = tmp_path / FP32_ONNX
    onnx_path.write_bytes(tiny_onnx.read_bytes())
    engine = tmp_path / FP32_ENGINE
    engine.write_bytes(random.Random(SEED).randbytes(4096))
    good = sidecar_for(engine, onnx_path)
    sidecar = Path(f"{engine}.json")
    sidecar.write_text(json.dumps(good))
    code, text = call_main(main, [str(engine)], "the honest engine")
    assert code == 0, text
    huge = tmp_path / "huge.engine"
    with open(huge, "wb") as stream:  # sparse: 64 GiB on paper, nothing on disk
        stream.truncate(64 << 30)
    lies = {
        "an ONNX path outside the folder": ({"cache_key": {**good["cache_key"], "onnx": "/etc/passwd"}}, "outside"),
        "an ONNX path climbing out": ({"cache_key": {**good["cache_key"], "onnx": "../../x.onnx"}}, "outside"),
        "an unknown flavour": ({"flavour": "tensorrt_xyz"}, "unknown flavour"),
        "io rows of the wrong type": ({"io": [1, "a", None]}, "'io'"),
        "io rows missing fields": ({"io": [{"name": "image"}]}, "'io'"),
        "another size": ({"engine_bytes": 17}, "sidecar says 17"),
        "another hash": ({"engine_sha256": "0" * 64}, "engine_sha256"),
        "deep nesting": ({"rebuild": "x", "extra": json.loads("[" * 200 + "]" * 200)}, "nested"),
    }
    cases = sorted(lies.items())
    random.Random(SEED).shuffle(cases)
    for name, (change, expected) in cases:
        sidecar.write_text(json.dumps({**good, **change}))
        code, text = call_main(main, [str(engine)], name)
        assert code == 1 and expected in text, f"[seed {SEED}] engine.check, {name}: {text[-400:]}"
    Path(f"{huge}.json").write_text(json.dumps({**good, "engine_bytes": 64 << 30}))
    code, text = call_main(main, [str(huge)], "a 64 GiB engine")
    assert code == 1 and "limit" in text  # refused by its size, never read


def test_hostile_accuracy_table_neither_hangs_nor_hides_its_name(tmp_path: Path, tiny_onnx: Path):
    """`--backend auto` reads accuracy.json beside the model: a FIFO there must not hang the run, deep nesting must
    be named; either way the run goes on without counting anything as gated."""
    from runtime.backend_choice import gated_openvino_precisions

    model = tmp_path / "model.onnx"
    model.write_bytes(tiny_onnx.read_bytes())
    table = tmp_path / ACCURACY_JSON_FILE
    for kind in random.Random(SEED).sample(HOSTILE_KINDS, 3):
        write_hostile(table, kind, 5000, 1 << 31)
        stderr, gated = io.StringIO(), []

        def read_table(stderr=stderr, gated=gated) -> None:
            with contextlib.redirect_stderr(stderr):
                gated.append(gated_openvino_precisions(model, "0" * 64))

        reader = threading.Thread(target=read_table, daemon=True)  # a hang detector, not a speed check
        reader.start()
        reader.join(timeout=120)
        assert not reader.is_alive(), f"[seed {SEED}] {kind}: reading accuracy.json hangs"
        assert gated == [set()] and str(table) in stderr.getvalue(), (SEED, kind, stderr.getvalue())


def test_deeply_nested_checkpoint_summary_is_refused_in_one_line(tiny_checkpoint: Path, tmp_path: Path,
                                                                  synthetic_kitti: Path):
    import torch

    payload = torch.load(tiny_checkpoint, weights_only=False)
    deep: dict = {}
    for _ in range(random.Random(SEED).randint(40, 300)):  # past the limit (32), within what pickle can write
        deep = {"x": deep}
    payload["summary"] = {"nested": deep}
    bad = tmp_path / "deep.pt"
    torch.save(payload, bad)
    from export.__main__ import main

    code, text = call_main(main, ["--checkpoint", str(bad), "--build", str(tmp_path / "build"), "--data",
                                  str(synthetic_kitti), "--no-progress"], "export of a deep summary")
    assert code == 2 and str(bad) in text and "nested" in text


def test_shipped_check_names_a_damaged_onnx(tmp_path: Path):
    from export.shipped import ShippedError, check_pair

    damaged = tmp_path / "damaged.onnx"
    damaged.write_bytes(random.Random(SEED).randbytes(2048))
    fresh = tmp_path / "fresh.onnx"
    conv_model(fresh)
    with pytest.raises(ShippedError, match="damaged.onnx"):
        check_pair(damaged, fresh, np.zeros((1, 3, 32, 64), np.float32))


def test_module_level_skips_fail_a_no_skips_run(tmp_path: Path):
    """ROADSEG_NO_SKIPS=1 counts a module that skips itself as it is collected, not only skipped tests."""
    (tmp_path / "conftest.py").write_text((REPO / "tests" / "conftest.py").read_text())
    (tmp_path / "test_absent.py").write_text("import pytest\npytest.skip('backend absent', allow_module_level=True)\n")
    (tmp_path / "test_present.py").write_text("def test_runs():\n    assert True\n")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120,
                            env={**os.environ, "ROADSEG_NO_SKIPS": "1", "PYTHONPATH": str(REPO)})
    assert result.returncode == 1 and "test_absent.py (whole module): " in result.stdout, result.stdout[-1500:]


def test_calibration_names_a_source_that_fails_part_way(tmp_path: Path, tiny_onnx: Path):
    from calibration.__main__ import main

    build = tmp_path / "build"
    build.mkdir()
    (build / FP32_ONNX).write_bytes(tiny_onnx.read_bytes())
    video = write_video(tmp_path / "clip.mp4", 30, (320, 96), 10.0)
    data = bytearray(video.read_bytes())
    third = len(data) // 3
    data[third:2 * third] = random.Random(SEED).randbytes(third)
    video.write_bytes(bytes(data))
    code, stderr = call_main(main, ["--build", str(build), "--source", str(video), "--data", str(tmp_path),
                                    "--size", "4", "--no-progress"], "calibration from a garbled video")
    assert code == 2 and str(video) in stderr and "decoding failed part-way" in stderr, stderr


def test_engine_build_never_hangs_on_a_hostile_sidecar(tmp_path: Path):
    """An existing engine's sidecar decides whether the build is reused: a FIFO, a deep or a huge one means
    'rebuild', at once."""
    from engine.build import reusable

    engine = tmp_path / FP16_ENGINE
    engine.write_bytes(b"engine")
    sidecar = Path(f"{engine}.json")
    for kind in random.Random(SEED).sample(HOSTILE_KINDS, 3):
        write_hostile(sidecar, kind, 100_000, 1 << 33)
        answer: list[bool] = []
        checker = threading.Thread(target=lambda answer=answer: answer.append(reusable(engine, {"k": 1})),
                                   daemon=True)
        checker.start()
        checker.join(timeout=120)  # a hang detector, not a speed check
        assert not checker.is_alive() and answer == [False], f"[seed {SEED}] {kind}"


def test_calibration_manifest_cannot_point_outside_its_folder(tmp_path: Path):
    from calibration.dataset import FORMAT, MANIFEST_NAME, CalibrationError, load_calibration_set

    outside = tmp_path / "secret.npy"
    np.save(outside, np.zeros(3))
    folder = tmp_path / "calibration"
    folder.mkdir()
    target = random.Random(SEED).choice(["../secret.npy", str(outside), "/etc/passwd"])
    (folder / MANIFEST_NAME).write_text(json.dumps({"format": FORMAT, "count": 1,
                                                    "tensors": {"file": target, "sha256": digest(outside)}}))
    with pytest.raises(CalibrationError, match="outside its folder"):
        load_calibration_set(folder)
