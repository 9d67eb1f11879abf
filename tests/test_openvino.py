"""The OpenVINO backend (real OpenVINO where installed) and `--backend auto`'s measured choice.

Skipped where OpenVINO is not installed, except in CI: .ci/run sets ROADSEG_REQUIRE_OPENVINO=1 after
`make setup-openvino`, and there a missing OpenVINO fails these tests instead of skipping them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from stream_helpers import KITTI_VIDEO, run_stream, tiny_onnx_model

from runtime import backend_choice
from runtime.artifacts import ACCURACY_JSON_FILE, FP32_ONNX, INT8_CPU_ONNX
from runtime.backends import open_backend
from runtime.contract import ModelFileError
from runtime.openvino_backend import openvino_installed
from runtime.postprocess import MaskPostprocessor
from runtime.preprocess import FramePreprocessor
from runtime.sources import read_video_frames

if not openvino_installed():
    if os.environ.get("ROADSEG_REQUIRE_OPENVINO") == "1":
        raise RuntimeError("ROADSEG_REQUIRE_OPENVINO=1 but OpenVINO is not installed (make setup-openvino)")
    pytest.skip("OpenVINO is not installed (make setup-openvino)", allow_module_level=True)

needs_video = pytest.mark.skipif(not KITTI_VIDEO.is_file(), reason=f"KITTI video not found at {KITTI_VIDEO}")


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory) -> Path:
    return tiny_onnx_model(tmp_path_factory.getbasetemp())


@pytest.fixture()
def probe_cache(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("ROADSEG_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / backend_choice.CACHE_NAME


def test_contract_comes_from_the_model_metadata(tiny_onnx: Path):
    ort, ov = open_backend(tiny_onnx, "onnxruntime"), open_backend(tiny_onnx, "openvino")
    assert (ov.name, ov.precision, ov.device) == ("openvino", "fp32", "cpu")
    assert ov.spec == ort.spec and ov.metadata == ort.metadata
    assert ov.provider.endswith("f32")  # the explicit hint: FP32 means f32 math, even where bf16 is native


@needs_video
def test_fp32_masks_equal_onnx_runtime_on_the_kitti_drive(tiny_onnx: Path):
    """The masks the runtime writes (source size) agree with ONNX Runtime's on >= 99.9 % of pixels."""
    ort, ov = open_backend(tiny_onnx, "onnxruntime"), open_backend(tiny_onnx, "openvino", precision="fp32")
    preprocess, postprocess = FramePreprocessor(ort.spec), MaskPostprocessor(ort.spec.road_index)
    same = total = 0
    for frame in read_video_frames(KITTI_VIDEO, 24):
        batch = preprocess(frame)
        expected = postprocess(ort.infer(batch)[0], frame.shape[:2]).copy()
        got = postprocess(ov.infer(batch)[0], frame.shape[:2])
        same, total = same + int((expected == got).sum()), total + expected.size
    assert total > 0 and same / total >= 0.999, f"{same / total:.5%} of pixels agree"


def test_output_is_not_overwritten_by_the_next_inference(tiny_onnx: Path):
    """The pipelined loop holds one result while the next frame runs: infer must hand back its own array."""
    ov = open_backend(tiny_onnx, "openvino")
    rng = np.random.default_rng(0)
    first_input, second_input = (rng.standard_normal((1, 3, *ov.spec.size_hw)).astype(np.float32) for _ in "ab")
    first = ov.infer(first_input)
    kept = first.copy()
    ov.infer(second_input)
    np.testing.assert_array_equal(first, kept)


def test_bf16_only_where_the_cpu_has_it(tiny_onnx: Path, monkeypatch):
    from runtime import openvino_backend

    if openvino_backend.bf16_supported():
        backend = open_backend(tiny_onnx, "openvino", precision="bf16")
        assert backend.precision == "bf16" and backend.provider.endswith("bf16")
    monkeypatch.setattr(openvino_backend, "cpu_capabilities", lambda core=None: ["FP32", "INT8"])
    with pytest.raises(ModelFileError, match="no native bf16"):
        open_backend(tiny_onnx, "openvino", precision="bf16")
    with pytest.raises(ModelFileError, match="bf16 is an OpenVINO CPU hint"):
        open_backend(tiny_onnx, "onnxruntime", precision="bf16")


SHIPPED_INT8 = Path(__file__).resolve().parents[1] / "models" / "fcn8s_vgg16_w0.25_cpu.int8_cpu.onnx"


