"""The CPU flavour of INT8: u8 Q/DQ tuned for ONNX Runtime on x86 (what build/model.int8_cpu.onnx is).

TensorRT wants symmetric s8 Q/DQ (calibration.quantize, flavour "tensorrt"); ONNX Runtime on an AVX-512 VNNI
CPU runs a different graph fastest, so the CPU file is quantized separately from the same calibration set:
u8 activations, ReLU and MaxPool quantized too (no float round trips between convs), the transposed-conv
upsamplers rewritten into their exact sub-pixel form and kept float with the logits path. Measured by the
benchmark (bench/table.py) on the shipped model at 192x640: 8.6 -> 6.4 ms p50.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnxruntime.quantization import QuantType, quantize_static
from onnxruntime.quantization.calibrate import save_tensors_data

from calibration.quantize import (
    CALIBRATION_KEY,
    DEFAULT_PERCENTILE,
    ENTROPY_BINS,
    calibrate_ranges,
    input_name,
    quantization_options,
)
from export.onnx_export import set_metadata
from runtime.contract import PRECISION_KEY
from runtime.ioutil import atomic_write_bytes

CPU_TUNED_OPS = ["Conv", "Relu", "MaxPool"]


def subpixel_conv_transposes(model_path: Path, out_path: Path) -> int:
    """Rewrite each ConvTranspose with kernel 2s, stride s, padding s/2 (FCN's upsamplers) as Conv 3x3 +
    DepthToSpace(s), the sub-pixel form of the same arithmetic: output pixel q*s + r of the transposed
    conv is sum_t x[q + t] * w[-t*s + r + s/2] for t in {-1, 0, 1}, i.e. a 3x3 conv with s*s output
    phases per channel. ONNX Runtime's CPU ConvTranspose is a GEMM + col2im that took ~8% of the INT8 run
    time for the 8x upsampler; as a conv it runs in the NCHWc kernels. Returns how many were rewritten."""
    model = onnx.load(str(model_path))
    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    nodes, rewritten = [], 0
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        weight = weights.get(node.input[1]) if node.op_type == "ConvTranspose" else None
        if weight is None:
            nodes.append(node)
            continue
        w = numpy_helper.to_array(weight)
        stride = list(attrs.get("strides", [1, 1]))
        step = stride[0]
        plain = (attrs.get("group", 1) == 1 and not any(attrs.get("output_padding", [])) and "output_shape" not in attrs
                 and list(attrs.get("dilations", [1, 1])) == [1, 1] and stride == [step, step] and step % 2 == 0
                 and w.shape[2:] == (2 * step, 2 * step) and list(attrs.get("pads", [0] * 4)) == [step // 2] * 4
                 and len(node.input) == 2)
        if not plain:
            nodes.append(node)
            continue
        in_channels, out_channels = w.shape[:2]
        sub = np.zeros((out_channels, step, step, in_channels, 3, 3), np.float32)
        for ry in range(step):
            for rx in range(step):
                for ty in (-1, 0, 1):
                    for tx in (-1, 0, 1):
                        ky, kx = -ty * step + ry + step // 2, -tx * step + rx + step // 2
                        if 0 <= ky < 2 * step and 0 <= kx < 2 * step:
                            sub[:, ry, rx, :, ty + 1, tx + 1] = w[:, :, ky, kx].T
        name = f"{node.name or node.output[0]}_subpixel"
        graph.initializer.append(numpy_helper.from_array(
            sub.reshape(out_channels * step * step, in_channels, 3, 3), f"{name}_w"))
        nodes.append(helper.make_node("Conv", [node.input[0], f"{name}_w"], [f"{name}_phases"], name=name,
                                      kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("DepthToSpace", [f"{name}_phases"], [node.output[0]],
                                      name=f"{name}_d2s", blocksize=step, mode="CRD"))
        rewritten += 1
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(out_path))
    return rewritten


def quantize_cpu_tuned(prepared: Path, out_path: Path, tensors, method: str, metadata: dict[str, str],
                       identity: str, percentile: float = DEFAULT_PERCENTILE, bins: int = ENTROPY_BINS) -> Path:
    """u8 Q/DQ tuned for ONNX Runtime on x86; a thin variant of calibration.quantize.quantize_int8.

    The transposed-conv upsamplers are first rewritten into their exact sub-pixel form
    (subpixel_conv_transposes) and kept float.

    Measured on the w0.25 model at 192x640 (ORT 1.32 profile, 2 threads): quantizing ReLU and MaxPool as
    well lets ORT fold ReLU into the conv's output range and pool in u8, which removes the 34 float
    DequantizeLinear/QuantizeLinear round trips between convs that calibration's u8 model keeps
    (~18% of its run time; 9.6 -> 7.5 ms p50 in the benchmark). The first conv is quantized too, its
    input as symmetric s8: on an AVX-512 VNNI CPU without AMX a float first conv came out even (6.4 vs
    6.5 ms for the whole model), but on an Intel Xeon with AMX (2 threads, interleaved against torch)
    OpenVINO otherwise runs that conv in float and reorders its output to u8 for the next one: 3.56 ->
    3.28 ms (9.86x -> 10.30x torch eager FP32); ONNX Runtime 3.60x -> 3.76x.
    """
    with tempfile.TemporaryDirectory(prefix="roadseg-cpu-quant-") as scratch:
        temp_out, cache = Path(scratch) / "model.onnx", Path(scratch) / "ranges.json"
        rewritten = Path(scratch) / "subpixel.onnx"
        subpixel_conv_transposes(prepared, rewritten)
        prepared = rewritten
        options = quantization_options("cpu", method, percentile)
        ops = cpu_tuned_ops(prepared)
        options["op_types_to_quantize"] = ops
        options["nodes_to_exclude"] = upsampling_path_convs(prepared) + logits_path_adds(prepared, ops)
        # The normalised image is signed: as u8 it would need a nonzero zero point, which TensorRT's parser
        # rejects (every ONNX artifact must pass it). Symmetric s8 for the input alone; the ReLU outputs that
        # feed every later conv are >= 0, so their u8 zero point is 0 anyway.
        options["extra_options"]["TensorQuantOverrides"] = {
            input_name(prepared): [{"quant_type": QuantType.QInt8, "symmetric": True}]}
        ranges = calibrate_ranges(prepared, tensors, method, False, percentile, ops, bins)
        save_tensors_data(ranges, cache)
        quantize_static(str(prepared), str(temp_out), None, calibration_cache_path=str(cache), **options)
        model = onnx.load(str(temp_out))
    stamp = {**metadata, PRECISION_KEY: "int8",
             CALIBRATION_KEY: json.dumps({"method": method, "flavour": "cpu-tuned", "percentile": percentile,
                                          "ops": ops, "float_nodes": options["nodes_to_exclude"],
                                          "manifest_sha256": identity}, sort_keys=True)}
    set_metadata(model, stamp)
    onnx.checker.check_model(model)
    atomic_write_bytes(out_path, model.SerializeToString())
    return out_path


def cpu_tuned_ops(model_path: Path) -> list[str]:
    """CPU_TUNED_OPS plus what an inverted-residual encoder (EfficientNet-Lite) adds: ReLU6 as Clip, folded
    into its conv's output range like ReLU, and the residual Adds, so a block runs u8 from end to end."""
    graph = onnx.load(str(model_path), load_external_data=False).graph
    present = {node.op_type for node in graph.node}
    ops = list(CPU_TUNED_OPS)
    if "Clip" in present:
        ops.append("Clip")
    if set(logits_path_adds(model_path, ["Add"])) != {node.name for node in graph.node if node.op_type == "Add"}:
        ops.append("Add")
    return ops


def logits_path_adds(model_path: Path, ops: list[str]) -> list[str]:
    """The skip Adds downstream of the first upsampler (kept float with it) when Adds are quantized at all."""
    if "Add" not in ops:
        return []
    graph = onnx.load(str(model_path), load_external_data=False).graph
    downstream: set[str] = set()
    for node in graph.node:  # ONNX graphs are stored in topological order
        if node.name.endswith("_subpixel") or any(name in downstream for name in node.input):
            downstream.update(node.output)
    return [node.name for node in graph.node
            if node.op_type == "Add" and any(name in downstream for name in node.input)]


def upsampling_path_convs(model_path: Path) -> list[str]:
    """The sub-pixel upsamplers and the 1x1 score convs that feed them or the skip Adds: the logits path,
    kept float as calibration keeps its upsamplers float (the logits come straight out of it; these
    convs are well under 1% of the FLOPs)."""
    graph = onnx.load(str(model_path), load_external_data=False).graph
    upsamplers = {node.name for node in graph.node if node.op_type == "Conv" and node.name.endswith("_subpixel")}
    skip_adds = set(logits_path_adds(model_path, ["Add"]))  # not an encoder's residual Adds
    feeds = {i for node in graph.node if node.name in upsamplers or node.name in skip_adds for i in node.input}
    return [node.name for node in graph.node
            if node.name in upsamplers or (node.op_type == "Conv" and node.output[0] in feeds)]
