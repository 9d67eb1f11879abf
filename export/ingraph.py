"""Preprocessing and postprocessing inside the model: the frame in as the camera gives it, the road mask out.

    python -m export.ingraph build/model.int8_cpu.onnx [--probability] [--video DRIVE.mp4]

wraps any roadseg ONNX (FP32, FP16, INT8 Q/DQ) into `<name>.ingraph.onnx`:
- input `frame`: uint8 BGR, N x H x W x 3 at the model's resolution (the runtime only resizes);
- in the graph: cast, BGR -> RGB, ImageNet normalisation (the contract's constants, from the model's own
  metadata) and NHWC -> NCHW, then the unchanged core, then ArgMax over the classes;
- output `road_mask`: uint8 N x H x W, 1 = road; with --probability also `road_probability` (float32).
The wrapper is added around the finished core, so an INT8 core's Q/DQ nodes stay as calibrated and the pre/post
ops stay in float (nothing of them is quantized). `roadseg.io` in the metadata names the form; models without
it take the float tensor and return logits, and the runtime runs both.

Gate: the wrapped model's masks must equal the float-input model's (as the runtime computes them) on >= 99.9 %
of the pixels of every frame of the KITTI drive; otherwise nothing is written (exit 1).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from runtime.backends import open_backend
from runtime.contract import IN_GRAPH_IO, IO_KEY, PREPROCESS_KEY, PreprocessSpec
from runtime.ioutil import atomic_write_bytes, fail
from runtime.output_policy import place, temporary_name
from runtime.paths import DEFAULT_VIDEO
from runtime.postprocess import MaskPostprocessor
from runtime.preprocess import FramePreprocessor
from runtime.sources import read_video_frames

FRAME_INPUT = "frame"
MASK_OUTPUT = "road_mask"
PROBABILITY_OUTPUT = "road_probability"
MIN_AGREEMENT = 0.999


class InGraphError(RuntimeError):
    pass


def _const(name: str, array: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(array, name))


def wrap(core: onnx.ModelProto, probability: bool = False) -> onnx.ModelProto:
    """The core graph between in-graph pre- and postprocessing (a new model; `core` is not changed)."""
    metadata = {entry.key: entry.value for entry in core.metadata_props}
    if PREPROCESS_KEY not in metadata:
        raise InGraphError(f"not a roadseg model (no '{PREPROCESS_KEY}' metadata)")
    if IO_KEY in metadata:
        raise InGraphError("already has in-graph pre/postprocessing")
    spec = PreprocessSpec.from_json(metadata[PREPROCESS_KEY])
    model = onnx.ModelProto()
    model.CopyFrom(core)
    graph = model.graph
    if len(graph.input) != 1 or len(graph.output) != 1:
        raise InGraphError("expected one input (the image tensor) and one output (the logits)")
    image, logits = graph.input[0], graph.output[0]
    batch_dim = image.type.tensor_type.shape.dim[0]
    batch = batch_dim.dim_param or batch_dim.dim_value or 1
    height, width = spec.size_hw
    scale, bias = spec.channel_scale_bias()  # RGB order
    pre = [
        helper.make_node("Cast", [FRAME_INPUT], ["pre_float"], to=TensorProto.FLOAT),
        _const("pre_rgb_order", np.array([2, 1, 0], np.int64)),
        helper.make_node("Gather", ["pre_float", "pre_rgb_order"], ["pre_rgb"], axis=3),
        _const("pre_scale", scale.reshape(1, 1, 1, 3)),
        helper.make_node("Mul", ["pre_rgb", "pre_scale"], ["pre_scaled"]),
        _const("pre_bias", bias.reshape(1, 1, 1, 3)),
        helper.make_node("Add", ["pre_scaled", "pre_bias"], ["pre_normalised"]),
        helper.make_node("Transpose", ["pre_normalised"], [image.name], perm=[0, 3, 1, 2]),
    ]
    post = [
        helper.make_node("ArgMax", [logits.name], ["post_class"], axis=1, keepdims=0),
        _const("post_road_class", np.array(spec.road_index, np.int64)),
        helper.make_node("Equal", ["post_class", "post_road_class"], ["post_is_road"]),
        helper.make_node("Cast", ["post_is_road"], [MASK_OUTPUT], to=TensorProto.UINT8),
    ]
    outputs = [helper.make_tensor_value_info(MASK_OUTPUT, TensorProto.UINT8, [batch, height, width])]
    if probability:
        post += [helper.make_node("Softmax", [logits.name], ["post_softmax"], axis=1),
                 helper.make_node("Gather", ["post_softmax", "post_road_class"], [PROBABILITY_OUTPUT], axis=1)]
        outputs.append(helper.make_tensor_value_info(PROBABILITY_OUTPUT, TensorProto.FLOAT, [batch, height, width]))
    nodes = pre + list(graph.node) + post
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.input[:]
    graph.input.append(helper.make_tensor_value_info(FRAME_INPUT, TensorProto.UINT8, [batch, height, width, 3]))
    del graph.output[:]
    graph.output.extend(outputs)
    io = {"form": IN_GRAPH_IO, "input": FRAME_INPUT, "outputs": [o.name for o in outputs]}
    entry = model.metadata_props.add()
    entry.key, entry.value = IO_KEY, json.dumps(io, sort_keys=True)
    onnx.checker.check_model(model)
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def mask_agreement(core_path: Path, wrapped_path: Path, frames: list[np.ndarray]) -> float:
    """Lowest per-frame share of equal mask pixels at the source resolution, both run as the runtime runs them."""
    lowest = 1.0
    runs = []
    for path in (core_path, wrapped_path):
        backend = open_backend(path, "cpu")
        preprocess = FramePreprocessor(backend.spec, uint8_input=backend.in_graph)
        postprocess = MaskPostprocessor(backend.spec.road_index)
        runs.append([postprocess(backend.infer(preprocess(frame))[0], frame.shape[:2]).copy() for frame in frames])
    for reference, candidate in zip(*runs, strict=True):
        lowest = min(lowest, float((reference == candidate).mean()))
    return lowest


def wrap_file(core_path: Path, video: Path, probability: bool = False, out_path: Path | None = None) -> Path:
    """`<core>.ingraph.onnx` next to the core, written only once the mask gate passed."""
    out_path = out_path or core_path.with_suffix(".ingraph.onnx")
    frames = read_video_frames(video)
    if not frames:
        raise InGraphError(f"{video}: no frames for the mask gate")
    try:
        wrapped = wrap(onnx.load(str(core_path)), probability)
    except (InGraphError, onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise InGraphError(f"{core_path}: cannot wrap it ({error})") from error
    temp = temporary_name(out_path)
    try:
        atomic_write_bytes(temp, wrapped.SerializeToString())
        agreement = mask_agreement(core_path, temp, frames)
        if agreement < MIN_AGREEMENT:
            raise InGraphError(f"{out_path}: MASK GATE FAILED, {agreement * 100:.3f} % of pixels equal to "
                               f"{core_path.name}'s on the worst frame (floor {MIN_AGREEMENT * 100:.1f} %)")
        place(temp, out_path)
    finally:
        temp.unlink(missing_ok=True)
    print(f"wrote {out_path}  (uint8 BGR NHWC in, uint8 road mask out{', + road probability' if probability else ''}; "
          f"masks equal to {core_path.name}'s on >= {agreement * 100:.3f} % of pixels of each of {len(frames)} "
          f"frames of {video.name})")
    return out_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.ingraph", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", type=Path, help="roadseg ONNX files (float input, logits output)")
    parser.add_argument("--probability", action="store_true", help="also output the road probability")
    parser.add_argument("--video", type=Path, default=Path(DEFAULT_VIDEO), help="the KITTI drive for the gate")
    args = parser.parse_args(argv)
    try:
        for path in args.models:
            if not path.is_file():
                raise InGraphError(f"{path}: model file not found")
            wrap_file(path, args.video, args.probability)
    except InGraphError as error:
        return fail(error, 1)
    except (ValueError, OSError) as error:
        return fail(error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
