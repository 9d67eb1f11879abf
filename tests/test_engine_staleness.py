"""What `python -m engine` reruns before it builds: the export when the checkpoint's bytes changed, the calibration
when the FP32 ONNX it came from changed, nothing when neither did. Real export and calibration stages on a tiny
trained checkpoint and the procedural KITTI folder (no TensorRT needed: this is engine.build.ensure_onnx)."""

from __future__ import annotations

import json
import os
import shutil
from argparse import Namespace
from pathlib import Path

import pytest

from runtime.artifacts import INT8_FP16_ONNX, INT8_ONNX
from runtime.ioutil import sha256_file


@pytest.fixture()
def stage_calls(monkeypatch) -> dict[str, int]:
    """Count the stage runs ensure_onnx makes; each still runs for real, with the quick settings the stage tests
    use (3 parity frames, no FP16 accuracy gate, 4 calibration frames, one method)."""
    from dataclasses import replace

    import calibration.stage
    import export.accuracy
    import export.stage

    calls = {"export": 0, "calibration": 0}
    real_export, real_calibration = export.stage.run_export, calibration.stage.run_calibration

    def counted_export(checkpoint, build, data, options):
        calls["export"] += 1
        return real_export(checkpoint, build, data, replace(options, parity_frames=3, accuracy=False))

    def counted_calibration(build, source, data, options):
        calls["calibration"] += 1
        return real_calibration(build, source, data, replace(options, size=4, methods=("minmax",),
                                                             histogram_bins=256))

    monkeypatch.setattr(export.stage, "run_export", counted_export)
    monkeypatch.setattr(calibration.stage, "run_calibration", counted_calibration)
    # An untrained model's INT8 may miss the 0.5 pt floor on 4 frames; the gates are tested elsewhere.
    monkeypatch.setitem(export.accuracy.FLOORS_PT, "int8", 100.0)
    return calls


def test_stages_rerun_only_when_their_inputs_change(tmp_path: Path, tiny_checkpoint: Path, synthetic_kitti: Path,
                                                    stage_calls: dict[str, int], capsys):
    from engine.build import ensure_onnx
    from train.checkpoint import atomic_torch_save, read_checkpoint

    checkpoint, build = tmp_path / "model.pt", tmp_path / "build"
    shutil.copyfile(tiny_checkpoint, checkpoint)
    args = Namespace(precision="int8", int8_mode="qdq", checkpoint=str(checkpoint), build=str(build),
                     data=str(synthetic_kitti), no_progress=True)
    ensure_onnx(args, build)
    assert stage_calls == {"export": 1, "calibration": 1}
    first_int8 = sha256_file(build / INT8_ONNX)

    capsys.readouterr()
    ensure_onnx(args, build)  # nothing changed
    out = capsys.readouterr().out
    assert stage_calls == {"export": 1, "calibration": 1}
    assert "ONNX up to date" in out and "INT8 ONNX and calibration up to date" in out

    later = checkpoint.stat().st_mtime + 3600
    os.utime(checkpoint, (later, later))  # touched, same bytes: the sha256 decides, not the clock
    ensure_onnx(args, build)
    assert stage_calls == {"export": 1, "calibration": 1}

    payload = read_checkpoint(checkpoint)
    name = next(k for k, v in payload["model"].items() if v.is_floating_point() and v.dim() == 4)
    payload["model"][name] = payload["model"][name] * 1.5  # other weights: a new checkpoint
    atomic_torch_save(payload, checkpoint)
    ensure_onnx(args, build)
    assert stage_calls == {"export": 2, "calibration": 2}  # new FP32 ONNX, so the INT8 files are stale too
    assert json.loads((build / "parity.json").read_text())["checkpoint_sha256"] == sha256_file(checkpoint)
    assert sha256_file(build / INT8_ONNX) != first_int8

    (build / INT8_FP16_ONNX).unlink()  # an INT8 set with a file missing is recalibrated, not re-exported
    ensure_onnx(args, build)
    assert stage_calls == {"export": 2, "calibration": 3}
