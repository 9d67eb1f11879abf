"""Engine builder against RECORDING STAND-INS of TensorRT 8.6, 10.x and 11.x (tests/standins/).

TensorRT cannot be installed on the CI machines, so these tests check the calls the builder makes per
version and precision, the cache key and the rebuild logic. They do not prove a real engine builds or
runs: that needs a GPU with TensorRT (tests/test_tensorrt_rtx_real.py builds real engines).
Tests named test_standin_* only.
"""

from __future__ import annotations

import json
import sys
from argparse import Namespace
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import run_cli
from onnx import TensorProto, helper
from standins.tensorrt_api import VERSIONS, make_tensorrt

from engine.build import build_engine, cache_key, key_digest, reusable
from engine.trt_builder import (
    BuildOptions,
    EngineBuildError,
    build_serialized,
    calibration_cache_header,
    make_calibrator,
    onnx_for,
    trtexec_command,
)
from runtime.artifacts import (
    CALIBRATION_MANIFEST_FILE,
    FP16_ENGINE,
    FP16_ONNX,
    FP32_ONNX,
    INT8_FP16_ONNX,
    INT8_ONNX,
    TENSORRT_RANGES_FILE,
)
from runtime.contract import PREPROCESS_KEY, ModelFileError, PreprocessSpec
from runtime.tensorrt_backend import GpuInfo, key_mismatch, read_sidecar, sidecar_path

ORIN = GpuInfo("Orin", "8.7", "12.6", "12.6")
H100 = GpuInfo("NVIDIA H100 80GB HBM3", "9.0", "13.0", "13.0")


