"""FP32 ONNX -> INT8 Q/DQ ONNX with ONNX Runtime's static quantization, in two flavours.

- "tensorrt" (build/model.int8.onnx): what TensorRT's explicit quantization wants: symmetric int8 with zero
  point 0 for activations and weights, per-channel weight scales on the output-channel axis, Q/DQ only
  around Conv (TensorRT fuses DQ->Conv(+ReLU)->Q and moves Q/DQ across MaxPool itself). The three 2-channel
  ConvTranspose upsamplers and the skip Adds stay in float: they are a rounding error of the compute and
  the logits come straight out of them.
- "cpu" (build/model.int8_cpu.onnx): uint8 activations (asymmetric, zero point free) and int8 weights, which
  ONNX Runtime runs fastest on an AVX-512 VNNI CPU. Same Q/DQ format, so it also loads anywhere ORT runs.

Why ONNX Runtime's quantizer rather than NVIDIA's modelopt: both emit the same QuantizeLinear/
DequantizeLinear graph for this CNN, but onnxruntime is already a pinned dependency and runs on any CPU;
modelopt's ONNX extra pins onnxruntime-gpu (which owns the same `onnxruntime` module as the CPU build)
and an older onnx, and by default turns the unquantized rest into FP16, which would hide INT8's own error
in the accuracy gate. One dependency fewer and an FP32 rest that isolates the INT8 error decided it.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    create_calibrator,
    quant_pre_process,
    quantize_static,
)
from onnxruntime.quantization.calibrate import save_tensors_data

from export.onnx_export import set_metadata
from runtime.artifacts import INT8_ONNX
from runtime.contract import CALIBRATION_KEY, PRECISION_KEY
from runtime.ioutil import atomic_write_bytes

METHODS = {"entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile,
           "minmax": CalibrationMethod.MinMax}
FLAVOURS = ("tensorrt", "cpu")
DEFAULT_PERCENTILE = 99.99
QUANTIZED_OPS = ["Conv"]
ENTROPY_BINS = 2048
COLLECT_CHUNK = 8


class TensorReader(CalibrationDataReader):
    """Feeds the stored calibration tensors one frame at a time (the exported model has batch 1)."""

    def __init__(self, tensors: np.ndarray, input_name: str) -> None:
        self.tensors = tensors
        self.input_name = input_name
        self.position = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= len(self.tensors):
            return None
        frame = np.ascontiguousarray(self.tensors[self.position : self.position + 1], np.float32)
        self.position += 1
        return {self.input_name: frame}

    def rewind(self) -> None:
        self.position = 0


def input_name(model_path: str | Path) -> str:
    model = onnx.load(str(model_path), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}
    return next(i.name for i in model.graph.input if i.name not in initializers)


def preprocess_for_quantization(fp32_path: str | Path, out_path: str | Path) -> Path:
    """ORT's recommended pre-pass (shape inference + graph cleanup) before static quantization."""
    quant_pre_process(str(fp32_path), str(out_path), skip_symbolic_shape=False)
    return Path(out_path)


def quantization_options(flavour: str, method: str, percentile: float) -> dict:
    if flavour not in FLAVOURS:
        raise ValueError(f"--flavour {flavour}: expected one of {', '.join(FLAVOURS)}")
    if method not in METHODS:
        raise ValueError(f"--method {method}: expected one of {', '.join(METHODS)}")
    symmetric = flavour == "tensorrt"
    extra = {
        "ActivationSymmetric": symmetric,
        "WeightSymmetric": True,
        # One Q/DQ pair per consumer: TensorRT fuses each pair into its own consumer.
        "DedicatedQDQPair": symmetric,
        "CalibTensorRangeSymmetric": symmetric,
        "CalibPercentile": percentile,
    }
    # ORT quantizes biases to int32 by default; TensorRT's DequantizeLinear takes only 8-bit (and FP8/INT4)
    # inputs, so its parser rejects such a file (seen with TensorRT-RTX: "fc6.bias_DequantizeLinear: input has
    # type Int32"). Float biases for every flavour, so every ONNX artifact passes the real parser: on the CPU file
    # they cost ~2 % of the speed-up (interleaved, Zen 4, 2 threads: ORT 4.41x -> 4.33x, OpenVINO 5.31x -> 5.07x).
    extra["QuantizeBias"] = False
    return {
        "quant_format": QuantFormat.QDQ,
        "per_channel": True,
        "reduce_range": False,
        "activation_type": QuantType.QInt8 if symmetric else QuantType.QUInt8,
        "weight_type": QuantType.QInt8,
        "op_types_to_quantize": QUANTIZED_OPS,
        "calibrate_method": METHODS[method],
        "extra_options": extra,
    }


