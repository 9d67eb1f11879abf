"""The ONNX files one benchmark configuration needs: FP32 at a given input size, and both INT8 flavours.

    python -m train.bench_prepare (--checkpoint PATH | --random-width W) --size HxW --out DIR
    python -m train.bench_prepare --onnx build/model.fp32.onnx --out DIR
                                  [--calibration-source KITTI_DIR] [--calibration-frames 32] [--method entropy]

The benchmark (runtime/bench.py) cannot export: the runtime never imports torch. It launches this module
as a subprocess for each (model, size) it has no ONNX files for. Export and quantization are the project's
own (export.onnx_export.export_onnx, calibration.quantize.quantize_int8 with the calibration set built by
calibration.dataset), so the benchmarked files are made exactly like the shipped ones, only at other sizes.
`--random-width` builds an untrained FCN-8s (seeded, so every run measures the same graph): its speed is
that of the trained model, its accuracy is meaningless and the benchmark reports none.
Writes DIR/model.fp32.onnx, DIR/model.int8.onnx (TensorRT Q/DQ, s8 activations), DIR/model.int8_cpu.onnx
(u8 activations), DIR/model.int8_cpu_tuned.onnx (u8, ReLU/MaxPool quantized too, first conv float: see
quantize_cpu_tuned) and DIR/prepared.json last, as the commit point of the folder. With --onnx FP32 only
the tuned flavour is written (the build folder has the others).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

from runtime.ioutil import atomic_write_text, fail

DEFAULT_METHOD = "entropy"
CPU_TUNED_OPS = ["Conv", "Relu", "MaxPool"]
PREPARED_NAME = "prepared.json"


def parse_size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(part) for part in text.lower().split("x"))
    except ValueError as error:
        raise ValueError(f"--size {text}: expected HxW, e.g. 160x576") from error
    if height <= 0 or width <= 0:
        raise ValueError(f"--size {text}: sides must be positive")
    return height, width


def build_model(checkpoint: str | None, random_width: float | None, size: tuple[int, int]):
    """(model, spec at `size`, arch, summary): a checkpoint's weights, or a seeded untrained model."""
    import torch

    from runtime.preprocess import PreprocessSpec
    from train.model import FCN8s

    if checkpoint:
        from train.checkpoint import load_model

        model, spec, payload = load_model(checkpoint)
        summary = {**payload.get("summary", {}), "benchmark_size": list(size)}
        arch = payload["arch"]
    else:
        torch.manual_seed(0)
        model = FCN8s(num_classes=2, width=float(random_width)).eval()
        spec, arch = PreprocessSpec(*size), model.arch()
        summary = {"untrained": True, "seed": 0, "benchmark_size": list(size)}
    return model, dataclasses.replace(spec, input_height=size[0], input_width=size[1]), arch, summary


def first_conv(model_path: Path) -> str:
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    return next(node.name for node in graph.node if node.op_type == "Conv")


def subpixel_conv_transposes(model_path: Path, out_path: Path) -> int:
    """Rewrite each ConvTranspose with kernel 2s, stride s, padding s/2 (FCN's upsamplers) as Conv 3x3 +
    DepthToSpace(s), the sub-pixel form of the same arithmetic: output pixel q*s + r of the transposed
    conv is sum_t x[q + t] * w[-t*s + r + s/2] for t in {-1, 0, 1}, i.e. a 3x3 conv with s*s output
    phases per channel. ONNX Runtime's CPU ConvTranspose is a GEMM + col2im that took ~8% of the INT8 run
    time for the 8x upsampler; as a conv it runs in the NCHWc kernels. Returns how many were rewritten."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

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
                       identity: str) -> Path:
    """u8 Q/DQ tuned for ONNX Runtime on x86; a thin variant of calibration.quantize.quantize_int8.

    The transposed-conv upsamplers are first rewritten into their exact sub-pixel form
    (subpixel_conv_transposes) and kept float.

    Measured on the w0.25 model at 192x640 (ORT 1.32 profile, 2 threads): quantizing ReLU and MaxPool as
    well lets ORT fold ReLU into the conv's output range and pool in u8, which removes the 34 float
    DequantizeLinear/QuantizeLinear round trips between convs that calibration's u8 model keeps
    (~18% of its run time; 9.6 -> 7.5 ms p50 in the benchmark). The first conv (3 input channels,
    K = 27) runs at ~70 GOPS as QLinearConv; in FP32 it is 2.4x faster but then needs a layout reorder,
    so the two come out even (6.4 vs 6.5 ms for the whole model); it stays float, which spares the
    quantization of the raw input.
    """
    import onnx
    from onnxruntime.quantization import quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data

    from calibration.quantize import (
        CALIBRATION_KEY,
        DEFAULT_PERCENTILE,
        calibrate_ranges,
        quantization_options,
        replace_metadata,
    )
    from runtime.backends import PRECISION_KEY
    from runtime.ioutil import atomic_write_bytes

    with tempfile.TemporaryDirectory(prefix="roadseg-bench-quant-") as scratch:
        temp_out, cache = Path(scratch) / "model.onnx", Path(scratch) / "ranges.json"
        rewritten = Path(scratch) / "subpixel.onnx"
        subpixel_conv_transposes(prepared, rewritten)
        prepared = rewritten
        options = quantization_options("cpu", method, DEFAULT_PERCENTILE)
        options["op_types_to_quantize"] = CPU_TUNED_OPS
        options["nodes_to_exclude"] = [first_conv(prepared)] + upsampling_path_convs(prepared)
        ranges = calibrate_ranges(prepared, tensors, method, False, DEFAULT_PERCENTILE, CPU_TUNED_OPS)
        save_tensors_data(ranges, cache)
        quantize_static(str(prepared), str(temp_out), None, calibration_cache_path=str(cache), **options)
        model = onnx.load(str(temp_out))
    stamp = {**metadata, PRECISION_KEY: "int8",
             CALIBRATION_KEY: json.dumps({"method": method, "flavour": "cpu-tuned", "ops": CPU_TUNED_OPS,
                                          "float_nodes": options["nodes_to_exclude"],
                                          "manifest_sha256": identity}, sort_keys=True)}
    replace_metadata(model, stamp)
    onnx.checker.check_model(model)
    atomic_write_bytes(out_path, model.SerializeToString())
    return out_path


def upsampling_path_convs(model_path: Path) -> list[str]:
    """The sub-pixel upsamplers and the 1x1 score convs that feed them or the skip Adds: the logits path,
    kept float as calibration keeps its upsamplers float (the logits come straight out of it; these
    convs are well under 1% of the FLOPs)."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    upsamplers = {node.name for node in graph.node if node.op_type == "Conv" and node.name.endswith("_subpixel")}
    feeds = {i for node in graph.node if node.name in upsamplers or node.op_type == "Add" for i in node.input}
    return [node.name for node in graph.node
            if node.name in upsamplers or (node.op_type == "Conv" and node.output[0] in feeds)]


