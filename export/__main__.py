"""Checkpoint -> build/model.fp32.onnx (+ build/model.fp16.onnx), each behind a gate.

    python -m export [--checkpoint models/fcn8s_efficientnet_lite0.pt] [--build build] [--opset 17]
                     [--static-batch] [--data ../shared/data/kitti_road] [--parity-frames 20] [--no-slim]

1. Export FP32 ONNX (opset 17 by default: what TensorRT 8.5/8.6 on JetPack 5 reads), contract in metadata.
2. onnx.checker + strict shape inference.
3. onnxslim, kept only if the slimmed graph passes the same parity gate.
4. Parity gate on >= 20 real KITTI val frames, ONNX Runtime CPU vs PyTorch; fails loudly (exit 1).
5. FP16 ONNX (FP32 I/O), then the accuracy gate for FP32 and FP16 on KITTI val (FP16 within 0.1 pt).
6. With --in-graph (the default where ONNX Runtime has the CUDA provider): model.fp32.ingraph.onnx (+ fp16),
   preprocessing and argmax in the graph, behind a mask gate on the KITTI drive (export/ingraph.py, which also
   wraps an INT8 model after calibration).
Every file is written under a temporary name and renamed only after its gate passed.

The graph ends at the logits (N x 2 x H x W), without an in-graph softmax/argmax: ONNX ArgMax yields int64,
8 bytes a pixel, exactly what the two FP32 logits take, so it saves no copy; the runtime needs the road
confidence (a sigmoid of the logit margin) for thresholds and the PR curve anyway; and a two-class argmax
is one comparison per pixel in runtime/postprocess.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from export.onnx_export import DEFAULT_OPSET
from export.stage import GATE_ERRORS, ExportOptions, run_export
from runtime.ioutil import fail
from runtime.output_policy import claim_outputs, one_run
from runtime.paths import DEFAULT_KITTI_DIR, DEFAULT_VIDEO, SHIPPED_CHECKPOINT


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=SHIPPED_CHECKPOINT, help="roadseg .pt checkpoint")
    parser.add_argument("--build", default="build", help="output folder")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    parser.add_argument("--static-batch", action="store_true",
                        help="fix the batch axis at 1 (default: symbolic, 1..64, so one file runs one camera or a "
                        "batch of many; a fixed batch measured no faster: docs/multi-camera.md)")
    parser.add_argument("--data", default=DEFAULT_KITTI_DIR,
                        help="KITTI Road folder for the parity and accuracy gates")
    parser.add_argument("--parity-frames", type=int, default=20)
    parser.add_argument("--no-slim", action="store_true", help="skip onnxslim")
    parser.add_argument("--no-fp16", action="store_true", help="write the FP32 model only")
    parser.add_argument("--no-accuracy", action="store_true", help="skip the KITTI val accuracy gate")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--in-graph", nargs="?", const="yes", default="auto", choices=("auto", "yes", "no"),
                        help="also write model.fp32.ingraph.onnx (+ fp16): uint8 BGR frames in, road mask out, "
                        "preprocessing and argmax in the graph (export/ingraph.py; INT8: python -m export.ingraph). "
                        "auto (default): where ONNX Runtime here has the CUDA provider, the machine where it wins")
    parser.add_argument("--video", default=DEFAULT_VIDEO, help="the KITTI drive for the --in-graph mask gate")
    return parser.parse_args(argv)


def want_in_graph(choice: str) -> bool:
    """On a GPU the in-graph form wins (H100: 2.07 vs 3.05 ms end to end, FP16) and the runtime picks it there;
    on a CPU ONNX Runtime runs the cast and normalisation slower than the runtime's fused one, so auto skips it."""
    if choice != "auto":
        return choice == "yes"
    from runtime.backends import cuda_provider_available

    wanted = cuda_provider_available()
    print(f"in-graph pre/post models: {'written' if wanted else 'not written'} (--in-graph auto: ONNX Runtime here "
          f"{'has' if wanted else 'has no'} CUDA provider; --in-graph yes|no decides)", flush=True)
    return wanted


@one_run
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from kitti.data import DataError
    from train.checkpoint import CheckpointError

    options = ExportOptions(opset=args.opset, dynamic_batch=not args.static_batch, parity_frames=args.parity_frames,
                            slim=not args.no_slim, fp16=not args.no_fp16, accuracy=not args.no_accuracy,
                            progress=not args.no_progress, in_graph=want_in_graph(args.in_graph),
                            video=Path(args.video))
    try:
        claim_outputs({}, {"--checkpoint": args.checkpoint, "--data": args.data})
        run_export(Path(args.checkpoint), Path(args.build), Path(args.data), options)
    except GATE_ERRORS as error:
        return fail(error, 1)
    except (CheckpointError, DataError, ValueError, OSError) as error:
        return fail(error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