def tiny_onnx(path: Path, dynamic: bool = False, precision: str = "fp32") -> Path:
    """A one-Conv graph with the roadseg metadata: enough for the stand-in parser and the cache key."""
    batch = "N" if dynamic else 1
    weight = helper.make_tensor("w", TensorProto.FLOAT, [2, 3, 1, 1], np.ones(6, np.float32))
    graph = helper.make_graph([helper.make_node("Conv", ["image", "w"], ["logits"])], "g",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 3, 32, 64])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 2, 32, 64])],
                              [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    for key, value in {PREPROCESS_KEY: PreprocessSpec(32, 64).to_json(), "roadseg.precision": precision}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
    return path


@pytest.fixture()
def build(tmp_path: Path) -> Path:
    tiny_onnx(tmp_path / FP32_ONNX)
    tiny_onnx(tmp_path / FP16_ONNX, precision="fp16")
    tiny_onnx(tmp_path / INT8_ONNX, precision="int8")
    tiny_onnx(tmp_path / INT8_FP16_ONNX, precision="int8")
    calib = tmp_path / "calibration"
    (calib / "trt").mkdir(parents=True)
    (calib / "manifest.json").write_text('{"format": "roadseg-calibration-v1"}\n')
    np.save(calib / "tensors.npy", np.zeros((2, 3, 32, 64), np.float32))
    (calib / "trt" / "ranges.json").write_text(json.dumps({"amax": {"image": 2.5, "logits": 12.7}}))
    return tmp_path


def calls_named(trt, prefix: str) -> list[tuple]:
    return [c for c in trt.calls if c[0].startswith(prefix)]


def flags_set(trt) -> list[str]:
    return [c[1] for c in calls_named(trt, "BuilderConfig.set_flag")]


def test_standin_trt86_fp16_uses_builder_flag(build):
    trt = make_tensorrt(VERSIONS["8.6"])
    onnx_path = onnx_for("fp16", "qdq", False, build)
    assert onnx_path.name == FP32_ONNX
    build_serialized(trt, onnx_path, BuildOptions(precision="fp16"), build / "timing.cache")
    assert flags_set(trt) == ["FP16"]
    assert ("Builder.create_network", 1 << 0) in trt.calls  # EXPLICIT_BATCH is bit 0 and required on 8.6
    assert calls_named(trt, "Builder.platform_has_fast_fp16")


def test_standin_trt10_fp16_uses_builder_flag_without_explicit_batch(build):
    trt = make_tensorrt(VERSIONS["10"])
    build_serialized(trt, onnx_for("fp16", "qdq", False, build), BuildOptions(precision="fp16"), None)
    assert flags_set(trt) == ["FP16"]
    assert ("Builder.create_network", 0) in trt.calls
    assert not calls_named(trt, "Builder.platform_has_fast_fp16")  # deprecated in 10: not consulted


def test_standin_trt11_fp16_builds_from_fp16_onnx_without_flags(build):
    trt = make_tensorrt(VERSIONS["11"])
    onnx_path = onnx_for("fp16", "qdq", True, build)
    assert onnx_path.name == FP16_ONNX
    engine = build_serialized(trt, onnx_path, BuildOptions(precision="fp16"), None)
    assert flags_set(trt) == []
    assert ("OnnxParser.parse_from_file", FP16_ONNX) in trt.calls
    assert json.loads(engine.engine.split(b"\n", 1)[1])["onnx_sha256"]


def test_standin_trt11_lacks_the_removed_names():
    trt = make_tensorrt(VERSIONS["11"])
    config = trt.Builder(trt.Logger()).create_builder_config()
    for lookup in (lambda: trt.BuilderFlag.FP16, lambda: trt.BuilderFlag.INT8,
                   lambda: trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH, lambda: trt.IInt8EntropyCalibrator2,
                   lambda: trt.Builder(trt.Logger()).platform_has_fast_fp16,
                   lambda: config.set_calibration_profile):
        with pytest.raises(AttributeError):
            lookup()
    with pytest.raises(AttributeError):
        config.int8_calibrator = object()


@pytest.mark.parametrize("family", ["8.6", "10"])
def test_standin_int8_qdq_sets_int8_and_fp16_flags_on_weakly_typed_versions(build, family):
    trt = make_tensorrt(VERSIONS[family])
    onnx_path = onnx_for("int8", "qdq", False, build)
    assert onnx_path.name == INT8_ONNX
    build_serialized(trt, onnx_path, BuildOptions(precision="int8"), None)
    assert flags_set(trt) == ["INT8", "FP16"]
    assert not calls_named(trt, "BuilderConfig.int8_calibrator=")


def test_standin_trt11_int8_builds_from_qdq_onnx_without_flags(build):
    trt = make_tensorrt(VERSIONS["11"])
    onnx_path = onnx_for("int8", "qdq", True, build)
    assert onnx_path.name == INT8_FP16_ONNX  # strongly typed: the Q/DQ model with its rest in FP16
    build_serialized(trt, onnx_path, BuildOptions(precision="int8"), None)
    assert flags_set(trt) == []


def test_standin_trt11_refuses_implicit_int8_calibration(build):
    with pytest.raises(EngineBuildError, match="no implicit INT8 calibration"):
        onnx_for("int8", "calibrator", True, build)


@pytest.mark.parametrize("family", ["8.6", "10"])
def test_standin_int8_calibrator_uses_the_calibration_cache(build, family):
    trt = make_tensorrt(VERSIONS[family])
    cache = f"{calibration_cache_header(trt.__version__)}\nimage: 3ca14285\n".encode()
    calibrator = make_calibrator(trt, np.zeros((2, 3, 32, 64), np.float32), "image", cache, None)
    onnx_path = onnx_for("int8", "calibrator", False, build)
    assert onnx_path.name == FP32_ONNX
    engine = build_serialized(trt, onnx_path, BuildOptions(precision="int8", int8_mode="calibrator"), None,
                              calibrator)
    assert ("BuilderConfig.int8_calibrator=", "EntropyCalibrator") in trt.calls
    assert json.loads(engine.engine.split(b"\n", 1)[1])["calibration_cache"] == cache.decode()
    assert calibrator.get_batch_size() == 1


def test_standin_calibration_cache_header_follows_the_version():
    assert calibration_cache_header("8.6.1") == "TRT-8601-EntropyCalibration2"
    assert calibration_cache_header("10.3.0") == "TRT-100300-EntropyCalibration2"


@pytest.mark.parametrize("family", ["8.6", "10", "11"])
def test_standin_workspace_opt_level_timing_cache_dla_and_profile(tmp_path, family):
    trt = make_tensorrt(VERSIONS[family], dla_cores=2)
    onnx_path = tiny_onnx(tmp_path / FP32_ONNX, dynamic=True)
    profile = ((1, 3, 32, 64), (2, 3, 32, 64), (4, 3, 32, 64))
    options = BuildOptions(precision="fp16", workspace_mib=256, optimization_level=5, dla_core=1, profile=profile)
    timing = tmp_path / "timing.cache"
    build_serialized(trt, onnx_path, options, timing)
    assert ("BuilderConfig.set_memory_pool_limit", "WORKSPACE", 256 << 20) in trt.calls
    assert ("BuilderConfig.builder_optimization_level=", 5) in trt.calls
    assert ("OptimizationProfile.set_shape", "image", *profile) in trt.calls
    assert ("BuilderConfig.default_device_type=", "DLA") in trt.calls
    assert ("BuilderConfig.DLA_core=", 1) in trt.calls
    assert flags_set(trt)[-1] == "GPU_FALLBACK"
    assert ("BuilderConfig.create_timing_cache", b"") in trt.calls
    # The second build starts from the timing cache the first one saved.
    saved = timing.read_bytes()
    trt.calls.clear()
    build_serialized(trt, onnx_path, options, timing)
    assert ("BuilderConfig.create_timing_cache", saved) in trt.calls


def test_standin_symbolic_batch_gets_profile_min_1_opt_max_from_batch(tmp_path):
    trt = make_tensorrt(VERSIONS["10"])
    onnx_path = tiny_onnx(tmp_path / "m.onnx", dynamic=True)
    built = build_serialized(trt, onnx_path, BuildOptions(precision="fp32", batch=8, batch_opt=4), None)
    assert ("OptimizationProfile.set_shape", "image", (1, 3, 32, 64), (4, 3, 32, 64), (8, 3, 32, 64)) in trt.calls
    assert built.batch == {"min": 1, "opt": 4, "max": 8}
    trt.calls.clear()
    built = build_serialized(trt, onnx_path, BuildOptions(precision="fp32"), None)  # default: batch 1
    assert ("OptimizationProfile.set_shape", "image", (1, 3, 32, 64), (1, 3, 32, 64), (1, 3, 32, 64)) in trt.calls
    assert built.batch == {"min": 1, "opt": 1, "max": 1}


def test_standin_batch_beyond_a_fixed_batch_axis_is_one_clear_error(tmp_path):
    trt = make_tensorrt(VERSIONS["10"])
    with pytest.raises(EngineBuildError, match="--batch 4: input 'image' has a fixed batch of 1"):
        build_serialized(trt, tiny_onnx(tmp_path / "m.onnx"), BuildOptions(precision="fp32", batch=4), None)
    with pytest.raises(EngineBuildError, match="--batch-opt 9"):
        BuildOptions(batch=8, batch_opt=9)


def test_standin_trtexec_command_per_version(tmp_path):
    onnx_path, engine = tmp_path / FP32_ONNX, tmp_path / FP16_ENGINE
    fp16 = BuildOptions(precision="fp16", workspace_mib=512, optimization_level=4)
    old = trtexec_command("trtexec", onnx_path, engine, fp16, False, tmp_path / "t.cache", None)
    assert "--fp16" in old and "--memPoolSize=workspace:512M" in old and "--builderOptimizationLevel=4" in old
    assert f"--timingCacheFile={tmp_path / 't.cache'}" in old
    new = trtexec_command("trtexec", tmp_path / FP16_ONNX, engine, fp16, True, None, None)
    assert "--fp16" not in new and "--int8" not in new
    calib = trtexec_command("trtexec", onnx_path, engine, BuildOptions(precision="int8", int8_mode="calibrator"),
                            False, None, tmp_path / "c.cache")
    assert {"--int8", "--fp16", f"--calib={tmp_path / 'c.cache'}"} <= set(calib)


def engine_args(build: Path, precision: str = "fp16", **overrides) -> Namespace:
    values = {"precision": precision, "int8_mode": "qdq", "build": str(build), "workspace_mib": 1024,
              "opt_level": 3, "dla_core": None, "profile": None, "timing_cache": None, "trtexec": None,
              "force": False, "flavour": "auto", "compute_capability": None}
    values.update(overrides)
    return Namespace(**values)


def test_standin_engine_is_reused_while_its_key_matches_and_rebuilt_when_it_changes(build, capsys):
    trt = make_tensorrt(VERSIONS["10"])
    engine = build_engine(engine_args(build), build, trt, ORIN, trt.__version__)
    sidecar = read_sidecar(engine)
    assert sidecar["cache_key"]["gpu"] == {"name": "Orin", "compute_capability": "8.7"}
    assert sidecar["cache_key"]["precision"] == "fp16" and sidecar["cache_key"]["tensorrt"] == "10.3.0"
    assert sidecar["metadata"][PREPROCESS_KEY]  # the runtime reads the contract from here
    assert sidecar["rebuild"].startswith("python -m engine --precision fp16")
    builds = len(calls_named(trt, "Builder.build_serialized_network"))
    build_engine(engine_args(build), build, trt, ORIN, trt.__version__)
    assert len(calls_named(trt, "Builder.build_serialized_network")) == builds
    assert "engine up to date" in capsys.readouterr().out
    # A changed ONNX, another GPU or other build options each change the key.
    base = cache_key(build / FP32_ONNX, BuildOptions(), None, "10.3.0", ORIN)
    assert key_digest(base) != key_digest(cache_key(build / FP32_ONNX, BuildOptions(), None, "10.3.0", H100))
    assert key_digest(base) != key_digest(cache_key(build / FP32_ONNX, BuildOptions(workspace_mib=2048),
                                                    None, "10.3.0", ORIN))
    tiny_onnx(build / FP32_ONNX, precision="fp32")
    with open(build / FP32_ONNX, "ab") as stream:
        stream.write(b"")  # same bytes: still reusable
    assert reusable(engine, cache_key(build / FP32_ONNX, BuildOptions(), None, "10.3.0", ORIN))
    model = onnx.load(str(build / FP32_ONNX))
    model.graph.initializer[0].float_data[:] = [2.0] * 6
    onnx.save(model, str(build / FP32_ONNX))
    build_engine(engine_args(build), build, trt, ORIN, trt.__version__)
    assert len(calls_named(trt, "Builder.build_serialized_network")) == builds + 1


def test_standin_int8_engine_key_carries_the_calibration_identity(build):
    trt = make_tensorrt(VERSIONS["11"])
    engine = build_engine(engine_args(build, "int8"), build, trt, H100, trt.__version__)
    key = read_sidecar(engine)["cache_key"]
    assert key["onnx"] == INT8_FP16_ONNX and len(key["calibration_manifest_sha256"]) == 64
    (build / CALIBRATION_MANIFEST_FILE).write_text('{"format": "roadseg-calibration-v1", "n": 2}\n')
    before = len(calls_named(trt, "Builder.build_serialized_network"))
    build_engine(engine_args(build, "int8"), build, trt, H100, trt.__version__)
    assert len(calls_named(trt, "Builder.build_serialized_network")) == before + 1


def test_standin_key_mismatch_names_gpu_and_tensorrt(build):
    trt = make_tensorrt(VERSIONS["10"])
    engine = build_engine(engine_args(build), build, trt, ORIN, trt.__version__)
    key = read_sidecar(engine)["cache_key"]
    assert key_mismatch(key, ORIN, "10.3.0") == ""
    problem = key_mismatch(key, H100, "11.4.0")
    assert "TensorRT 10.3.0 vs 11.4.0" in problem and "Orin" in problem and "H100" in problem


def test_tensorrt_backend_without_cuda_is_one_line_and_never_imports_tensorrt(build, monkeypatch):
    """Real code path on this machine: no GPU, so the backend must stop before TensorRT is imported."""
    from runtime import tensorrt_backend

    trt = make_tensorrt(VERSIONS["10"])
    engine = build_engine(engine_args(build), build, trt, ORIN, trt.__version__)
    monkeypatch.setattr(tensorrt_backend, "probe_cuda", lambda device=0: (None, "no usable CUDA driver"))
    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)
    with pytest.raises(ModelFileError, match="needs a CUDA GPU: no usable CUDA driver"):
        tensorrt_backend.TensorRTBackend(engine)
    assert "tensorrt" not in sys.modules


