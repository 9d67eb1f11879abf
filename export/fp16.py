"""FP32 ONNX -> FP16 ONNX (FP16 weights and activations, FP32 input/output), and a faithful CPU emulation
of it for the accuracy gate.

Conversion uses ONNX Runtime's own `float16.convert_float_to_float16(keep_io_types=True)` (the same code as
onnxconverter-common, shipped inside onnxruntime, so no extra dependency): one Cast after the input and
one before the output, everything between in FP16. That is what TensorRT 11's strongly typed networks and
the ORT CUDA provider take.

Scoring it on a CPU: ONNX Runtime's CPU provider has no FP16 Conv on x86, so it silently inserts casts and
runs the whole graph in FP32 with FP16-rounded weights (seen in its optimized graph: fp32 NCHWc convs,
only the final Cast left). That would score weight rounding only. `emulation_graph` therefore builds an
FP32 graph from the FP16 file where the weights are the FP16 values (exact in FP32) and every node's
output is rounded through FP16 (Cast to FP16 and back), run with graph optimisations that keep those
casts. That is FP16 storage of every tensor with FP32 accumulation, which is what TensorRT's and cuDNN's
FP16 convolutions do (FP16 in/out, FP32 accumulate), so the gate measures the real FP16 error.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from runtime.contract import PRECISION_KEY
from runtime.ioutil import atomic_write_bytes

# Ops whose outputs are integers (a Q/DQ model's QuantizeLinear): nothing to round through FP16.
INTEGER_OUTPUT_OPS = frozenset({"QuantizeLinear"})


def convert_fp16(fp32: onnx.ModelProto) -> onnx.ModelProto:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(fp32, keep_io_types=True, disable_shape_infer=False)
    # The converter appends its IO casts at the end; onnx.checker (and TensorRT's parser) want topo order.
    topological_sort(model.graph)
    for entry in model.metadata_props:
        if entry.key == PRECISION_KEY:
            entry.value = "fp16"
    return model


def topological_sort(graph: onnx.GraphProto) -> None:
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(name in available for name in n.input)]
        if not ready:
            raise ValueError("graph has a cycle or an undefined input")
        for node in ready:
            ordered.append(node)
            available.update(node.output)
        pending = [n for n in pending if all(n is not r for r in ready)]
    copies = [onnx.NodeProto() for _ in ordered]
    for copy, node in zip(copies, ordered, strict=True):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)


def write_fp16(fp32_path: str | Path, out_path: str | Path) -> onnx.ModelProto:
    model = convert_fp16(onnx.load(str(fp32_path)))
    onnx.checker.check_model(model)
    model = onnx.shape_inference.infer_shapes(model)
    atomic_write_bytes(out_path, model.SerializeToString())
    return model


def emulation_graph(fp16: onnx.ModelProto) -> onnx.ModelProto:
    """FP32 graph that rounds every weight and every intermediate tensor to FP16 (see module doc)."""
    model = onnx.ModelProto()
    model.CopyFrom(fp16)
    graph = model.graph
    for index, initializer in enumerate(graph.initializer):
        if initializer.data_type == TensorProto.FLOAT16:
            values = numpy_helper.to_array(initializer).astype(np.float32)
            graph.initializer[index].CopyFrom(numpy_helper.from_array(values, initializer.name))
    outputs = {o.name for o in graph.output}
    new_nodes = []
    for node in graph.node:
        copy = onnx.NodeProto()
        if node.op_type == "Cast":
            # The IO casts become identities in FP32; the FP16 rounding below still applies to them.
            copy.CopyFrom(helper.make_node("Identity", [node.input[0]], list(node.output), name=node.name))
        else:
            copy.CopyFrom(node)
        rounding = []
        for position, output in enumerate(copy.output):
            if not output or output in outputs or node.op_type in INTEGER_OUTPUT_OPS:
                continue
            raw, half = f"{output}__fp32", f"{output}__fp16"
            copy.output[position] = raw
            rounding.append(helper.make_node("Cast", [raw], [half], to=TensorProto.FLOAT16))
            rounding.append(helper.make_node("Cast", [half], [output], to=TensorProto.FLOAT))
        new_nodes += [copy, *rounding]
    del graph.node[:]
    graph.node.extend(new_nodes)
    del graph.value_info[:]
    onnx.checker.check_model(model)
    return model


def write_emulation(fp16_path: str | Path, out_path: str | Path) -> Path:
    atomic_write_bytes(out_path, emulation_graph(onnx.load(str(fp16_path))).SerializeToString())
    return Path(out_path)
