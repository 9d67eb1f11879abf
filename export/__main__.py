"""Checkpoint -> build/model.fp32.onnx (+ build/model.fp16.onnx), each behind a gate.

    python -m export [--checkpoint models/fcn8s_vgg16_w0.25_cpu.pt] [--build build] [--opset 17]
                     [--dynamic-batch] [--data ../shared/data/kitti_road] [--parity-frames 20] [--no-slim]

1. Export FP32 ONNX (opset 17 by default: what TensorRT 8.5/8.6 on JetPack 5 reads), contract in metadata.
2. onnx.checker + strict shape inference.
3. onnxslim, kept only if the slimmed graph passes the same parity gate.
4. Parity gate on >= 20 real KITTI val frames, ONNX Runtime CPU vs PyTorch; fails loudly (exit 1).
5. FP16 ONNX (FP32 I/O), then the accuracy gate for FP32 and FP16 on KITTI val (FP16 within 0.1 pt).
6. With --in-graph: model.fp32.ingraph.onnx (+ fp16), preprocessing and argmax in the graph, behind a mask gate
   on the KITTI drive (export/ingraph.py, which also wraps an INT8 model after calibration).
Every file is written under a temporary name and renamed only after its gate passed.

The graph ends at the logits (N x 2 x H x W), without an in-graph softmax/argmax: ONNX ArgMax yields int64,
8 bytes a pixel, exactly what the two FP32 logits take, so it saves no copy; the runtime needs the road
confidence (a sigmoid of the logit margin) for thresholds and the PR curve anyway; and a two-class argmax
is one comparison per pixel in runtime/postprocess.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import onnx

from export.onnx_export import DEFAULT_OPSET, export_onnx
from runtime.ioutil import atomic_write_text, fail, temporary_sibling
from runtime.paths import DEFAULT_KITTI_DIR, DEFAULT_VIDEO, SHIPPED_CHECKPOINT


class ExportError(RuntimeError):
    pass


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=SHIPPED_CHECKPOINT, help="roadseg .pt checkpoint")
    parser.add_argument("--build", default="build", help="output folder")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    parser.add_argument("--dynamic-batch", action="store_true", help="batch axis dynamic (1..64)")
    parser.add_argument("--data", default=DEFAULT_KITTI_DIR,
                        help="KITTI Road folder for the parity and accuracy gates")
    parser.add_argument("--parity-frames", type=int, default=20)
    parser.add_argument("--no-slim", action="store_true", help="skip onnxslim")
    parser.add_argument("--no-fp16", action="store_true", help="write the FP32 model only")
    parser.add_argument("--no-accuracy", action="store_true", help="skip the KITTI val accuracy gate")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--in-graph", action="store_true",
                        help="also write model.fp32.ingraph.onnx (+ fp16): uint8 BGR frames in, road mask out, "
                        "preprocessing and argmax in the graph (export/ingraph.py; INT8: python -m export.ingraph)")
    parser.add_argument("--video", default=DEFAULT_VIDEO, help="the KITTI drive for the --in-graph mask gate")
    return parser.parse_args(argv)


def check_writable(build: Path) -> None:
    try:
        build.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=build, prefix=".write-test-"):
            pass
    except OSError as error:
        raise ExportError(f"{build}: build folder is not writable ({error.strerror or error})") from error


def load_checkpoint(path: Path):
    from train.checkpoint import load_model

    if not path.is_file() and str(path) == SHIPPED_CHECKPOINT:
        raise ExportError(f"{path}: the shipped model is not there yet (it lands after `make train`); "
                          "pass --checkpoint PATH")
    model, spec, payload = load_model(path)
    if model.batch_norm:  # BatchNorm is a training aid: the exported graph gets it folded into the convs
        from export.bn_fold import fold_batchnorm

        model = fold_batchnorm(model)
        payload = {**payload, "arch": {**model.arch(), "batch_norm_folded": True}}
    return model, spec, payload


def slim(model_path: Path, out_path: Path) -> bool:
    """onnxslim, keeping our metadata; False when it fails (the unslimmed graph is then kept)."""
    try:
        import onnxslim
    except ImportError:
        return False
    original = onnx.load(str(model_path))
    try:
        slimmed = onnxslim.slim(original)
    except Exception as error:  # onnxslim raises whatever its passes raise
        print(f"warning: onnxslim failed ({type(error).__name__}); keeping the unslimmed graph",
              file=sys.stderr)
        return False
    del slimmed.metadata_props[:]
    slimmed.metadata_props.extend(original.metadata_props)
    onnx.checker.check_model(slimmed)
    slimmed = onnx.shape_inference.infer_shapes(slimmed, strict_mode=True)
    onnx.save(slimmed, str(out_path))
    return True


def export_fp32(args: argparse.Namespace, build: Path) -> dict:
    from export.parity import check_parity, val_frames

    model, spec, payload = load_checkpoint(Path(args.checkpoint))
    frames = val_frames(args.data, args.parity_frames)
    final = build / "model.fp32.onnx"
    raw, slimmed = temporary_sibling(final), temporary_sibling(final, ".slim.onnx")
    try:
        export_onnx(model, spec, payload["arch"], payload.get("summary", {}), raw, opset=args.opset,
                    dynamic_batch=args.dynamic_batch)
        report = check_parity(model, spec, raw, frames, min_frames=min(20, args.parity_frames))
        if not report.passed:
            raise ExportError(f"{args.checkpoint}: PARITY GATE FAILED, {report.line()}")
        chosen, slim_note = raw, "not tried (--no-slim)"
        if not args.no_slim and slim(raw, slimmed):
            slim_report = check_parity(model, spec, slimmed, frames, min_frames=min(20, args.parity_frames))
            if slim_report.passed:
                chosen, report, slim_note = slimmed, slim_report, "kept (parity holds)"
            else:
                slim_note = f"discarded ({slim_report.line()})"
        chosen.replace(final)
    finally:
        raw.unlink(missing_ok=True)
        slimmed.unlink(missing_ok=True)
    print(f"wrote {final}  (opset {args.opset}, onnxslim {slim_note})")
    print(f"  {report.line()}")
    from runtime.ioutil import sha256_file

    result = {"checkpoint": str(args.checkpoint), "checkpoint_sha256": sha256_file(args.checkpoint),
              "onnx": str(final), "opset": args.opset,
              "dynamic_batch": args.dynamic_batch, "onnxslim": slim_note, "parity": report.to_dict()}
    atomic_write_text(build / "parity.json", json.dumps(result, indent=1) + "\n")
    return result


def export_fp16(build: Path) -> Path:
    from export.fp16 import write_fp16

    final = build / "model.fp16.onnx"
    write_fp16(build / "model.fp32.onnx", final)
    print(f"wrote {final}  (FP16 weights and activations, FP32 input/output)")
    return final


def accuracy_gate(build: Path, data: str, progress: bool) -> None:
    from export.accuracy import broken_floors, report_openvino_floors, run_gate

    rows = run_gate(build, data, progress, precisions=("fp32", "fp16", "bf16"))
    report_openvino_floors(rows)
    broken = broken_floors(rows)
    if broken:
        (build / "model.fp16.onnx").unlink(missing_ok=True)
        raise ExportError(f"ACCURACY GATE FAILED: {broken[0]}; removed {build / 'model.fp16.onnx'}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    build = Path(args.build)
    from export.ingraph import InGraphError
    from export.parity import ParityError
    from kitti.data import DataError
    from train.checkpoint import CheckpointError

    try:
        check_writable(build)
        export_fp32(args, build)
        if not args.no_fp16:
            export_fp16(build)
            if not args.no_accuracy:
                accuracy_gate(build, args.data, not args.no_progress)
        if args.in_graph:
            from export.ingraph import wrap_file

            for precision in ("fp32",) if args.no_fp16 else ("fp32", "fp16"):
                wrap_file(build / f"model.{precision}.onnx", Path(args.video))
    except (ExportError, ParityError, InGraphError) as error:
        return fail(error, 1)
    except (CheckpointError, DataError, ValueError, OSError) as error:
        return fail(error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