def test_tensorrt_backend_refuses_an_engine_without_sidecar(build):
    from runtime.tensorrt_backend import TensorRTBackend

    (build / "lonely.engine").write_bytes(b"x")
    with pytest.raises(ModelFileError, match="no sidecar"):
        TensorRTBackend(build / "lonely.engine")
    assert sidecar_path(build / "lonely.engine").name == "lonely.engine.json"


def test_engine_cli_without_gpu_builds_onnx_then_exits_with_one_line(tmp_path, tiny_checkpoint, synthetic_kitti):
    """Real run of `python -m engine` on this GPU-less machine (no stand-in involved)."""
    from runtime.tensorrt_backend import probe_cuda

    if probe_cuda()[0] is not None:
        pytest.skip("this machine has a CUDA GPU")
    from export.__main__ import main as export_main

    build = tmp_path / "build"
    assert export_main(["--checkpoint", str(tiny_checkpoint), "--build", str(build), "--data", str(synthetic_kitti),
                        "--parity-frames", "3", "--no-accuracy", "--no-progress"]) == 0
    # --flavour tensorrt: TensorRT-RTX (which builds without a GPU) may be installed here; TensorRT never builds
    # without one, which is the path a machine with no TensorRT-RTX takes by default.
    result = run_cli("-m", "engine", "--checkpoint", str(tiny_checkpoint), "--build", str(build),
                     "--data", str(synthetic_kitti), "--no-progress", "--flavour", "tensorrt")
    assert result.returncode == 3
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: cannot build a TensorRT engine here: no CUDA GPU")
    assert FP32_ONNX in lines[0] and FP16_ONNX in lines[0] and "Traceback" not in result.stderr
    assert "ONNX up to date" in result.stdout  # the checkpoint did not change: nothing was re-exported
    assert not list(build.glob("*.engine"))


