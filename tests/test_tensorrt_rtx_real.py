"""The REAL TensorRT-RTX (tensorrt_rtx 1.7) on this CPU-only machine: its ONNX parser reads every ONNX artifact
the project makes for TensorRT, and its ahead-of-time builder builds real engines through engine.build.

What runs here for real: parse, build, serialize, the engine header and get_engine_validity (which answers
INVALID without a GPU but names malformed or version-mismatched engines). Loading and running an engine needs
an RTX GPU: tests/test_tensorrt_standin.py covers that path with stand-ins (test_standin_rtx_backend_*).
Skipped where tensorrt_rtx is missing, failed instead where ROADSEG_REQUIRE_TENSORRT_RTX=1 (.ci/run sets it).
"""

from __future__ import annotations

import json
import shutil
import struct
from argparse import Namespace
from pathlib import Path

import pytest
from conftest import run_cli
from rtx_helpers import real_tensorrt_rtx

from engine.build import build_engine, onnx_io
from engine.check import EngineCheckError, check_engine
from engine.trt_builder import BuildOptions, EngineBuildError, build_serialized, onnx_for
from runtime.artifacts import (
    ENGINE_PRECISIONS,
    FP16_ONNX,
    FP32_ONNX,
    INT8_CPU_ONNX,
    INT8_ENGINE,
    INT8_FP16_ONNX,
    INT8_ONNX,
)
from runtime.tensorrt_backend import read_sidecar, sidecar_path
from runtime.trt_flavour import release, rtx_engine_version

TENSORRT_FILES = (FP32_ONNX, FP16_ONNX, INT8_ONNX, INT8_FP16_ONNX)


@pytest.fixture(scope="module")
def trt():
    return real_tensorrt_rtx()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, tiny_artifacts) -> Path:
    build = tmp_path_factory.mktemp("rtx") / "build"
    shutil.copytree(tiny_artifacts, build)
    (build / "parity.json").write_text("{}\n")  # no checkpoint here: engine.build trusts what was built
    return build


def parse(trt, path: Path) -> tuple[bool, list[str]]:
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)  # kept alive: the network belongs to it
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    ok = parser.parse_from_file(str(path))
    errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
    del parser, network, builder
    return ok, errors


def engine_args(build: Path, precision: str, **overrides) -> Namespace:
    values = {"precision": precision, "int8_mode": "qdq", "build": str(build), "workspace_mib": 1024,
              "opt_level": 3, "dla_core": None, "profile": None, "timing_cache": None, "trtexec": None,
              "force": False, "flavour": "auto", "compute_capability": None}
    values.update(overrides)
    return Namespace(**values)


@pytest.mark.parametrize("name", TENSORRT_FILES)
def test_real_rtx_parser_accepts_every_tensorrt_artifact(trt, artifacts, name):
    ok, errors = parse(trt, artifacts / name)
    assert ok, errors


def test_real_rtx_int8_files_have_no_int32_bias_dequantize(trt, artifacts):
    """What the real parser rejected before: ONNX Runtime's default int32 bias DequantizeLinear."""
    import onnx

    for name in (INT8_ONNX, INT8_FP16_ONNX):
        graph = onnx.load(str(artifacts / name)).graph
        initializers = {i.name: i.data_type for i in graph.initializer}
        dq_inputs = [initializers.get(n.input[0]) for n in graph.node if n.op_type == "DequantizeLinear"]
        assert dq_inputs and onnx.TensorProto.INT32 not in dq_inputs, name


def test_real_rtx_int8_fp16_file_keeps_fp32_io_and_fp16_rest(trt, artifacts):
    import onnx

    model = onnx.load(str(artifacts / INT8_FP16_ONNX))
    io_types = {v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]}
    assert io_types == {onnx.TensorProto.FLOAT}
    float_weights = {i.data_type for i in model.graph.initializer
                     if i.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)}
    assert float_weights == {onnx.TensorProto.FLOAT16}  # scales, biases, upsampler weights: all FP16