def calibrate_ranges(model_path: str | Path, tensors: np.ndarray, method: str, symmetric: bool,
                     percentile: float = DEFAULT_PERCENTILE, op_types: list[str] | None = None,
                     bins: int = ENTROPY_BINS):
    """ORT TensorsData for the tensors feeding `op_types` (all float tensors when None).

    Run here rather than inside quantize_static because quantize_static does not forward the histogram
    size: its entropy default of 128 bins equals the 128 quantized bins, which leaves KL divergence a
    single candidate threshold (= min-max, seen). TensorRT's entropy calibrator uses 2048 bins; so do we.
    """
    extra: dict = {"symmetric": symmetric}
    if method != "minmax":
        extra.update(num_bins=bins, num_quantized_bins=128, percentile=percentile)
    with tempfile.TemporaryDirectory(prefix="roadseg-calib-") as scratch:
        calibrator = create_calibrator(str(model_path), op_types, str(Path(scratch) / "augmented.onnx"),
                                       calibrate_method=METHODS[method], extra_options=extra)
        name = input_name(model_path)
        # In chunks: ORT keeps every frame's every tensor until collect_data returns (GBs for 64 frames);
        # its collectors merge across calls, so chunking changes memory, not the ranges' definition.
        for start in range(0, len(tensors), COLLECT_CHUNK):
            calibrator.collect_data(TensorReader(tensors[start : start + COLLECT_CHUNK], name))
        return calibrator.compute_data()


def quantize_int8(prepared_path: str | Path, out_path: str | Path, tensors: np.ndarray, method: str,
                  flavour: str = "tensorrt", percentile: float = DEFAULT_PERCENTILE,
                  metadata: dict[str, str] | None = None, calibration_identity: str = "",
                  bins: int = ENTROPY_BINS) -> Path:
    """Quantize, stamp the roadseg metadata (precision int8), and write atomically."""
    options = quantization_options(flavour, method, percentile)
    out_path = Path(out_path)
    symmetric = flavour == "tensorrt"
    ranges = calibrate_ranges(prepared_path, tensors, method, symmetric, percentile, QUANTIZED_OPS, bins)
    with tempfile.TemporaryDirectory(prefix="roadseg-quant-") as scratch:
        temp_out, cache = Path(scratch) / INT8_ONNX, Path(scratch) / "ranges.json"
        save_tensors_data(ranges, cache)
        quantize_static(str(prepared_path), str(temp_out), None, calibration_cache_path=str(cache), **options)
        model = onnx.load(str(temp_out))
    stamp = dict(metadata or {})
    stamp[PRECISION_KEY] = "int8"
    stamp[CALIBRATION_KEY] = json.dumps({"method": method, "flavour": flavour, "percentile": percentile,
                                         "manifest_sha256": calibration_identity}, sort_keys=True)
    set_metadata(model, stamp)
    onnx.checker.check_model(model)
    atomic_write_bytes(out_path, model.SerializeToString())
    return out_path


def activation_ranges(fp32_path: str | Path, tensors: np.ndarray, method: str,
                      percentile: float = DEFAULT_PERCENTILE, bins: int = ENTROPY_BINS) -> dict:
    """Symmetric ranges of every float tensor of the FP32 graph (implicit INT8 needs all of them)."""
    return dict(calibrate_ranges(fp32_path, tensors, method, True, percentile, None, bins).items())


def absolute_max(ranges: dict) -> dict[str, float]:
    """Tensor name -> symmetric range |max|, the one number a TensorRT calibration cache stores."""
    result = {}
    for name, value in ranges.items():
        low, high = value.range_value
        result[name] = max(abs(float(np.min(low))), abs(float(np.max(high))))
    return dict(sorted(result.items()))


def trt_cache_text(amax: dict[str, float], header: str) -> str:
    """TensorRT's native calibration cache: a header line, then `tensor: <big-endian float32 scale hex>`.

    The scale is |max| / 127 (symmetric int8). The header names the TensorRT version and calibrator,
    e.g. TRT-8601-EntropyCalibration2; the engine builder writes it for the TensorRT it runs.
    """
    lines = [header]
    for name, value in sorted(amax.items()):
        # The float's IEEE bits as 8 hex digits, most significant first (numpy scalars are native-endian,
        # so go through a big-endian array).
        scale = np.array([max(value, 1e-12) / 127.0], ">f4")
        lines.append(f"{name}: {scale.tobytes().hex()}")
    return "\n".join(lines) + "\n"


def write_calibration_tables(ranges: dict, out_dir: str | Path, method: str, identity: str) -> Path:
    """ONNX Runtime's TensorRT-provider tables (calibration.cache/.json/.flatbuffers) and ranges.json,
    the version-free |max| table from which the engine builder writes TensorRT's own cache."""
    from onnxruntime.quantization import write_calibration_table

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_calibration_table(ranges, dir=str(out_dir))
    table = {"method": method, "manifest_sha256": identity, "amax": absolute_max(ranges)}
    path = out_dir / "ranges.json"
    atomic_write_bytes(path, (json.dumps(table, indent=1, sort_keys=True) + "\n").encode())
    return path