# ---- TensorRT-RTX and the defects a read against the real sources found (stand-ins) -------------------------

RTX_GPU = GpuInfo("NVIDIA GeForce RTX 4090", "8.9", "13.0", "13.0")


def test_standin_rtx_builds_for_target_compute_capabilities_without_timing_cache(build):
    trt = make_tensorrt(VERSIONS["rtx"])
    engine = build_engine(engine_args(build, compute_capability="8.6,8.9"), build, trt, None, trt.__version__)
    assert ("Builder.create_network", 0) in trt.calls and flags_set(trt) == []
    assert ("BuilderConfig.num_compute_capabilities=", 2) in trt.calls
    assert [c[1:] for c in calls_named(trt, "BuilderConfig.set_compute_capability")] == [("SM86", 0), ("SM89", 1)]
    assert not calls_named(trt, "BuilderConfig.create_timing_cache")  # a deprecated no-op on RTX
    sidecar = read_sidecar(engine)
    assert sidecar["flavour"] == "tensorrt_rtx" and sidecar["cache_key"]["compute_capabilities"] == ["8.6", "8.9"]
    assert "--flavour tensorrt_rtx" in sidecar["rebuild"]
    assert not list(build.glob("*.timing.cache"))


def test_standin_rtx_dla_is_refused(build):
    trt = make_tensorrt(VERSIONS["rtx"])
    with pytest.raises(EngineBuildError, match="--dla-core 0: no such DLA core; this device has none"):
        build_serialized(trt, build / FP16_ONNX, BuildOptions(precision="fp16", dla_core=0), None)


