"""models/: the shipped model's deployable ONNX files (export/shipped.py): written, verified, compared with a
fresh export, and used by `python -m engine` where there is no PyTorch."""

from __future__ import annotations

import json
import shutil
from argparse import Namespace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from export import shipped
from export.shipped import MAX_SHIPPED_BYTES, ShippedError, check, verify, write
from runtime.artifacts import FP16_ONNX, INT8_CPU_ONNX, INT8_ONNX, onnx_name

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture()
def release(tmp_path, tiny_artifacts) -> tuple[Path, Path]:
    """A build/ and a models/ holding a checkpoint and the files `write` ships beside it."""
    build = tmp_path / "build"
    shutil.copytree(tiny_artifacts, build)
    models = tmp_path / "models"
    models.mkdir()
    checkpoint = models / "tiny.pt"
    checkpoint.write_bytes(b"a checkpoint")
    write(build, checkpoint)
    return build, checkpoint


def test_write_then_check_passes_and_names_each_file(release):
    build, checkpoint = release
    lines = check(build, checkpoint)
    assert len(lines) == 4 and all("byte-identical" in line for line in lines)


def test_check_accepts_rounding_noise_but_not_a_changed_weight(release):
    """Robust to non-determinism (float noise far below the tolerance), not blind to a real change."""
    build, checkpoint = release
    fresh = build / FP16_ONNX
    model = onnx.load(str(fresh))
    weight = next(i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16 and len(i.dims) == 4)
    values = numpy_helper.to_array(weight)
    one_step = np.nextafter(values, np.float16(np.inf))  # FP16's last bit: what a changed BLAS can move
    weight.CopyFrom(numpy_helper.from_array(one_step.astype(np.float16), weight.name))
    onnx.save(model, str(fresh))
    assert any("equivalent" in line for line in check(build, checkpoint))
    weight.CopyFrom(numpy_helper.from_array((values * np.float16(1.5)).astype(np.float16), weight.name))
    onnx.save(model, str(fresh))
    with pytest.raises(ShippedError, match="float initializer .* differs"):
        check(build, checkpoint)


def test_check_catches_a_changed_graph(release):
    build, checkpoint = release
    fresh = build / INT8_ONNX
    model = onnx.load(str(fresh))
    model.graph.node[-1].input[0] = model.graph.node[-3].output[0]  # the last node reads another tensor
    onnx.save(model, str(fresh))
    with pytest.raises(ShippedError, match="nodes differ"):
        check(build, checkpoint)


def test_check_compares_a_batch_1_shipped_file_with_a_symbolic_batch_export(tmp_path, tiny_artifacts):
    """Files shipped with a fixed batch of 1 still match what export now writes (batch axis symbolic, the exporter's
    tensor names shifted by it); a real change in them is still caught."""
    from rtx_helpers import make_tiny_artifacts

    static = make_tiny_artifacts(tmp_path / "static", dynamic_batch=False)
    dims = onnx.load(str(static / INT8_ONNX)).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_value == 1
    models = tmp_path / "models"
    models.mkdir()
    checkpoint = models / "tiny.pt"
    checkpoint.write_bytes(b"a checkpoint")
    write(static, checkpoint)
    build = tmp_path / "build"
    shutil.copytree(tiny_artifacts, build)
    assert onnx.load(str(build / INT8_ONNX)).graph.input[0].type.tensor_type.shape.dim[0].dim_param
    lines = check(build, checkpoint)
    assert len(lines) == 4 and all("equivalent" in line for line in lines)
    model = onnx.load(str(build / INT8_CPU_ONNX))
    node = next(n for n in model.graph.node if n.op_type == "MaxPool")
    node.op_type = "AveragePool"
    onnx.save(model, str(build / INT8_CPU_ONNX))
    with pytest.raises(ShippedError, match="int8_cpu.*nodes differ"):
        check(build, checkpoint)


def test_verify_refuses_another_checkpoint_or_an_edited_file(release):
    _build, checkpoint = release
    paths = verify(checkpoint)
    with open(paths["int8"], "ab") as stream:
        stream.write(b"\0")
    with pytest.raises(ShippedError, match="not the file"):
        verify(checkpoint)
    checkpoint.write_bytes(b"another checkpoint")
    with pytest.raises(ShippedError, match="changed since its ONNX files"):
        verify(checkpoint)


def test_engine_without_torch_takes_the_shipped_files(release, tmp_path, monkeypatch):
    """engine.build's torch-free path (what `make engine` runs after `make setup-rtx` alone)."""
    from engine import build as engine

    _build, checkpoint = release
    target = tmp_path / "device_build"
    monkeypatch.setattr(engine, "torch_available", lambda: False)
    args = Namespace(precision="int8", int8_mode="qdq", checkpoint=str(checkpoint), build=str(target),
                     data="unused", no_progress=True)
    target.mkdir()
    engine.ensure_onnx(args, target)
    for variant, source in shipped.shipped_paths(checkpoint).items():
        assert (target / onnx_name(variant)).read_bytes() == source.read_bytes()
    with pytest.raises(engine.EngineBuildError, match="models/ ships FP16 and Q/DQ INT8 only"):
        engine.ensure_onnx(Namespace(**{**vars(args), "precision": "fp32"}), target)


def test_the_repository_ships_the_shipped_models_files_within_the_size_limit():
    checkpoint = REPO / "models" / "fcn8s_vgg16_w0.25_cpu.pt"
    paths = verify(checkpoint)  # listed, sha256-checked, and belonging to this checkpoint
    manifest = json.loads(shipped.manifest_path(checkpoint).read_text())
    assert set(manifest["files"]) == {p.name for p in paths.values()}
    assert all(p.stat().st_size <= MAX_SHIPPED_BYTES for p in paths.values())
