"""One benchmark row, measured in a process of its own so that its peak resident memory is its own.

    python -m bench.worker --model build/model.int8_cpu.onnx [--provider cpu] [--threads 2]
                                   [--warmup 5] [--runs 50] [--e2e-runs 50] [--video VIDEO] --json OUT
    python -m bench.worker --matmul-peak [--threads 2] --json OUT

Inference latency is `infer()` alone on preprocessed real frames; end-to-end latency is FramePreprocessor
+ infer + MaskPostprocessor on decoded real frames (decoding is the camera's cost and is left out).
`measure()` takes any object with `spec` and `infer`, so bench/torch_worker.py times PyTorch with the
very same loop. The orchestrator is bench/table.py.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from runtime.contract import PreprocessSpec
from runtime.ioutil import atomic_write_text, fail
from runtime.machine import nvidia_smi
from runtime.paths import DEFAULT_VIDEO
from runtime.postprocess import MaskPostprocessor
from runtime.preprocess import FramePreprocessor
from runtime.sources import read_video_frames

if TYPE_CHECKING:
    from runtime.backends import Backend

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class BenchError(ValueError):
    """Bad benchmark input; the message names the file or argument."""


def load_frames(source: str | Path, count: int) -> list[np.ndarray]:
    """Up to `count` real BGR frames from a video file or a folder of images (KITTI's image_2)."""
    source = Path(source)
    frames: list[np.ndarray] = []
    if source.is_dir():
        images = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        for path in images[:count]:
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is not None:
                frames.append(image)
    elif source.is_file():
        frames = read_video_frames(source, count)
    if not frames:
        raise BenchError(f"{source}: no frames could be read (a video file or a folder of images)")
    return frames


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    values = np.asarray(samples_ms, np.float64)
    p50, p90, p99 = np.percentile(values, (50, 90, 99))
    return {"p50_ms": round(float(p50), 3), "p90_ms": round(float(p90), 3), "p99_ms": round(float(p99), 3),
            "mean_ms": round(float(values.mean()), 3), "min_ms": round(float(values.min()), 3)}


def time_inference(infer: Callable[[np.ndarray], np.ndarray], batches: list[np.ndarray], warmup: int,
                   runs: int, sync: Callable[[], None] | None = None) -> list[float]:
    """Milliseconds of each of `runs` calls, after `warmup` untimed ones (allocations, kernel choice)."""
    for index in range(warmup):
        infer(batches[index % len(batches)])
    if sync:
        sync()
    samples = []
    for index in range(runs):
        batch = batches[index % len(batches)]
        start = time.perf_counter()
        infer(batch)
        if sync:
            sync()
        samples.append((time.perf_counter() - start) * 1000.0)
    return samples


def time_end_to_end(infer: Callable[[np.ndarray], np.ndarray], spec: PreprocessSpec, frames: list[np.ndarray],
                    runs: int) -> tuple[list[float], dict[str, float], float]:
    """(end-to-end ms per frame, p50 of each stage, frames per second over the whole loop)."""
    preprocess, postprocess = FramePreprocessor(spec), MaskPostprocessor(spec.road_index)
    total, stages = [], {"preprocess": [], "inference": [], "postprocess": []}
    loop_start = time.perf_counter()
    for index in range(runs):
        frame = frames[index % len(frames)]
        t0 = time.perf_counter()
        batch = preprocess(frame)
        t1 = time.perf_counter()
        logits = infer(batch)  # the backends return host arrays, so this includes the copy back
        t2 = time.perf_counter()
        postprocess(logits[0], frame.shape[:2])
        t3 = time.perf_counter()
        total.append((t3 - t0) * 1000.0)
        for name, (a, b) in zip(stages, ((t0, t1), (t1, t2), (t2, t3)), strict=True):
            stages[name].append((b - a) * 1000.0)
    fps = runs / (time.perf_counter() - loop_start)
    return total, {f"{name}_p50_ms": round(float(np.median(v)), 3) for name, v in stages.items()}, fps


def peak_rss_mb() -> float:
    """High-water resident memory of this process (Linux reports ru_maxrss in KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)


def gpu_memory_mb(pid: int | None = None) -> float | None:
    """This process's GPU memory as nvidia-smi reports it; None without an NVIDIA driver."""
    pid = os.getpid() if pid is None else pid
    for app_pid, used_mib in nvidia_smi("compute-apps", ["pid", "used_memory"]):
        if app_pid == str(pid):
            return float(used_mib)
    return None


def measure(predictor, frames: list[np.ndarray], warmup: int, runs: int, e2e_runs: int,
            sync: Callable[[], None] | None = None) -> dict:
    """Latency figures of `predictor` (anything with `spec` and `infer`) on real frames."""
    if runs < 1 or e2e_runs < 1 or warmup < 0:
        raise BenchError(f"--runs {runs} / --e2e-runs {e2e_runs} / --warmup {warmup}: need runs >= 1, warmup >= 0")
    preprocess = FramePreprocessor(predictor.spec)
    batches = [preprocess(frame).copy() for frame in frames[: min(len(frames), 8)]]
    samples = time_inference(predictor.infer, batches, warmup, runs, sync)
    e2e, stages, fps = time_end_to_end(predictor.infer, predictor.spec, frames, e2e_runs)
    e2e_stats = percentiles(e2e)
    height, width = predictor.spec.size_hw
    return {
        "input_size": f"{height}x{width}",
        **percentiles(samples),
        "e2e_p50_ms": e2e_stats["p50_ms"], "e2e_p90_ms": e2e_stats["p90_ms"], "e2e_p99_ms": e2e_stats["p99_ms"],
        **{f"e2e_{k}": v for k, v in stages.items()},
        "fps": round(fps, 2),
        "warmup": warmup, "runs": runs, "e2e_runs": e2e_runs,
        "frame_size": f"{frames[0].shape[0]}x{frames[0].shape[1]}",
        "peak_rss_mb": peak_rss_mb(),
        "gpu_memory_mb": gpu_memory_mb(),
        "latencies_ms": [round(s, 3) for s in samples],
    }


def matmul_peak_gflops(size: int = 4096, repeats: int = 3) -> float:
    """Best-of-`repeats` fp32 GEMM throughput through numpy's BLAS: the CPU's practical fp32 peak."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    out = np.empty_like(a)
    np.matmul(a, b, out=out)  # warm-up: BLAS thread pool and page faults
    best = min(_timed(lambda: np.matmul(a, b, out=out)) for _ in range(repeats))
    return round(2.0 * size**3 / best / 1e9, 1)


def ort_matmul_gflops(threads: int, size: int = 4096, repeats: int = 3) -> float | None:
    """The same GEMM through ONNX Runtime's MLAS, which has AVX-512 kernels for CPUs that the BLAS bundled
    with numpy/torch may not recognise (on this Zen 5 VM they reach about a fifth of it). None without
    the `onnx` package to build the one-node graph."""
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return None
    b = np.random.default_rng(1).standard_normal((size, size), dtype=np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "peak",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [size, size])],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, [size, size])],
                              [numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    ort_session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    ort_session.run(None, {"a": a})
    best = min(_timed(lambda: ort_session.run(None, {"a": a})) for _ in range(repeats))
    return round(2.0 * size**3 / best / 1e9, 1)


def _timed(function: Callable[[], object]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def open_model(path: str, provider: str, threads: int, backend: str = "onnxruntime", precision: str = "auto"):
    from runtime.backends import ENGINE_SUFFIXES, OnnxRuntimeBackend, open_backend

    if backend == "openvino":
        return open_backend(path, "openvino", threads=threads, precision=precision)
    if Path(path).suffix in ENGINE_SUFFIXES:
        return open_backend(path, backend="tensorrt")
    return OnnxRuntimeBackend(path, provider=provider, threads=threads)


def describe(backend: Backend) -> dict:
    row = {"backend": backend.name, "precision": backend.precision, "device": backend.device}
    if backend.provider:
        row["provider"] = backend.provider
    return row


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.worker", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help=".onnx model or TensorRT .engine/.plan")
    parser.add_argument("--provider", default="cpu", help="ONNX Runtime provider: cpu, cuda or tensorrt")
    parser.add_argument("--backend", default="onnxruntime", choices=("onnxruntime", "openvino"),
                        help="for .onnx: ONNX Runtime (with --provider) or OpenVINO on the CPU")
    parser.add_argument("--precision", default="auto", help="OpenVINO CPU precision: fp32, bf16, int8 or int8+bf16")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--e2e-runs", type=int, default=50)
    parser.add_argument("--video", default=DEFAULT_VIDEO,
                        help="real frames for the end-to-end loop (a video or an image folder)")
    parser.add_argument("--frames", type=int, default=32, help="how many frames to decode up front")
    parser.add_argument("--matmul-peak", action="store_true", help="measure the fp32 GEMM peak instead")
    parser.add_argument("--matmul-size", type=int, default=4096)
    parser.add_argument("--json", required=True, help="write the row here")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    if args.matmul_peak:
        return {"numpy_matmul_gflops": matmul_peak_gflops(args.matmul_size),
                "onnxruntime_matmul_gflops": ort_matmul_gflops(args.threads, args.matmul_size),
                "threads": args.threads, "matmul_size": args.matmul_size}
    if not args.model:
        raise BenchError("--model is required (or --matmul-peak)")
    frames = load_frames(args.video, args.frames)
    backend = open_model(args.model, args.provider, args.threads, args.backend, args.precision)
    # Every runtime backend returns host arrays, so infer() itself waits for the device: no separate sync.
    row = {**describe(backend), "threads": args.threads, **measure(backend, frames, args.warmup, args.runs,
                                                                     args.e2e_runs)}
    return row


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from runtime.contract import ModelFileError

    try:
        row = run(args)
    except (BenchError, ModelFileError, OSError) as error:
        return fail(error)
    atomic_write_text(args.json, json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
