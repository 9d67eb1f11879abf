"""The ONNX files one benchmark configuration needs: FP32 at a given input size, and both INT8 flavours.

    python -m bench.prepare (--checkpoint PATH | --random-width W) --size HxW --out DIR
                                  [--calibration-source KITTI_DIR] [--calibration-frames 32] [--method entropy]

The benchmark (bench/table.py) cannot export: the runtime never imports torch. It launches this module
as a subprocess for each (model, size) it has no ONNX files for. Export and quantization are the project's
own (export.onnx_export.export_onnx, calibration.quantize.quantize_int8 and calibration.cpu_tuned with the
calibration set built by calibration.dataset), so the benchmarked files are made exactly like the shipped
ones, only at other sizes.
`--random-width` builds an untrained FCN-8s (seeded, so every run measures the same graph): its speed is
that of the trained model, its accuracy is meaningless and the benchmark reports none.
Writes DIR/model.fp32.onnx, DIR/model.int8.onnx (TensorRT Q/DQ, s8 activations), DIR/model.int8_cpu.onnx
(the CPU flavour, see calibration/cpu_tuned.py) and DIR/prepared.json last, as the commit point of the folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

from calibration.cpu_tuned import quantize_cpu_tuned
from runtime.artifacts import FP32_ONNX, INT8_CPU_ONNX, INT8_ONNX
from runtime.contract import SOURCE_ONNX_SHA256_KEY
from runtime.ioutil import atomic_write_text, fail
from runtime.paths import DEFAULT_KITTI_DIR

DEFAULT_METHOD = "entropy"
PREPARED_NAME = "prepared.json"


def parse_size(text: str) -> tuple[int, int]:
    """'HxW' -> (H, W): the one size rule of every benchmark option (sides of at least 32, FCN-8s's stride)."""
    try:
        height, width = (int(part) for part in text.strip().lower().split("x"))
    except ValueError as error:
        raise ValueError(f"--size {text}: expected HxW, e.g. 160x576") from error
    if height < 32 or width < 32:
        raise ValueError(f"--size {text}: sides must be at least 32")
    return height, width


def build_model(checkpoint: str | None, random_width: float | None, size: tuple[int, int]):
    """(model, spec at `size`, arch, summary): a checkpoint's weights, or a seeded untrained model."""
    import torch

    from runtime.contract import PreprocessSpec
    from train.model import FCN8s

    if checkpoint:
        from export.stage import load_checkpoint  # BatchNorm folded, as export writes it

        model, spec, payload = load_checkpoint(Path(checkpoint))
        summary = {**payload.get("summary", {}), "benchmark_size": list(size)}
        arch = payload["arch"]
    else:
        torch.manual_seed(0)
        model = FCN8s(num_classes=2, width=float(random_width)).eval()
        spec, arch = PreprocessSpec(*size), model.arch()
        summary = {"untrained": True, "seed": 0, "benchmark_size": list(size)}
    return model, dataclasses.replace(spec, input_height=size[0], input_width=size[1]), arch, summary


def prepare(args: argparse.Namespace) -> dict:
    from calibration.dataset import build_calibration_set
    from calibration.quantize import preprocess_for_quantization, quantize_int8
    from export.onnx_export import export_onnx, roadseg_metadata
    from runtime.ioutil import sha256_file

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    model, spec, arch, summary = build_model(args.checkpoint, args.random_width, parse_size(args.size))
    fp32 = out / FP32_ONNX
    export_onnx(model, spec, arch, summary, fp32)
    del model  # the full model's weights are 537 MB; quantization needs the memory more
    base = roadseg_metadata(spec, arch, summary, "int8")
    files["fp32"] = fp32.name
    size = spec.size_hw
    calib = build_calibration_set(args.calibration_source, spec, out / "calibration",
                                  args.calibration_frames, progress=not args.no_progress)
    stamp = {**base, SOURCE_ONNX_SHA256_KEY: sha256_file(fp32)}
    with tempfile.TemporaryDirectory(prefix="roadseg-bench-prep-") as scratch:
        prepared = preprocess_for_quantization(fp32, Path(scratch) / "model.prep.onnx")
        quantize_int8(prepared, out / INT8_ONNX, calib.tensors(), args.method, "tensorrt", metadata=stamp,
                      calibration_identity=calib.identity)
        quantize_cpu_tuned(prepared, out / INT8_CPU_ONNX, calib.tensors(), args.method, stamp,
                           calib.identity)
        files.update(int8_tensorrt=INT8_ONNX, int8_cpu=INT8_CPU_ONNX)
    record = {"checkpoint": args.checkpoint, "random_width": args.random_width, "arch": arch,
              "input_size": f"{size[0]}x{size[1]}", "method": args.method,
              "calibration_requested": args.calibration_frames, "calibration_frames": calib.count,
              "calibration_sha256": calib.identity, "files": files}
    atomic_write_text(out / PREPARED_NAME, json.dumps(record, indent=1) + "\n")
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.prepare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="roadseg .pt checkpoint")
    source.add_argument("--random-width", type=float, help="an untrained FCN-8s of this width (1.0 = VGG16)")
    parser.add_argument("--size", required=True, help="input size HxW")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--calibration-source", default=DEFAULT_KITTI_DIR,
                        help="KITTI Road folder (train split) or a video")
    parser.add_argument("--calibration-frames", type=int, default=32)
    parser.add_argument("--method", default=DEFAULT_METHOD, help="entropy, percentile or minmax")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
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
