"""The PyTorch eager rows of the benchmark (CPU FP32; on a GPU also CUDA FP32, FP16, FP16 + CUDA graph).

    python -m bench.torch_worker (--checkpoint PATH | --random-width 1.0) --size HxW [--device cpu|cuda]
                                [--precision fp32|fp16] [--cuda-graph] [--threads 2] [--warmup 5]
                                [--runs 50] [--e2e-runs 50] [--video VIDEO] [--data KITTI] --json OUT
    python -m bench.torch_worker --probe [--checkpoint PATH] [--threads 2] --json OUT

The predictor is train.torch_predictor.TorchPredictor. It runs in its own process, launched by bench/table.py,
so each row's peak memory is its own; torch is imported only inside this process's functions, so the table can
import this module for its name. Timing uses bench.worker.measure, the loop every other backend is timed with;
accuracy uses kitti.evaluate.evaluate_samples on KITTI val at the benchmarked input size.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from bench.prepare import build_model, parse_size
from bench.worker import BenchError, load_frames, measure
from runtime.ioutil import atomic_write_text, fail
from runtime.paths import DEFAULT_VIDEO


def torch_matmul_gflops(threads: int, size: int = 4096, repeats: int = 3) -> float:
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    out = torch.empty(size, size)
    torch.matmul(a, b, out=out)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return round(2.0 * size**3 / best / 1e9, 1)


def probe(args: argparse.Namespace) -> dict:
    """What the orchestrator cannot learn without importing torch: versions, CUDA, a checkpoint's size."""
    import torch

    cuda = torch.cuda.is_available()
    result = {"torch": torch.__version__, "cuda_available": cuda,
              "cuda_device": torch.cuda.get_device_name(0) if cuda else None,
              "torch_cuda_version": torch.version.cuda,
              "torch_matmul_gflops": torch_matmul_gflops(args.threads, args.matmul_size)}
    if args.checkpoint:
        from runtime.contract import PreprocessSpec
        from train.checkpoint import read_checkpoint

        payload = read_checkpoint(args.checkpoint)
        spec = PreprocessSpec.from_json(payload["preprocess"])
        # The exported ONNX carries the same JSON (runtime.contract.TRAINING_KEY): the benchmark uses it to
        # tell whether build/ holds this checkpoint's export or an older one.
        result["checkpoint"] = {"arch": payload["arch"], "input_size": f"{spec.input_height}x{spec.input_width}",
                                "training": json.dumps(payload.get("summary", {}), sort_keys=True, default=str)}
    return result


def accuracy(predictor, data: str, split: str = "val") -> dict:
    from kitti.data import find_samples, split_samples
    from kitti.evaluate import evaluate_samples

    result = evaluate_samples(predictor, split_samples(find_samples(data), split), progress=False)
    return {"maxf": round(result["maxf"] * 100, 3), "iou": round(result["iou"] * 100, 3),
            "ap": round(result["ap"] * 100, 3), "eval_images": result["images"]}


def run(args: argparse.Namespace) -> dict:
    if args.probe:
        return probe(args)
    import torch

    from train.torch_predictor import TorchPredictor

    if not (args.checkpoint or args.random_width) or not args.size:
        raise BenchError("--checkpoint or --random-width, and --size, are required")
    torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise BenchError(f"--device {args.device}: torch.cuda.is_available() is False")
    if args.cuda_graph and not args.device.startswith("cuda"):
        raise BenchError("--cuda-graph needs --device cuda")
    model, spec, arch, _ = build_model(args.checkpoint, args.random_width, parse_size(args.size))
    predictor = TorchPredictor(model, spec, args.device, precision=args.precision, cuda_graph=args.cuda_graph,
                               cudnn_benchmark=True)
    frames = load_frames(args.video, args.frames)
    device = "cpu" if args.device == "cpu" else torch.cuda.get_device_name(predictor.device)
    row = {"backend": "torch", "precision": args.precision, "device": device, "threads": args.threads,
           "variant": "eager + CUDA graph" if args.cuda_graph else "eager",
           **measure(predictor, frames, args.warmup, args.runs, args.e2e_runs, predictor.synchronize)}
    if predictor.device.type == "cuda":
        row["gpu_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    if args.data:
        row.update(accuracy(predictor, args.data, args.split))
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.torch_worker", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", help="roadseg .pt checkpoint")
    source.add_argument("--random-width", type=float, help="an untrained FCN-8s of this width (seed 0)")
    parser.add_argument("--size", help="input size HxW")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "fp16"))
    parser.add_argument("--cuda-graph", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--e2e-runs", type=int, default=50)
    parser.add_argument("--video", default=DEFAULT_VIDEO)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--data", help="KITTI Road folder: score MaxF/IoU on its val split")
    parser.add_argument("--split", default="val", choices=("val", "all"),
                        help="'all' scores every image in --data (a folder holding only val images)")
    parser.add_argument("--probe", action="store_true", help="print versions, CUDA and the matmul peak")
    parser.add_argument("--matmul-size", type=int, default=4096)
    parser.add_argument("--json", required=True)
    args = parser.parse_args(argv)
    from kitti.data import DataError
    from train.checkpoint import CheckpointError

    try:
        row = run(args)
    except (BenchError, CheckpointError, DataError, ValueError, OSError) as error:
        return fail(error)
    atomic_write_text(args.json, json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