def test_an_int8_file_runs_its_float_rest_in_bf16_only_when_asked_and_native(monkeypatch):
    """int8 keeps f32 for the layers the Q/DQ file leaves float; int8+bf16 (or bf16) puts them in bf16, on
    CPUs with native bf16 only; both give the ONNX Runtime masks on a real frame."""
    from runtime import openvino_backend

    default = open_backend(SHIPPED_INT8, "openvino")
    assert (default.precision, default.provider) == ("int8", "OpenVINO CPU f32")
    batch = np.random.default_rng(0).uniform(-2, 2, (1, 3, *default.spec.size_hw)).astype(np.float32)
    expected = open_backend(SHIPPED_INT8, "onnxruntime").infer(batch).argmax(1)
    assert (default.infer(batch).argmax(1) == expected).mean() > 0.99
    if openvino_backend.bf16_supported():
        for asked in ("bf16", "int8+bf16"):
            mixed = open_backend(SHIPPED_INT8, "openvino", precision=asked)
            assert (mixed.precision, mixed.provider) == ("int8+bf16", "OpenVINO CPU bf16")
            assert (mixed.infer(batch).argmax(1) == expected).mean() > 0.99
    monkeypatch.setattr(openvino_backend, "cpu_capabilities", lambda core=None: ["FP32", "INT8"])
    with pytest.raises(ModelFileError, match="no native bf16"):
        open_backend(SHIPPED_INT8, "openvino", precision="int8+bf16")


def test_int8_plus_bf16_needs_an_int8_file_and_unknown_precisions_are_refused(tiny_onnx: Path):
    with pytest.raises(ModelFileError, match=r"int8\+bf16 needs an INT8 Q/DQ file"):
        open_backend(tiny_onnx, "openvino", precision="int8+bf16")
    with pytest.raises(ModelFileError, match="--precision fp8: expected one of"):
        open_backend(tiny_onnx, "openvino", precision="fp8")


def test_each_result_is_its_own_array_written_in_place(tiny_onnx: Path):
    """Results must not alias each other (the pipelined loop holds one while the next runs), and the
    no-copy path must give what the request computed."""
    ov = open_backend(tiny_onnx, "openvino")
    batch = np.random.default_rng(1).standard_normal((1, 3, *ov.spec.size_hw)).astype(np.float32)
    first, second = ov.infer(batch), ov.infer(batch)
    assert not np.shares_memory(first, second) and first.flags.writeable
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(first, open_backend(tiny_onnx, "onnxruntime").infer(batch), atol=1e-4)


def test_a_file_openvino_cannot_read_is_one_clear_error(tmp_path: Path):
    bad = tmp_path / "garbage.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelFileError, match="garbage.onnx: OpenVINO cannot read it"):
        open_backend(bad, "openvino")


def test_auto_probes_then_reuses_the_cache(tiny_onnx: Path, probe_cache: Path):
    backend, choice = backend_choice.open_auto(tiny_onnx, threads=None, spinning=False)
    assert choice is not None and not choice.cached
    assert set(choice.timings_ms) == {"onnxruntime fp32", "openvino fp32"}
    fastest = min(choice.timings_ms, key=choice.timings_ms.get)
    assert f"{backend.name} {backend.precision}" == fastest
    assert "auto picked" in choice.line() and "ms" in choice.line()
    again, cached = backend_choice.open_auto(tiny_onnx, threads=None, spinning=False)
    assert cached.cached and (again.name, again.precision) == (backend.name, backend.precision)


@pytest.mark.parametrize("content", ["{not json", json.dumps([1, 2]), json.dumps(
    {"format": backend_choice.CACHE_FORMAT, "entries": {"k": {"backend": "os.system", "precision": "fp32",
                                                               "timings_ms": {"x": 1.0}}}}),
    json.dumps({"format": backend_choice.CACHE_FORMAT, "entries": {"k": {"backend": "openvino", "precision": "fp32",
                                                                         "timings_ms": {"x": float("nan")}}}})])
def test_a_corrupt_or_hostile_cache_is_ignored_and_rewritten(tiny_onnx: Path, probe_cache: Path, content: str):
    probe_cache.parent.mkdir(parents=True)
    probe_cache.write_text(content)
    assert backend_choice.read_cache(probe_cache) == {}
    _, choice = backend_choice.open_auto(tiny_onnx, threads=None, spinning=False)
    assert not choice.cached
    assert len(backend_choice.read_cache(probe_cache)) == 1


def test_a_cached_answer_for_this_model_is_used_as_recorded(tiny_onnx: Path, probe_cache: Path):
    """The cache decides without measuring: a recorded ONNX Runtime win opens ONNX Runtime, and vice versa."""
    backend_choice.open_auto(tiny_onnx, threads=None, spinning=False)
    entries = backend_choice.read_cache(probe_cache)
    for winner in ("onnxruntime", "openvino"):
        for entry in entries.values():
            entry["backend"] = winner
        backend_choice.write_cache(probe_cache, entries)
        backend, choice = backend_choice.open_auto(tiny_onnx, threads=None, spinning=False)
        assert choice.cached and backend.name == winner


