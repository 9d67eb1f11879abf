"""FLOPs of one forward pass, so the benchmark can put achieved GFLOP/s next to a latency.

Two ways, which the tests hold equal:
- `graph_flops(onnx_path)` walks the ONNX graph (Conv, ConvTranspose, MatMul, Gemm) with its inferred
  shapes. It needs the `onnx` package, which the training/export environment has.
- `fcn8s_flops(width, num_classes, height, width_px)` counts FCN-8s layer by layer from the model's
  metadata (width multiplier) and input size, for a slim runtime without `onnx`.
One multiply-add counts as 2 FLOPs; biases, ReLU, pooling and adds are left out (under 1% here).
"""

from __future__ import annotations

import math
from pathlib import Path

# VGG16's conv layout as train/model.py builds it ("M" = 2x2 max pool); the runtime may not import
# train/, so the layout is restated here and tests/test_bench.py checks it against the exported graph.
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
FC_CHANNELS = 4096
STRIDE = 32


def _scaled(channels: int, width: float) -> int:
    return max(8, int(round(channels * width)))


def fcn8s_flops(width: float, num_classes: int, height: int, width_px: int) -> int:
    """FLOPs of FCN-8s (VGG16 encoder scaled by `width`) on a 1 x 3 x height x width_px input."""
    rows, cols = math.ceil(height / STRIDE) * STRIDE, math.ceil(width_px / STRIDE) * STRIDE
    channels, total, pools = 3, 0, []
    for item in VGG16_CFG:
        if item == "M":
            rows, cols = rows // 2, cols // 2
            pools.append((rows, cols, channels))
            continue
        out = _scaled(item, width)
        total += 2 * rows * cols * out * channels * 9
        channels = out
    fc = _scaled(FC_CHANNELS, width)
    (h3, w3, c3), (h4, w4, c4), (h5, w5, _) = pools[2], pools[3], pools[4]
    total += 2 * h5 * w5 * fc * channels * 49  # fc6, 7x7
    total += 2 * h5 * w5 * fc * fc  # fc7
    total += 2 * h5 * w5 * num_classes * fc  # score_fr
    total += 2 * h4 * w4 * num_classes * c4 + 2 * h3 * w3 * num_classes * c3  # skip scores
    # Transposed convs: every input pixel scatters a k x k kernel to every output channel.
    total += 2 * h5 * w5 * num_classes * num_classes * 16 + 2 * h4 * w4 * num_classes * num_classes * 16
    total += 2 * h3 * w3 * num_classes * num_classes * 256
    return total


def _shapes(graph) -> dict[str, list[int]]:
    shapes: dict[str, list[int]] = {}
    for value in list(graph.input) + list(graph.value_info) + list(graph.output):
        dims = value.type.tensor_type.shape.dim
        # FLOPs are per frame: a symbolic batch axis (the first) counts as 1; other symbolic sides are unknown.
        if dims and all(d.HasField("dim_value") for d in dims[1:]):
            shapes[value.name] = [dims[0].dim_value if dims[0].HasField("dim_value") else 1,
                                  *(d.dim_value for d in dims[1:])]
    for tensor in graph.initializer:
        shapes[tensor.name] = list(tensor.dims)
    return shapes


def _node_flops(node, shapes: dict[str, list[int]]) -> int:
    def shape(index: int, outputs: bool = False) -> list[int] | None:
        names = node.output if outputs else node.input
        return shapes.get(names[index]) if index < len(names) else None

    if node.op_type == "Conv":
        weight, out = shape(1), shape(0, outputs=True)
        if weight and out:
            return 2 * math.prod(out) * math.prod(weight[1:])
    elif node.op_type == "ConvTranspose":
        x, weight = shape(0), shape(1)
        if x and weight:
            return 2 * math.prod(x) * math.prod(weight[1:])
    elif node.op_type in ("MatMul", "Gemm"):
        a, out = shape(0), shape(0, outputs=True)
        if a and out:
            transposed = node.op_type == "Gemm" and any(x.name == "transA" and x.i for x in node.attribute)
            return 2 * math.prod(out) * (a[-2] if transposed else a[-1])
    return 0


def graph_flops(onnx_path: str | Path) -> int:
    """FLOPs counted from the ONNX graph's Conv/ConvTranspose/MatMul/Gemm nodes and inferred shapes."""
    import onnx  # the export environment's package; the slim runtime falls back to fcn8s_flops

    model = onnx.shape_inference.infer_shapes(onnx.load(str(onnx_path)))
    shapes = _shapes(model.graph)
    return sum(_node_flops(node, shapes) for node in model.graph.node)


def model_flops(onnx_path: str | Path, width: float, num_classes: int, height: int, width_px: int
                ) -> tuple[int, str]:
    """(FLOPs, how they were counted): the graph when `onnx` is installed, else the FCN-8s formula."""
    try:
        return graph_flops(onnx_path), "onnx graph"
    except ImportError:
        return fcn8s_flops(width, num_classes, height, width_px), "fcn8s formula"
