"""The PyTorch eager rows of the benchmark (CPU FP32; on a GPU also CUDA FP32, FP16, FP16 + CUDA graph).

    python -m bench.torch_worker (--checkpoint PATH | --random-width 1.0) --size HxW [--device cpu|cuda]
                                [--precision fp32|fp16] [--cuda-graph] [--threads 2] [--warmup 5]
                                [--runs 50] [--e2e-runs 50] [--video VIDEO] [--data KITTI] --json OUT
    python -m bench.torch_worker --probe [--checkpoint PATH] [--threads 2] --json OUT

It runs in its own process, launched by bench/table.py, so each row's peak memory is its own.
Timing uses bench.worker.measure, the loop every other backend is timed with; accuracy uses
train.evaluate.evaluate_samples on KITTI val at the benchmarked input size.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from bench.prepare import build_model, parse_size
from bench.worker import BenchError, load_frames, measure
from runtime.ioutil import atomic_write_text, fail
from runtime.paths import DEFAULT_VIDEO


class EagerPredictor:
    """FCN-8s in eager mode behind `spec` + `infer(batch) -> logits`, optionally FP16 and/or a CUDA graph."""

    def __init__(self, model: torch.nn.Module, spec, device: str, precision: str, cuda_graph: bool) -> None:
        self.spec = spec
        self.device = torch.device(device)
        self.dtype = torch.float16 if precision == "fp16" else torch.float32
        self.model = model.to(self.device, self.dtype).eval()
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # one fixed input size: let cuDNN time its algorithms once
        self.graph = None
        if cuda_graph:
            self._capture()
        if self.device.type == "cuda":
            self._settle()

    def _settle(self) -> None:
        """Run the search cuDNN's benchmark mode does on first sight of a shape, then forget its trial
        workspaces (up to ~130 GB on an H200), so the reported GPU memory is what steady streaming holds."""
        self.infer(np.zeros((1, 3, *self.spec.size_hw), np.float32))
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()

    def _capture(self) -> None:
        """Record one forward pass on static buffers; replaying it skips the per-kernel launch cost."""
        self.static_input = torch.zeros(1, 3, *self.spec.size_hw, device=self.device, dtype=self.dtype)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(3):  # cuDNN picks its algorithms before capture
                self.model(self.static_input)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.inference_mode():
            self.static_output = self.model(self.static_input)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            tensor = torch.from_numpy(batch).to(self.device, self.dtype, non_blocking=True)
            if self.graph is not None:
                self.static_input.copy_(tensor)
                self.graph.replay()
                output = self.static_output
            else:
                output = self.model(tensor)
            return output.float().cpu().numpy()

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()


def torch_matmul_gflops(threads: int, size: int = 4096, repeats: int = 3) -> float:
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
        # The exported ONNX carries the same JSON (export.onnx_export.TRAINING_KEY): the benchmark uses it to
        # tell whether build/ holds this checkpoint's export or an older one.
        result["checkpoint"] = {"arch": payload["arch"], "input_size": f"{spec.input_height}x{spec.input_width}",
                                "training": json.dumps(payload.get("summary", {}), sort_keys=True, default=str)}
    return result


def accuracy(predictor: EagerPredictor, data: str, split: str = "val") -> dict:
    from kitti.data import find_samples, split_samples
    from train.evaluate import evaluate_samples

    result = evaluate_samples(predictor, split_samples(find_samples(data), split), progress=False)
    return {"maxf": round(result["maxf"] * 100, 3), "iou": round(result["iou"] * 100, 3),
            "ap": round(result["ap"] * 100, 3), "eval_images": result["images"]}


def run(args: argparse.Namespace) -> dict:
    if args.probe:
        return probe(args)
    if not (args.checkpoint or args.random_width) or not args.size:
        raise BenchError("--checkpoint or --random-width, and --size, are required")
    torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise BenchError(f"--device {args.device}: torch.cuda.is_available() is False")
    if args.cuda_graph and not args.device.startswith("cuda"):
        raise BenchError("--cuda-graph needs --device cuda")
    model, spec, arch, _ = build_model(args.checkpoint, args.random_width, parse_size(args.size))
    predictor = EagerPredictor(model, spec, args.device, args.precision, args.cuda_graph)
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