def onnx_metadata(path: Path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def prepare(args: argparse.Namespace) -> dict:
    from calibration.dataset import build_calibration_set, sha256_file
    from calibration.quantize import preprocess_for_quantization, quantize_int8
    from export.onnx_export import export_onnx, roadseg_metadata
    from runtime.backends import model_description, spec_from_metadata

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    if args.onnx:  # an exported FP32 model (build/): only the CPU-tuned INT8 flavour is missing
        fp32 = Path(args.onnx)
        base = onnx_metadata(fp32)
        spec, arch = spec_from_metadata(base, fp32), model_description(base)
        flavours: tuple = ()
    else:
        model, spec, arch, summary = build_model(args.checkpoint, args.random_width, parse_size(args.size))
        fp32 = out / "model.fp32.onnx"
        export_onnx(model, spec, arch, summary, fp32)
        del model  # the full model's weights are 537 MB; quantization needs the memory more
        base = roadseg_metadata(spec, arch, summary, "int8")
        flavours = (("tensorrt", "model.int8.onnx"), ("cpu", "model.int8_cpu.onnx"))
        files["fp32"] = fp32.name
    size = spec.size_hw
    calib = build_calibration_set(args.calibration_source, spec, out / "calibration",
                                  args.calibration_frames, progress=not args.no_progress)
    stamp = {**base, "roadseg.source_onnx_sha256": sha256_file(fp32)}
    with tempfile.TemporaryDirectory(prefix="roadseg-bench-prep-") as scratch:
        prepared = preprocess_for_quantization(fp32, Path(scratch) / "model.prep.onnx")
        for flavour, name in flavours:
            quantize_int8(prepared, out / name, calib.tensors(), args.method, flavour, metadata=stamp,
                          calibration_identity=calib.identity)
            files[f"int8_{flavour}"] = name
        quantize_cpu_tuned(prepared, out / "model.int8_cpu_tuned.onnx", calib.tensors(), args.method, stamp,
                           calib.identity)
        files["int8_cpu_tuned"] = "model.int8_cpu_tuned.onnx"
    record = {"checkpoint": args.checkpoint, "random_width": args.random_width, "onnx": args.onnx, "arch": arch,
              "input_size": f"{size[0]}x{size[1]}", "method": args.method,
              "calibration_requested": args.calibration_frames, "calibration_frames": calib.count,
              "calibration_sha256": calib.identity, "files": files}
    atomic_write_text(out / PREPARED_NAME, json.dumps(record, indent=1) + "\n")
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.bench_prepare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="roadseg .pt checkpoint")
    source.add_argument("--random-width", type=float, help="an untrained FCN-8s of this width (1.0 = VGG16)")
    source.add_argument("--onnx", help="an exported FP32 ONNX: write only its CPU-tuned INT8 flavour")
    parser.add_argument("--size", help="input size HxW (not with --onnx: the model's own)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--calibration-source", default="../shared/data/kitti_road",
                        help="KITTI Road folder (train split) or a video")
    parser.add_argument("--calibration-frames", type=int, default=32)
    parser.add_argument("--method", default=DEFAULT_METHOD, help="entropy, percentile or minmax")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if not args.onnx and not args.size:
        parser.error("--size is required with --checkpoint / --random-width")
    from calibration.dataset import CalibrationError
    from train.checkpoint import CheckpointError

    try:
        record = prepare(args)
    except (CheckpointError, CalibrationError, ValueError, OSError) as error:
        return fail(error)
    print(f"prepared {args.out}: {', '.join(record['files'].values())} ({record['input_size']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
