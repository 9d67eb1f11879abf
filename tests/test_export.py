"""`python -m export`: FP32 ONNX with the contract in its metadata, parity gate, FP16 ONNX, bad inputs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import KITTI_DIR, needs_kitti, random_fcn8s
from onnx import TensorProto

from export.__main__ import main as export_main
from export.fp16 import emulation_graph
from export.onnx_export import export_onnx
from export.parity import check_parity, val_frames
from runtime.artifacts import ACCURACY_JSON_FILE, ACCURACY_MD_FILE, FP16_ONNX, FP32_ONNX
from runtime.backends import open_backend
from runtime.contract import MODEL_KEY, PRECISION_KEY, PREPROCESS_KEY, PreprocessSpec
from runtime.paths import SHIPPED_CHECKPOINT


def only_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("error:") or "Traceback" in line]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_checkpoint, synthetic_kitti):
    build = tmp_path_factory.mktemp("build")
    code = export_main(["--checkpoint", str(tiny_checkpoint), "--build", str(build), "--data", str(synthetic_kitti),
                        "--parity-frames", "3", "--no-progress"])
    assert code == 0
    return build


def test_export_writes_fp32_onnx_with_contract_and_passes_checker(exported, tiny_checkpoint):
    from train.checkpoint import load_model

    model = onnx.load(str(exported / FP32_ONNX))
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 17
    metadata = {p.key: p.value for p in model.metadata_props}
    _, spec, _ = load_model(tiny_checkpoint)
    assert PreprocessSpec.from_json(metadata[PREPROCESS_KEY]) == spec
    assert metadata[PRECISION_KEY] == "fp32" and "class_names" in metadata[MODEL_KEY]
    assert [i.name for i in model.graph.input] == ["image"] and [o.name for o in model.graph.output] == ["logits"]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [3, *spec.size_hw]  # any batch
    backend = open_backend(exported / FP32_ONNX, backend="cpu")
    assert backend.spec == spec  # the runtime reads the contract from the file


def test_export_writes_fp16_with_fp32_io_and_accuracy_table(exported):
    model = onnx.load(str(exported / FP16_ONNX))
    assert {p.key: p.value for p in model.metadata_props}[PRECISION_KEY] == "fp16"
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    conv_weights = [i for i in model.graph.initializer if len(i.dims) == 4]
    assert conv_weights and all(i.data_type == TensorProto.FLOAT16 for i in conv_weights)
    import json

    table = json.loads((exported / ACCURACY_JSON_FILE).read_text())
    assert [r["precision"] for r in table["rows"] if r["backend"] == "onnxruntime"] == ["fp32", "fp16"]
    from runtime.openvino_backend import cpu_precisions, openvino_installed

    # Where OpenVINO is installed, the FP32 file is also gated as it runs it (bf16 only on native-bf16 CPUs).
    expected = cpu_precisions("fp32") if openvino_installed() else []
    assert [r["precision"] for r in table["rows"] if r["backend"] == "openvino"] == expected
    assert all(r["passed"] for r in table["rows"]) and (exported / ACCURACY_MD_FILE).is_file()
    parity = json.loads((exported / "parity.json").read_text())
    assert parity["parity"]["passed"] and len(parity["checkpoint_sha256"]) == 64


def test_fp16_emulation_rounds_every_tensor_through_fp16(exported):
    emulated = emulation_graph(onnx.load(str(exported / FP16_ONNX)))
    casts = [n for n in emulated.graph.node if n.op_type == "Cast"]
    computing = [n for n in emulated.graph.node if n.op_type in ("Conv", "ConvTranspose", "Relu", "Add", "MaxPool")]
    assert len(casts) >= 2 * len(computing)
    ort_session = ort.InferenceSession(emulated.SerializeToString(), providers=["CPUExecutionProvider"])
    shape = [d.dim_value or 1 for d in emulated.graph.input[0].type.tensor_type.shape.dim]  # batch 1
    logits = ort_session.run(None, {"image": np.random.default_rng(0).normal(size=shape).astype(np.float32)})[0]
    assert np.array_equal(logits, logits.astype(np.float16).astype(np.float32))
    reference = ort.InferenceSession(str(exported / FP32_ONNX), providers=["CPUExecutionProvider"])
    full = reference.run(None, {"image": np.random.default_rng(0).normal(size=shape).astype(np.float32)})[0]
    difference = np.abs(full - logits).max()
    assert 0 < difference < 0.05 * (np.abs(full).max() + 1)  # FP16 noise: present, and small


def test_parity_gate_fails_loudly_and_leaves_no_model(tmp_path, tiny_checkpoint, synthetic_kitti, monkeypatch, capsys):
    import export.stage as export_stage

    def broken_export(model, spec, arch, summary, out_path, **kwargs):
        proto = export_onnx(model, spec, arch, summary, out_path, **kwargs)
        weight = next(i for i in proto.graph.initializer if len(i.dims) == 4)
        values = onnx.numpy_helper.to_array(weight) * 3.0  # a wrong layer, as a buggy exporter would write
        weight.CopyFrom(onnx.numpy_helper.from_array(values, weight.name))
        onnx.save(proto, str(out_path))
        return proto

    monkeypatch.setattr(export_stage, "export_onnx", broken_export)
    code = export_main(["--checkpoint", str(tiny_checkpoint), "--build", str(tmp_path), "--data",
                        str(synthetic_kitti), "--parity-frames", "3", "--no-fp16", "--no-progress"])
    assert code == 1
    assert "PARITY GATE FAILED" in only_error_line(capsys.readouterr().err)
    assert not list(tmp_path.glob("*.onnx")) and not list(tmp_path.glob(".*partial*"))


@needs_kitti
def test_parity_holds_on_20_real_kitti_val_frames(tmp_path):
    spec = PreprocessSpec(64, 224)
    model = random_fcn8s()
    path = tmp_path / "tiny.onnx"
    export_onnx(model, spec, model.arch(), {}, path)
    frames = val_frames(KITTI_DIR, 20)
    assert len(frames) == 20 and {f.name.split("_")[0] for f in frames} == {"um", "umm", "uu"}
    report = check_parity(model, spec, path, frames)
    assert report.passed, report.line()
    assert report.argmax_agreement >= 0.9999 and report.relative_diff < 1e-3


def test_missing_default_checkpoint_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert export_main(["--build", str(tmp_path / "build"), "--no-progress"]) == 1
    line = only_error_line(capsys.readouterr().err)
    assert SHIPPED_CHECKPOINT in line and "--checkpoint" in line


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", "foreign"])
def test_bad_checkpoint_is_one_line_and_writes_nothing(tmp_path, capsys, content):
    checkpoint = tmp_path / "model.pt"
    if content == "foreign":
        torch.save({"state_dict": {}}, checkpoint)
    else:
        checkpoint.write_bytes(content)
    build = tmp_path / "build"
    assert export_main(["--checkpoint", str(checkpoint), "--build", str(build), "--no-progress"]) == 2
    line = only_error_line(capsys.readouterr().err)
    assert str(checkpoint) in line
    assert not list(build.glob("*.onnx"))


def test_unwritable_build_folder_is_one_line(tmp_path, tiny_checkpoint, capsys):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the build folder should be")
    assert export_main(["--checkpoint", str(tiny_checkpoint), "--build", str(blocker / "build")]) == 1
    line = only_error_line(capsys.readouterr().err)
    assert "build folder is not writable" in line and str(blocker) in line


def test_onnx_without_our_metadata_is_refused(tmp_path, capsys):
    from calibration.__main__ import main as calibrate_main

    model = random_fcn8s()
    torch.onnx.export(model, (torch.zeros(1, 3, 64, 96),), str(tmp_path / FP32_ONNX), dynamo=True,
                      external_data=False, input_names=["image"], output_names=["logits"])
    assert calibrate_main(["--build", str(tmp_path), "--no-progress"]) == 2
    assert "not a roadseg model" in only_error_line(capsys.readouterr().err)
    with pytest.raises(ValueError, match="not a roadseg model"):
        open_backend(tmp_path / FP32_ONNX, backend="cpu")


def test_dynamic_batch_and_configurable_opset(tmp_path):
    spec = PreprocessSpec(64, 96)
    model = random_fcn8s()
    path = tmp_path / "dynamic.onnx"
    proto = export_onnx(model, spec, model.arch(), {}, path, opset=18, dynamic_batch=True)
    assert proto.opset_import[0].version == 18
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # a named, dynamic batch axis
    ort_session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batch = np.random.default_rng(1).normal(size=(3, 3, 64, 96)).astype(np.float32)
    together = ort_session.run(None, {"image": batch})[0]
    alone = np.concatenate([ort_session.run(None, {"image": batch[i : i + 1]})[0] for i in range(3)])
    assert together.shape == (3, 2, 64, 96) and np.allclose(together, alone, atol=1e-5)