def test_real_rtx_parser_accepts_the_cpu_int8_file_which_the_engine_builder_never_uses(trt, artifacts):
    """model.int8_cpu.onnx is ONNX Runtime's CPU file, not TensorRT's, but like every ONNX artifact it must pass
    the real parser: its biases stay float (an int32 bias DequantizeLinear is what TensorRT's parser rejects)."""
    import onnx

    graph = onnx.load(str(artifacts / INT8_CPU_ONNX)).graph
    initializers = {i.name: i.data_type for i in graph.initializer}
    assert not any(initializers.get(n.input[0]) == onnx.TensorProto.INT32
                   for n in graph.node if n.op_type == "DequantizeLinear")
    ok, errors = parse(trt, artifacts / INT8_CPU_ONNX)
    assert ok, errors
    chosen = {onnx_for(p, m, typed, artifacts).name
              for p in ENGINE_PRECISIONS for m in ("qdq",) for typed in (False, True)}
    assert INT8_CPU_ONNX not in chosen and chosen <= set(TENSORRT_FILES)


@pytest.mark.parametrize("precision,onnx_name", [("fp32", FP32_ONNX), ("fp16", FP16_ONNX),
                                                  ("int8", INT8_FP16_ONNX)])
def test_real_rtx_builds_engine_with_sidecar_io_and_header(trt, artifacts, precision, onnx_name, capsys):
    engine_path = build_engine(engine_args(artifacts, precision, force=True), artifacts, trt, None, trt.__version__)
    sidecar = read_sidecar(engine_path)
    key = sidecar["cache_key"]
    assert sidecar["flavour"] == key["flavour"] == "tensorrt_rtx" and key["tensorrt"] == trt.__version__
    assert key["onnx"] == onnx_name and key["gpu"] is None  # built ahead of time: no build GPU in the key
    assert key["compute_capabilities"] and all(float(c) >= 8.0 for c in key["compute_capabilities"])
    # The I/O of the network TensorRT-RTX built, as recorded in the sidecar, is the ONNX's, FP32 at both ends, with
    # the symbolic batch axis the export writes; the default profile takes batch 1.
    assert [(r["name"], r["mode"], r["shape"], r["dtype"]) for r in sidecar["io"]] == [
        ("image", "input", [-1, 3, 64, 192], "FLOAT"), ("logits", "output", [-1, 2, 64, 192], "FLOAT")]
    assert sidecar["io"] == onnx_io(artifacts / onnx_name)
    assert sidecar["batch"] == {"min": 1, "opt": 1, "max": 1}
    engine = engine_path.read_bytes()
    assert rtx_engine_version(engine) == release(trt.__version__)
    assert struct.unpack_from("<Q", engine, 16)[0] == len(engine) == sidecar["engine_bytes"]
    assert "ok" in check_engine(engine_path)
    # Same key: reused, not rebuilt.
    capsys.readouterr()
    build_engine(engine_args(artifacts, precision), artifacts, trt, None, trt.__version__)
    assert "engine up to date" in capsys.readouterr().out


def test_real_rtx_builds_a_batch_profile_and_records_it(trt, artifacts):
    """`--batch 8 --batch-opt 4`: the real builder takes the profile min 1 / opt 4 / max 8 on every strongly typed
    file, and the sidecar and the rebuild line carry it."""
    for precision in ("fp16", "int8"):
        args = engine_args(artifacts, precision, batch=8, batch_opt=4, force=True)
        sidecar = read_sidecar(build_engine(args, artifacts, trt, None, trt.__version__))
        assert sidecar["batch"] == {"min": 1, "opt": 4, "max": 8}
        assert sidecar["cache_key"]["build_options"]["profile"][2] == [8, 3, 64, 192]
        assert "--batch 8 --batch-opt 4" in sidecar["rebuild"]


