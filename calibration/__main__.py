"""Calibrate and quantize: build/model.fp32.onnx -> build/model.int8.onnx (+ model.int8_cpu.onnx), gated.

    python -m calibration [--build build] [--source ../shared/data/kitti_road | VIDEO] [--size 64]
                          [--methods entropy,percentile,minmax] [--percentile 99.99] [--data KITTI]

1. Calibration set (build/calibration/manifest.json + tensors.npy) from the KITTI train split, stratified
   um/umm/uu, or from a video; its manifest sha256 is the calibration identity.
2. One TensorRT-style Q/DQ model per method, each scored on KITTI val; the best becomes model.int8.onnx,
   and the comparison goes to build/calibration_methods.{json,md}.
3. The same Q/DQ model with its float rest in FP16 for strongly typed TensorRT (11.x, TensorRT-RTX):
   build/model.int8_fp16.onnx (calibration/strongly_typed.py); the CPU flavour (calibration/cpu_tuned.py)
   with the winning method: build/model.int8_cpu.onnx.
4. Calibration tables for TensorRT <= 10 implicit INT8 (build/calibration/trt/), same set and method.
5. The accuracy gate over every artifact (build/accuracy.{json,md}); a broken floor fails (exit 1) and
   removes the INT8 file that broke it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from calibration.dataset import CalibrationError
from calibration.quantize import DEFAULT_PERCENTILE, ENTROPY_BINS
from calibration.stage import CalibrationOptions, GateError, method_list, run_calibration
from runtime.contract import ModelFileError
from runtime.ioutil import fail
from runtime.output_policy import claim_outputs, one_run
from runtime.paths import DEFAULT_KITTI_DIR


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m calibration", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", default="build")
    parser.add_argument("--source", default=DEFAULT_KITTI_DIR, help="KITTI Road folder or a video file")
    parser.add_argument("--size", type=int, default=64, help="number of calibration frames")
    parser.add_argument("--methods", default="entropy,percentile,minmax")
    parser.add_argument("--percentile", type=float, default=DEFAULT_PERCENTILE)
    parser.add_argument("--histogram-bins", type=int, default=ENTROPY_BINS,
                        help="histogram size for entropy/percentile (TensorRT's entropy calibrator: 2048)")
    parser.add_argument("--data", default=DEFAULT_KITTI_DIR, help="KITTI Road folder whose val split scores")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


@one_run
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        options = CalibrationOptions(size=args.size, methods=method_list(args.methods), percentile=args.percentile,
                                     histogram_bins=args.histogram_bins, progress=not args.no_progress)
        claim_outputs({}, {"--source": args.source, "--data": args.data})  # nothing written may replace them
        run_calibration(Path(args.build), Path(args.source), Path(args.data), options)
    except GateError as error:
        return fail(error, 1)
    except (CalibrationError, ModelFileError, ValueError, OSError) as error:
        return fail(error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
