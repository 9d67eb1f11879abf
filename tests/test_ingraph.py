"""In-graph pre/postprocessing (export/ingraph.py): uint8 frames in, road mask out, for FP32, FP16 and INT8 Q/DQ
cores; the runtime streams both forms with the same masks; a model whose metadata lies is refused."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from conftest import run_cli
from stream_helpers import KITTI_VIDEO, run_stream, tiny_onnx_model

from export.ingraph import FRAME_INPUT, MASK_OUTPUT, PROBABILITY_OUTPUT, mask_agreement, wrap, wrap_file
from runtime.backends import open_backend
from runtime.contract import IO_KEY, ModelFileError
from runtime.ioutil import atomic_write_bytes
from runtime.preprocess import FramePreprocessor
from runtime.sources import read_video_frames

pytestmark = pytest.mark.skipif(not KITTI_VIDEO.is_file(), reason=f"KITTI video not found at {KITTI_VIDEO}")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return tiny_onnx_model(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def drive() -> list[np.ndarray]:
    return read_video_frames(KITTI_VIDEO)


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def test_fp32_wrapped_model_takes_uint8_frames_and_gives_the_same_masks(tiny: Path, tmp_path: Path, drive):
    out = wrap_file(tiny, KITTI_VIDEO, probability=True, out_path=tmp_path / "tiny.ingraph.onnx")
    model = onnx.load(str(out))
    (frame_input,) = model.graph.input
    assert frame_input.name == FRAME_INPUT and frame_input.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = frame_input.type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [96, 320, 3]  # the core's batch axis
    outputs = {o.name: o.type.tensor_type.elem_type for o in model.graph.output}
    assert outputs == {MASK_OUTPUT: onnx.TensorProto.UINT8, PROBABILITY_OUTPUT: onnx.TensorProto.FLOAT}
    assert json.loads({p.key: p.value for p in model.metadata_props}[IO_KEY])["outputs"] == [MASK_OUTPUT,
                                                                                             PROBABILITY_OUTPUT]
    assert mask_agreement(tiny, out, drive) >= 0.999

    backend = open_backend(out, "cpu")
    assert backend.in_graph
    preprocess = FramePreprocessor(backend.spec, uint8_input=True)
    batch = preprocess(drive[40])
    assert batch.dtype == np.uint8 and batch.shape == (1, 96, 320, 3)
    mask, probability = backend.ort_session.run(None, {FRAME_INPUT: batch})
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1} and 0.05 < mask.mean() < 0.95
    # The probability output agrees with the mask (two classes: road wins where its probability is above 1/2).
    assert ((probability > 0.5) == (mask == 1)).mean() > 0.999


def test_fp16_and_int8_qdq_cores_wrap_with_the_pre_post_left_in_float(tiny: Path, tmp_path: Path, drive):
    from calibration.quantize import preprocess_for_quantization, quantize_int8
    from export.fp16 import write_fp16

    fp16 = tmp_path / "tiny.fp16.onnx"
    write_fp16(tiny, fp16)
    preprocess = FramePreprocessor(open_backend(tiny, "cpu").spec)
    tensors = np.concatenate([preprocess(frame).copy() for frame in drive[::12]])
    prepared = preprocess_for_quantization(tiny, tmp_path / "tiny.prep.onnx")
    int8 = quantize_int8(prepared, tmp_path / "tiny.int8.onnx", tensors, "minmax",
                         metadata={p.key: p.value for p in onnx.load(str(tiny)).metadata_props})
    for core in (fp16, int8):
        out = wrap_file(core, KITTI_VIDEO, out_path=tmp_path / f"{core.stem}.ingraph.onnx")
        wrapped, original = onnx.load(str(out)), onnx.load(str(core))
        assert mask_agreement(core, out, drive) >= 0.999
        counts, core_counts = op_counts(wrapped), op_counts(original)
        # Nothing of the wrapper is quantized: the Q/DQ pairs are exactly the calibrated core's.
        for op in ("QuantizeLinear", "DequantizeLinear"):
            assert counts.get(op, 0) == core_counts.get(op, 0)
        consumers = {name for node in wrapped.graph.node if node.op_type == "QuantizeLinear" for name in node.input}
        assert not any(name.startswith(("pre_", "post_")) or name == FRAME_INPUT for name in consumers)
    assert op_counts(onnx.load(str(int8))).get("QuantizeLinear", 0) > 10


def test_the_runtime_streams_both_forms_to_the_same_masks(tiny: Path, tmp_path: Path):
    wrapped = wrap_file(tiny, KITTI_VIDEO, out_path=tmp_path / "tiny.ingraph.onnx")
    folders = {}
    for name, model in (("float", tiny), ("ingraph", wrapped)):
        folders[name] = tmp_path / f"masks_{name}"
        result = run_stream(str(KITTI_VIDEO), "--model", str(model), "--headless", "--quiet",
                            "--save-masks", str(folders[name]))
        assert result.returncode == 0, result.stderr
    equal = total = 0
    for path in sorted(folders["float"].glob("*.png")):
        reference = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        candidate = cv2.imread(str(folders["ingraph"] / path.name), cv2.IMREAD_UNCHANGED)
        equal += int((reference == candidate).sum())
        total += reference.size
    assert total == 108 * 376 * 1242 and equal / total >= 0.999


def test_metadata_that_misstates_the_form_is_refused(tiny: Path, tmp_path: Path):
    model = onnx.load(str(tiny))
    entry = model.metadata_props.add()
    entry.key, entry.value = IO_KEY, json.dumps({"form": "uint8_bgr_nhwc_to_road_mask"})
    liar = tmp_path / "liar.onnx"
    atomic_write_bytes(liar, model.SerializeToString())
    with pytest.raises(ModelFileError, match="input 'image' is float32, expected uint8"):
        open_backend(liar, "cpu")
    with pytest.raises(Exception, match="already has in-graph"):
        wrap(onnx.load(str(wrap_file(tiny, KITTI_VIDEO, out_path=tmp_path / "w.onnx"))))


def test_tensorrt_rtx_parses_the_wrapped_graph(tiny: Path, tmp_path: Path):
    trt = pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is not installed here")
    wrapped = wrap_file(tiny, KITTI_VIDEO, out_path=tmp_path / "tiny.ingraph.onnx")
    logger = trt.Logger(trt.Logger.ERROR)
    network = trt.Builder(logger).create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse_from_file(str(wrapped)), [parser.get_error(i).desc() for i in range(parser.num_errors)]
    assert network.get_input(0).dtype == trt.DataType.UINT8
    assert network.get_output(0).dtype == trt.DataType.UINT8


def test_evaluating_an_in_graph_model_is_one_line_not_a_traceback(tiny: Path, tmp_path: Path, synthetic_kitti):
    wrapped = wrap_file(tiny, KITTI_VIDEO, out_path=tmp_path / "tiny.ingraph.onnx")
    result = run_cli("-m", "train.evaluate", "--model", str(wrapped), "--data", str(synthetic_kitti),
                     "--split", "all", "--no-progress")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "in-graph model returns the road mask" in lines[0]


def test_export_writes_the_in_graph_form_by_default_only_where_it_wins(monkeypatch, capsys):
    import runtime.backends
    from export.__main__ import want_in_graph

    monkeypatch.setattr(runtime.backends, "available_providers", lambda: ["CPUExecutionProvider"])
    assert not want_in_graph("auto") and want_in_graph("yes") and not want_in_graph("no")
    assert "not written (--in-graph auto: ONNX Runtime here has no CUDA provider" in capsys.readouterr().out
    monkeypatch.setattr(runtime.backends, "available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert want_in_graph("auto") and not want_in_graph("no")