def test_real_rtx_engine_validity_without_gpu_flags_only_malformed_engines(trt, artifacts):
    built = build_serialized(trt, artifacts / FP16_ONNX, BuildOptions(precision="fp16"), None)
    runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
    validity, diagnostics = runtime.get_engine_validity(built.engine)
    assert validity == trt.EngineValidity.INVALID  # no GPU here to run it on
    assert not int(diagnostics) & int(trt.EngineInvalidityDiagnostics.MALFORMED_ENGINE)
    _, garbage = runtime.get_engine_validity(b"\0" * 256)
    assert int(garbage) & int(trt.EngineInvalidityDiagnostics.MALFORMED_ENGINE)


def test_real_rtx_compute_capability_targets(trt, artifacts):
    engine_path = build_engine(engine_args(artifacts, "fp16", compute_capability="8.6,12.0"), artifacts, trt,
                               None, trt.__version__)
    assert read_sidecar(engine_path)["cache_key"]["compute_capabilities"] == ["8.6", "12.0"]
    assert "--compute-capability 8.6,12.0" in read_sidecar(engine_path)["rebuild"]
    with pytest.raises(EngineBuildError, match="not a target of this TensorRT-RTX"):
        build_engine(engine_args(artifacts, "fp16", compute_capability="9.0"), artifacts, trt, None,
                     trt.__version__)  # Hopper: not an RTX GPU


def test_real_rtx_engine_check_catches_a_truncated_engine(trt, artifacts, tmp_path):
    engine_path = build_engine(engine_args(artifacts, "fp16"), artifacts, trt, None, trt.__version__)
    copy = artifacts / "model.truncated.engine"
    data = engine_path.read_bytes()[:-1000]
    copy.write_bytes(data)
    sidecar = read_sidecar(engine_path)
    import hashlib

    sidecar["engine_sha256"] = hashlib.sha256(data).hexdigest()  # a sidecar that matches the truncated bytes
    sidecar_path(copy).write_text(json.dumps(sidecar))
    with pytest.raises(EngineCheckError, match="truncated"):
        check_engine(copy)


def test_real_rtx_engine_cli_builds_without_gpu(trt, artifacts):
    """`python -m engine` as a user runs it: a real engine, one summary line, exit 0."""
    result = run_cli("-m", "engine", "--precision", "int8", "--build", str(artifacts), "--checkpoint",
                     str(artifacts / "absent.pt"), "--no-progress", "--force")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "with TensorRT-RTX" in result.stdout and "ahead of time (no GPU here)" in result.stdout
    assert read_sidecar(artifacts / INT8_ENGINE)["flavour"] == "tensorrt_rtx"
    check = run_cli("-m", "engine.check", str(artifacts / INT8_ENGINE))
    assert check.returncode == 0 and check.stdout.strip().endswith(": ok"), check.stderr


SHIPPED = Path(__file__).resolve().parent.parent / "models"


@pytest.mark.parametrize("variant", ["fp16", "int8", "int8_fp16", "int8_cpu"])
@pytest.mark.parametrize("stem", ["fcn8s_vgg16_w0.25_cpu", "fcn8s_efficientnet_lite0"])
def test_real_rtx_parser_on_the_shipped_models(trt, stem, variant):
    """Every ONNX file shipped in models/ passes the real parser, the VGG16 model's CPU-tuned one included. The
    EfficientNet-Lite CPU-tuned file is the one exception, refused for the one reason it must be: its projection
    convs' outputs are signed, so their u8 Q/DQ has a nonzero zero point, which TensorRT rejects (engines take
    that model's s8 files, int8 and int8_fp16, which parse)."""
    ok, errors = parse(trt, SHIPPED / f"{stem}.{variant}.onnx")
    if (stem, variant) == ("fcn8s_efficientnet_lite0", "int8_cpu"):
        assert not ok and errors and all("buildZeroPointTensor" in error for error in errors), errors
    else:
        assert ok, errors