def test_standin_dla_core_checked_and_fp32_refused(build):
    trt = make_tensorrt(VERSIONS["10"], dla_cores=2)
    with pytest.raises(EngineBuildError, match="--dla-core 2: no such DLA core; this device has 2"):
        build_serialized(trt, build / FP32_ONNX, BuildOptions(precision="fp16", dla_core=2), None)
    with pytest.raises(EngineBuildError, match="DLA runs FP16 and INT8 only"):
        BuildOptions(precision="fp32", dla_core=0)


def test_standin_trt85_has_no_optimization_level_and_is_not_asked_for_one(build, capsys):
    trt = make_tensorrt(VERSIONS["8.5"])
    warnings = []
    build_serialized(trt, build / FP32_ONNX, BuildOptions(precision="fp16", optimization_level=5), None,
                     warn=warnings.append)
    assert not calls_named(trt, "BuilderConfig.builder_optimization_level=")
    assert any("no builder optimisation level" in w for w in warnings)
    assert ("Builder.create_network", 1) in trt.calls  # EXPLICIT_BATCH on 8.x


def test_standin_timing_cache_from_another_gpu_is_replaced_not_fatal(build):
    trt = make_tensorrt(VERSIONS["10"])
    timing = build / "timing.cache"
    timing.write_bytes(b"FOREIGN cache of another GPU")
    warnings = []
    built = build_serialized(trt, build / FP32_ONNX, BuildOptions(precision="fp16"), timing,
                             warn=warnings.append)
    assert built.engine.startswith(b"STANDIN-ENGINE")
    assert any("refused this timing cache" in w for w in warnings)
    assert timing.read_bytes().startswith(b"TIMING:")  # a fresh cache from this build replaced it


