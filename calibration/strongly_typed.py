"""INT8 for strongly typed TensorRT (11.x and TensorRT-RTX): the Q/DQ model with its float rest in FP16.

TensorRT 8.6/10 build model.int8.onnx with the INT8 and FP16 builder flags, so the layers left unquantized
(the upsamplers, the skip Adds, the I/O) run in FP16. A strongly typed network has no flags: every tensor
keeps the type the ONNX gives it, so the same file would run those layers in FP32 and an "int8" engine would
be slower there than the TensorRT 10 one under the same label. model.int8_fp16.onnx is the same Q/DQ graph
(same scales, same int8 weights) with every float tensor in FP16 and FP32 input/output, converted by ONNX
Runtime's float16 converter like model.fp16.onnx. FP16 Q/DQ scales need opset 19, so the graph is lifted to
19 first. It is scored on the CPU through the FP16 emulation (export/fp16.py).
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import version_converter

from runtime.contract import PRECISION_KEY
from runtime.ioutil import atomic_write_bytes

FP16_QDQ_OPSET = 19  # QuantizeLinear/DequantizeLinear take FP16 scales from opset 19


def int8_fp16_model(int8: onnx.ModelProto) -> onnx.ModelProto:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from export.fp16 import topological_sort

    default = next((o for o in int8.opset_import if o.domain in ("", "ai.onnx")), None)
    if default is None or default.version < FP16_QDQ_OPSET:
        int8 = version_converter.convert_version(int8, FP16_QDQ_OPSET)
    model = convert_float_to_float16(int8, keep_io_types=True, disable_shape_infer=False)
    topological_sort(model.graph)
    for entry in model.metadata_props:
        if entry.key == PRECISION_KEY:
            entry.value = "int8"
    onnx.checker.check_model(model)
    return model


def write_int8_fp16(int8_path: str | Path, out_path: str | Path) -> Path:
    model = int8_fp16_model(onnx.load(str(int8_path)))
    atomic_write_bytes(out_path, model.SerializeToString())
    return Path(out_path)