def test_bf16_is_a_candidate_only_after_its_gate_passed(tiny_onnx: Path, tmp_path: Path, monkeypatch):
    from runtime import openvino_backend

    # A CPU with native bf16 (the rule for one without it is the next test's).
    monkeypatch.setattr(openvino_backend, "cpu_capabilities", lambda core=None: ["FP32", "BF16", "INT8"])
    model = tmp_path / FP32_ONNX
    model.write_bytes(tiny_onnx.read_bytes())
    digest = backend_choice.sha256_file(model)
    assert ("openvino", "bf16") not in backend_choice.candidates(model, "fp32", digest)
    row = {"backend": "openvino", "precision": "bf16", "sha256": digest, "passed": False}
    (tmp_path / ACCURACY_JSON_FILE).write_text(json.dumps({"rows": [row]}))
    assert ("openvino", "bf16") not in backend_choice.candidates(model, "fp32", digest)
    (tmp_path / ACCURACY_JSON_FILE).write_text(json.dumps({"rows": [{**row, "passed": True}]}))
    assert ("openvino", "bf16") in backend_choice.candidates(model, "fp32", digest)
    (tmp_path / ACCURACY_JSON_FILE).write_text(json.dumps({"rows": [{**row, "passed": True, "sha256": "0" * 64}]}))
    assert ("openvino", "bf16") not in backend_choice.candidates(model, "fp32", digest)


def test_int8_plus_bf16_is_a_candidate_only_after_its_gate_passed_and_where_bf16_is_native(tmp_path: Path,
                                                                                             monkeypatch):
    from runtime import openvino_backend

    model = tmp_path / INT8_CPU_ONNX
    model.write_bytes(SHIPPED_INT8.read_bytes())
    digest = backend_choice.sha256_file(model)
    assert backend_choice.candidates(model, "int8", digest) == [("onnxruntime", "int8"), ("openvino", "int8")]
    row = {"backend": "openvino", "precision": "int8+bf16", "sha256": digest, "passed": True}
    (tmp_path / ACCURACY_JSON_FILE).write_text(json.dumps({"rows": [row]}))
    monkeypatch.setattr(openvino_backend, "cpu_capabilities", lambda core=None: ["FP32", "BF16", "INT8"])
    assert ("openvino", "int8+bf16") in backend_choice.candidates(model, "int8", digest)
    # The gate ran on a bf16 machine; this one has none: not offered, so OpenVINO int8 stays a candidate.
    monkeypatch.setattr(openvino_backend, "cpu_capabilities", lambda core=None: ["FP32", "INT8"])
    assert ("openvino", "int8+bf16") not in backend_choice.candidates(model, "int8", digest)


@needs_video
def test_stream_cli_runs_on_openvino_and_says_why_auto_chose(tiny_onnx: Path, tmp_path: Path):
    env = {"ROADSEG_CACHE_DIR": str(tmp_path / "cache")}
    common = [str(KITTI_VIDEO), "--model", str(tiny_onnx), "--headless", "--quiet", "--max-frames", "5"]
    explicit = run_stream(*common, "--backend", "openvino", "--precision", "fp32", env=env)
    assert explicit.returncode == 0, explicit.stderr
    assert "openvino fp32 on cpu" in explicit.stdout and "5 read, 5 processed" in explicit.stdout
    auto = run_stream(*common, env=env)
    assert auto.returncode == 0, auto.stderr
    assert "auto picked" in auto.stdout and "onnxruntime fp32" in auto.stdout and "openvino fp32" in auto.stdout


def test_an_openvino_row_below_its_floor_fails_no_file_gate_but_is_reported(capsys):
    from export.accuracy import broken_floors, report_openvino_floors

    rows = [{"artifact": "FP32 ONNX", "backend": "onnxruntime", "passed": True, "maxf": 95.0, "drop_pt": 0.0,
             "floor_pt": None},
            {"artifact": "FP32 on OpenVINO bf16", "backend": "openvino", "passed": False, "maxf": 94.7,
             "drop_pt": 0.3, "floor_pt": 0.1}]
    assert broken_floors(rows) == []
    assert broken_floors(rows, "openvino") == ["FP32 on OpenVINO bf16 MaxF 94.70 is 0.30 pt below FP32 (floor 0.1 pt)"]
    report_openvino_floors(rows)
    assert "--backend auto will not use it" in capsys.readouterr().out