def test_standin_engine_survives_a_missing_timing_cache_after_the_build(build, monkeypatch):
    trt = make_tensorrt(VERSIONS["10"])
    monkeypatch.setattr(trt.IBuilderConfig, "get_timing_cache", lambda self: None)
    warnings = []
    built = build_serialized(trt, build / FP32_ONNX, BuildOptions(precision="fp16"), build / "t.cache",
                             warn=warnings.append)
    assert built.engine and any("no timing cache" in w for w in warnings) and not (build / "t.cache").exists()


def test_standin_timing_cache_file_is_keyed_by_release_and_gpu(build):
    trt = make_tensorrt(VERSIONS["10"])
    build_engine(engine_args(build), build, trt, ORIN, "10.3.0.26")
    assert (build / "tensorrt-10.3.0-sm87.timing.cache").is_file()


def test_standin_calibrator_mode_key_includes_the_calibration_ranges(build):
    trt = make_tensorrt(VERSIONS["10"])
    args = engine_args(build, "int8", int8_mode="calibrator")
    first = read_sidecar(build_engine(args, build, trt, ORIN, trt.__version__))["cache_key_sha256"]
    (build / TENSORRT_RANGES_FILE).write_text(json.dumps({"amax": {"image": 2.0, "logits": 9.0}}))
    second = read_sidecar(build_engine(args, build, trt, ORIN, trt.__version__))["cache_key_sha256"]
    assert first != second  # another calibration method: same set, other ranges -> rebuilt


def test_standin_versions_compare_as_release_tuples(build):
    """trtexec reports 3 parts, the Python wheels 4: the same release must not be refused."""
    from runtime.trt_flavour import same_release, version_tuple

    assert version_tuple("11.1.0.106") == (11, 1, 0, 106) and same_release("11.1.0", "11.1.0.106")
    assert not same_release("10.3.0", "10.13.0") and version_tuple("10.13.0") > version_tuple("10.3.0")
    trt = make_tensorrt(VERSIONS["10"])
    key = read_sidecar(build_engine(engine_args(build), build, trt, ORIN, "10.3.0"))["cache_key"]
    assert key_mismatch(key, ORIN, "10.3.0.26") == ""


class FakeCudart:
    """Just enough of cuda.bindings.runtime for the backend's setup path: no GPU here to run it."""

    class cudaError_t:  # noqa: N801 - cuda-python's name
        cudaSuccess = 0

    def cudaSetDevice(self, device):  # noqa: N802
        return (0,)


@pytest.fixture()
def rtx_backend(build, monkeypatch):
    """The runtime backend's load path on a stand-in TensorRT-RTX and a stand-in RTX 4090 (SM 8.9)."""
    from runtime import tensorrt_backend

    trt = make_tensorrt(VERSIONS["rtx"])
    engine = build_engine(engine_args(build), build, trt, None, trt.__version__)
    monkeypatch.setattr(tensorrt_backend, "probe_cuda", lambda device=0: (RTX_GPU, ""))
    monkeypatch.setattr(tensorrt_backend, "import_engine_flavour", lambda path, flavour, rebuild: trt)
    monkeypatch.setattr(tensorrt_backend, "import_cudart", lambda: FakeCudart())
    monkeypatch.setattr(tensorrt_backend.TensorRTBackend, "_allocate", lambda self, batch=1: None)
    return trt, engine


def test_standin_rtx_backend_checks_validity_then_loads_with_a_persisted_runtime_cache(rtx_backend):
    from runtime.tensorrt_backend import TensorRTBackend
    from runtime.trt_flavour import runtime_cache_path

    trt, engine = rtx_backend
    backend = TensorRTBackend(engine)
    names = [c[0] for c in trt.calls]
    assert names.index("Runtime.get_engine_validity") < names.index("Runtime.deserialize_cuda_engine")
    assert ("ICudaEngine.create_execution_context", True) in trt.calls  # with the runtime config
    assert backend.input_name == "image" and backend.output_name == "logits" and not backend._use_cuda_graph
    assert backend._runtime_cache.config.cuda_graph_strategy is trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
    backend.close()
    cache = runtime_cache_path(engine, "8.9")
    assert cache.read_bytes().startswith(b"RTXCACHE:NVIDIA GeForce RTX 4090:")
    trt.calls.clear()
    TensorRTBackend(engine).close()
    assert ("IRuntimeCache.deserialize", cache.stat().st_size) in trt.calls


def test_standin_rtx_backend_refuses_an_engine_for_other_gpus_with_the_rebuild_command(rtx_backend, monkeypatch):
    from runtime import tensorrt_backend

    trt, engine = rtx_backend
    monkeypatch.setattr(tensorrt_backend, "probe_cuda",
                        lambda device=0: (GpuInfo("NVIDIA GeForce RTX 2080", "7.5", "13.0", "13.0"), ""))
    with pytest.raises(ModelFileError, match=r"built for compute capabilities 8\.0.*is 7\.5\); rebuild: "
                                             r"python -m engine --precision fp16 .*--flavour tensorrt_rtx"):
        tensorrt_backend.TensorRTBackend(engine)


def test_standin_rtx_backend_refuses_an_engine_its_runtime_calls_invalid(rtx_backend):
    from runtime.tensorrt_backend import TensorRTBackend

    trt, engine = rtx_backend
    trt.standin_target = "SM75"  # the runtime finds the engine has no kernels for this GPU
    with pytest.raises(ModelFileError, match=r"cannot run here \(UNSUPPORTED_CC\); rebuild: python -m engine"):
        TensorRTBackend(engine)
    assert "Runtime.deserialize_cuda_engine" not in [c[0] for c in trt.calls]


def test_standin_backend_refuses_an_engine_of_another_flavour_in_one_line(build, monkeypatch):
    """A TensorRT-RTX engine on a machine with only TensorRT (the real import check, stand-in engine)."""
    from runtime import tensorrt_backend

    trt = make_tensorrt(VERSIONS["rtx"])
    engine = build_engine(engine_args(build), build, trt, None, trt.__version__)
    monkeypatch.setattr(tensorrt_backend, "probe_cuda", lambda device=0: (RTX_GPU, ""))
    monkeypatch.setattr(tensorrt_backend, "installed_flavours", lambda: ["tensorrt"])
    with pytest.raises(ModelFileError) as error:
        tensorrt_backend.TensorRTBackend(engine)
    message = str(error.value)
    assert "\n" not in message
    assert "built by TensorRT-RTX, which is not installed (this machine has TensorRT)" in message
    assert "make setup-rtx" in message and "python -m engine --precision fp16" in message


def test_standin_dla_engine_sets_the_runtime_dla_core_before_deserializing(build, monkeypatch):
    from runtime import tensorrt_backend

    trt = make_tensorrt(VERSIONS["10"], dla_cores=2)
    engine = build_engine(engine_args(build, dla_core=1), build, trt, ORIN, trt.__version__)
    monkeypatch.setattr(tensorrt_backend, "probe_cuda", lambda device=0: (ORIN, ""))
    monkeypatch.setattr(tensorrt_backend, "import_engine_flavour", lambda path, flavour, rebuild: trt)
    monkeypatch.setattr(tensorrt_backend, "import_cudart", lambda: FakeCudart())
    monkeypatch.setattr(tensorrt_backend.TensorRTBackend, "_allocate", lambda self, batch=1: None)
    tensorrt_backend.TensorRTBackend(engine)
    assert ("Runtime.deserialize_cuda_engine", 1) in trt.calls


def test_flavour_choice_without_gpu_needs_tensorrt_rtx_else_refuses_cleanly(monkeypatch):
    from engine import build as engine

    monkeypatch.setattr(engine, "installed_flavours", lambda: [])
    with pytest.raises(engine.MissingToolchain, match="no CUDA GPU .* and no TensorRT-RTX"):
        engine.choose_flavour("auto", None, "no driver")
    monkeypatch.setattr(engine, "installed_flavours", lambda: ["tensorrt", "tensorrt_rtx"])
    assert engine.choose_flavour("auto", None, "no driver") == "tensorrt_rtx"  # AOT without a GPU
    assert engine.choose_flavour("auto", ORIN, "") == "tensorrt"  # a GPU and TensorRT: TensorRT first
    with pytest.raises(engine.MissingToolchain, match="TensorRT needs one"):
        engine.choose_flavour("tensorrt", None, "no driver")


# ---- what makes the builder rebuild, and what refuses a damaged engine (stand-in TensorRT, real files) ---------


def builds_of(trt) -> int:
    return len(calls_named(trt, "Builder.build_serialized_network"))


def test_standin_force_rebuilds_an_engine_whose_key_matches(build, capsys):
    trt = make_tensorrt(VERSIONS["10"])
    engine = build_engine(engine_args(build), build, trt, ORIN, trt.__version__)
    build_engine(engine_args(build), build, trt, ORIN, trt.__version__)
    assert builds_of(trt) == 1 and "engine up to date" in capsys.readouterr().out
    build_engine(engine_args(build, force=True), build, trt, ORIN, trt.__version__)
    assert builds_of(trt) == 2 and "engine up to date" not in capsys.readouterr().out
    assert reusable(engine, read_sidecar(engine)["cache_key"])  # the forced build wrote a complete sidecar


def test_standin_tampered_engine_is_rebuilt_and_refused_by_the_checker_naming_the_rebuild(build, capsys):
    from engine.check import EngineCheckError, check_engine
    from engine.check import main as check_main

    trt = make_tensorrt(VERSIONS["10"])
    engine = build_engine(engine_args(build), build, trt, ORIN, trt.__version__)
    data = bytearray(engine.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, same sidecar: only engine_sha256 can tell
    engine.write_bytes(bytes(data))
    with pytest.raises(EngineCheckError, match=r"engine_sha256 .*; rebuild: python -m engine --precision fp16"):
        check_engine(engine)
    capsys.readouterr()
    assert check_main([str(engine)]) == 1
    (line,) = [text for text in capsys.readouterr().err.splitlines() if text.strip()]
    assert line.startswith(f"error: {engine}: engine bytes differ") and "rebuild: python -m engine" in line
    build_engine(engine_args(build), build, trt, ORIN, trt.__version__)
    assert builds_of(trt) == 2 and "engine up to date" not in capsys.readouterr().out
    assert engine.read_bytes() != bytes(data)


@pytest.mark.parametrize("content, refusal", [
    ("{not json", "unreadable engine sidecar"), ("[1, 2]", "sidecar"), ('{"format": "other"}', "format"),
    ("\udcff".encode("utf-8", "surrogateescape"), "unreadable engine sidecar")])
def test_standin_corrupt_sidecar_is_rebuilt_by_the_builder_and_refused_in_one_line(build, content, refusal, capsys):
    """The builder treats a sidecar it cannot read as no sidecar (rebuilds); the runtime and the checker refuse it
    with one line naming the sidecar, before any GPU is looked for."""
    from runtime.tensorrt_backend import TensorRTBackend

    trt = make_tensorrt(VERSIONS["10"])
    engine = build_engine(engine_args(build), build, trt, ORIN, trt.__version__)
    if isinstance(content, bytes):
        sidecar_path(engine).write_bytes(content)
    else:
        sidecar_path(engine).write_text(content)
    with pytest.raises(ModelFileError, match=refusal) as error:
        TensorRTBackend(engine)
    assert str(sidecar_path(engine)) in str(error.value) and "\n" not in str(error.value)
    from engine.check import main as check_main

    capsys.readouterr()
    assert check_main([str(engine)]) == 1
    assert len([text for text in capsys.readouterr().err.splitlines() if text.strip()]) == 1
    build_engine(engine_args(build), build, trt, ORIN, trt.__version__)
    assert builds_of(trt) == 2 and read_sidecar(engine)["engine_sha256"]


def test_standin_rtx_backend_reads_its_batch_range_and_refuses_more_frames_than_its_max(rtx_backend):
    from runtime.tensorrt_backend import TensorRTBackend

    _trt, engine = rtx_backend
    sidecar_file = sidecar_path(engine)
    assert read_sidecar(engine)["batch"] == {"min": 1, "opt": 1, "max": 1}
    backend = TensorRTBackend(engine)
    assert backend.max_batch == 1
    sidecar = json.loads(sidecar_file.read_text())
    sidecar["batch"] = {"min": 1, "opt": 4, "max": 8}
    sidecar_file.write_text(json.dumps(sidecar))
    backend = TensorRTBackend(engine)
    assert backend.max_batch == 8
    backend.batch = 1  # what _allocate sets; buffers are stubbed out here (no GPU)
    with pytest.raises(ValueError, match=r"takes 1\.\.8 frames a call, got 9; rebuild with --batch 9"):
        backend.infer(np.zeros((9, 3, 32, 64), np.float32))
    sidecar["batch"] = {"min": 1, "opt": 9, "max": 8}
    sidecar_file.write_text(json.dumps(sidecar))
    with pytest.raises(ModelFileError, match="'batch' must hold 1 <= min <= opt <= max"):
        TensorRTBackend(engine)
