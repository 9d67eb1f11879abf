"""The streaming runtime's floors, measured through the real loops (runtime.pipeline):

1. overhead: everything but backend inference costs at most 10 % of the frame time, streaming the KITTI
   video frame by frame (H.264 decoding included), and the same frames replayed from memory (a camera's
   cost: one copy a frame);
2. live: a synthetic camera running twice as fast as inference reaches at least 95 % of the
   inference-bound frame rate (1 / the time of backend.infer alone in a tight loop);
3. latency targets (bench/stream_targets.py): end-to-end p50 <= 1.15 x inference p50 writing an mp4, <= 1.10 x
   with no outputs, both loops printed side by side;
4. soak: looping the KITTI video for --frames frames (10,000 by default) through each loop keeps resident
   memory flat: growth after warm-up under 5 %.

Floors 1 and 2 run the serial and the pipelined loop side by side, in short blocks alternating with an
inference-only baseline (a shared machine's load drifts over seconds), and are judged on the loop that
runtime/stream.py picks by default on this machine (runtime.pipeline.pipelining_pays). "Share of the frame
time" is 1 - inference-alone time / frame time: CPU that other stages take from inference counts against
them, however the stages overlap.

    python -m bench.stream --model build/model.fp32.onnx [--frames 10000] [--json runs/bench_stream.json]

Meant for CPU with ONNX Runtime at the shipped model's size (192x640); prints its figures, exits 1 when a
floor is missed. Not a timed test: run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from bench.stream_targets import measure_targets, print_targets
from runtime.backend_choice import DEVICES, RUNTIMES, open_requested
from runtime.backends import Backend
from runtime.contract import ModelFileError
from runtime.ioutil import atomic_write_text, fail
from runtime.model_select import REPO_ROOT, default_model
from runtime.outputs import Outputs, Renderer
from runtime.paths import DEFAULT_VIDEO
from runtime.pipeline import frame_preprocessor, pipelining_pays, run_pipeline
from runtime.sources import (
    FrameSource,
    PrefetchSource,
    Reader,
    SourceError,
    SourceOptions,
    open_uri,
    open_video,
    read_video_frames,
)
from runtime.stats import StreamStats

SHIPPED_SIZE_HW = (192, 640)
OVERHEAD_LIMIT = 0.10
LIVE_FLOOR = 0.95
SOAK_GROWTH_LIMIT = 0.05


def resident_bytes() -> int:
    """Current resident set size, from /proc (Linux and Jetson): no psutil in the slim runtime."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def inference_only(backend: Backend, frame: np.ndarray, runs: int) -> tuple[np.ndarray, float]:
    """Wall milliseconds of each backend.infer alone (real preprocessed frame, after a warm-up), and the
    process CPU milliseconds per call (all threads): a figure that other load on the machine cannot inflate."""
    batch = frame_preprocessor(backend)(frame)
    for _ in range(5):
        backend.infer(batch)
    times = np.empty(runs)
    cpu_start = time.process_time()
    for index in range(runs):
        start = time.perf_counter()
        backend.infer(batch)
        times[index] = (time.perf_counter() - start) * 1000.0
    return times, (time.process_time() - cpu_start) * 1000.0 / runs


LOOPS = ("serial", "pipelined")


def default_loop(backend: Backend) -> str:
    """The loop runtime/stream.py runs by default on this machine: the floors are judged on it."""
    return "pipelined" if pipelining_pays(backend) else "serial"


class MemoryReader(Reader):
    """The KITTI frames, decoded once up front and replayed from memory: each read is one copy into the
    source's buffer, as a camera's driver delivers a frame. Separates the runtime's own per-frame cost
    from H.264 decoding (about 4 CPU-ms a frame at 1242x376, which a Jetson would do in NVDEC)."""

    def __init__(self, frames: list[np.ndarray]) -> None:
        super().__init__("KITTI frames in memory", 10.0)
        self._frames, self._count = frames, 0

    def read(self, buffer: np.ndarray | None) -> tuple[np.ndarray, str]:
        frame = self._frames[self._count % len(self._frames)]
        if buffer is None or buffer.shape != frame.shape:
            buffer = np.empty_like(frame)
        np.copyto(buffer, frame)
        self._count += 1
        return buffer, f"{self._count - 1:06d}"


def stream(source, backend: Backend, pipelined: bool) -> StreamStats:
    """The real loop, drawing the overlay and heads-up line as for a window, with no sink to wait on."""
    stats = StreamStats(live=source.live)
    outputs = Outputs(Renderer("overlay", 0.5), render_always=True)
    with source:
        run_pipeline(source, backend, outputs, stats, pipelined=pipelined)
    return stats


@dataclass
class Block:
    """One loop's run over one block of frames, with the inference-alone time measured just before it."""

    infer_ms: float
    stats: StreamStats
    source: FrameSource
    cpu_ms_per_frame: float

    @property
    def ratio(self) -> float:
        return self.stats.fps * self.infer_ms / 1000.0


def compare_loops(backend: Backend, frame: np.ndarray, make_source, frames: int, blocks: int) -> dict:
    """Alternate short blocks of inference alone, the serial loop and the pipelined loop, and compare each
    loop's block with the inference-only baseline measured just before it: the load of a shared machine
    drifts over seconds, and a baseline taken once would pass that drift off as (or hide) loop overhead.

    Per loop: `ratio` = frame rate / inference-bound rate (the median over blocks); `non_inference_share`
    = 1 - inference-alone time / frame time, i.e. the share of each frame's time that is not the backend
    at its undisturbed speed; `share_in_loop` uses the inference time measured inside the loop instead,
    which other threads' CPU load inflates."""
    per_block = max(10, frames // blocks)
    runs: dict[str, list[Block]] = {loop: [] for loop in LOOPS}
    baselines = []
    for _ in range(blocks):
        baseline, _ = inference_only(backend, frame, max(10, per_block // 2))
        infer_ms = float(np.median(baseline))
        baselines.append(infer_ms)
        for loop in LOOPS:
            source = make_source(per_block, infer_ms)
            cpu_start = time.process_time()
            stats = stream(source, backend, pipelined=loop == "pipelined")
            cpu_ms = (time.process_time() - cpu_start) * 1000.0 / max(stats.frames_processed, 1)
            runs[loop].append(Block(infer_ms, stats, source, cpu_ms))
    results = {"blocks": blocks, "frames_per_block": per_block,
               "inference_alone_ms": round(float(np.median(baselines)), 3)}
    results.update({loop: summarize_blocks(blocks_run) for loop, blocks_run in runs.items()})
    return results


def summarize_blocks(blocks: list[Block]) -> dict:
    ratios = [block.ratio for block in blocks]
    frame_ms = float(np.median([1000.0 / block.stats.fps for block in blocks]))
    means = {name: float(np.mean([block.stats.stages[name].values.mean() for block in blocks]))
             for name in blocks[0].stats.stages}
    result = {"fps": round(float(np.median([block.stats.fps for block in blocks])), 2),
              "frame_ms": round(frame_ms, 3), "ratio": round(float(np.median(ratios)), 4),
              "block_ratios": [round(r, 3) for r in ratios],
              "non_inference_share": round(1.0 - float(np.median(ratios)), 4),
              "share_in_loop": round(1.0 - means["inference"] / frame_ms, 4),
              "stage_mean_ms": {k: round(v, 3) for k, v in means.items()},
              "cpu_ms_per_frame": round(float(np.median([block.cpu_ms_per_frame for block in blocks])), 3),
              "frames": sum(block.stats.frames_processed for block in blocks),
              "frames_read": sum(block.source.frames_read for block in blocks),
              "frames_dropped": sum(block.source.frames_dropped for block in blocks)}
    ages = [block.stats.frame_age.values for block in blocks if block.stats.live]
    if ages:
        age = np.concatenate(ages)
        result["frame_age"] = {"p50_ms": round(float(np.percentile(age, 50)), 2),
                               "p99_ms": round(float(np.percentile(age, 99)), 2)}
    return result


def overhead_floor(backend: Backend, video: Path, frames: int, blocks: int) -> dict:
    """Everything but inference, streaming the KITTI video frame by frame (decoding included) and the same
    frames replayed from memory (the runtime's own cost, as with a camera)."""
    decoded = read_video_frames(video)
    frame = decoded[0]
    result = {"video": compare_loops(backend, frame, lambda n, _ms: open_video(
                  video, SourceOptions(loop=True, max_frames=n)), frames, blocks),
              "memory": compare_loops(backend, frame, lambda n, _ms: PrefetchSource(
                  MemoryReader(decoded), max_frames=n), frames, blocks)}
    for case in ("video", "memory"):
        share = result[case][default_loop(backend)]["non_inference_share"]
        result[case]["pass"] = share <= OVERHEAD_LIMIT
    result["limit"] = OVERHEAD_LIMIT
    result["pass"] = result["video"]["pass"] and result["memory"]["pass"]
    return result


def live_floor(backend: Backend, frame: np.ndarray, frames: int, blocks: int) -> dict:
    """A synthetic camera running twice as fast as inference (fresh for every block)."""
    height, width = frame.shape[:2]

    def camera(n: int, infer_ms: float):
        return open_uri(f"synthetic://{width}x{height}@{2.0 * 1000.0 / infer_ms:.1f}", SourceOptions(max_frames=n))

    result = compare_loops(backend, frame, camera, frames, blocks)
    result["floor"] = LIVE_FLOOR
    result["pass"] = result[default_loop(backend)]["ratio"] >= LIVE_FLOOR
    return result


class MemorySampler:
    """Samples RSS (with the frame count) on a thread, so the loop under test is not changed at all."""

    def __init__(self, stats_ref: list, every_s: float = 0.1) -> None:
        self.samples: list[tuple[int, int]] = []
        self._stats_ref, self._every = stats_ref, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            stats = self._stats_ref[0] if self._stats_ref else None
            if stats is not None:
                self.samples.append((stats.frames_processed, resident_bytes()))

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join()


def soak(backend: Backend, video: Path, frames: int, pipelined: bool) -> dict:
    source = open_video(video, SourceOptions(loop=True, max_frames=frames))
    stats = StreamStats(live=False)
    outputs = Outputs(Renderer("overlay", 0.5), render_always=True)
    holder = [stats]
    started = time.perf_counter()
    with MemorySampler(holder) as sampler, source:
        run_pipeline(source, backend, outputs, stats, status_every=60.0, pipelined=pipelined)
    warmup = max(200, frames // 10)
    after = [(n, rss) for n, rss in sampler.samples if n >= warmup]
    if len(after) < 2:
        return {"frames": stats.frames_processed, "error": "too few samples after warm-up; raise --frames"}
    baseline = after[0][1]
    peak, final = max(rss for _, rss in after), after[-1][1]
    growth = (peak - baseline) / baseline
    return {"frames": stats.frames_processed, "wall_s": round(time.perf_counter() - started, 1),
            "fps": round(stats.fps, 2), "warmup_frames": warmup, "rss_after_warmup_mb": round(baseline / 2**20, 1),
            "rss_peak_mb": round(peak / 2**20, 1), "rss_final_mb": round(final / 2**20, 1),
            "growth": round(growth, 4), "limit": SOAK_GROWTH_LIMIT, "pass": growth < SOAK_GROWTH_LIMIT}


def print_loops(result: dict) -> None:
    """Both loops side by side, measured in the same alternating blocks."""
    print(f"    inference alone {result['inference_alone_ms']:.2f} ms; median of {result['blocks']} blocks of "
          f"{result['frames_per_block']} frames, each against the inference-alone time just before it")
    for loop in LOOPS:
        row = result[loop]
        stages = " ".join(f"{k} {v:.2f}" for k, v in row["stage_mean_ms"].items())
        print(f"    {loop:9s} {row['fps']:7.2f} FPS = {row['ratio'] * 100:5.1f} % of inference-bound "
              f"(blocks {', '.join(f'{r * 100:.0f}' for r in row['block_ratios'])}); {row['cpu_ms_per_frame']:.1f} "
              f"CPU-ms/frame; mean ms: {stages}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.stream", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="default: the best model in build/ (as runtime/stream.py picks it)")
    parser.add_argument("--backend", default="auto", choices=RUNTIMES,
                        help="auto (the default, as runtime/stream.py's): as the runtime picks, a measured CPU "
                        "choice where OpenVINO is installed")
    parser.add_argument("--device", default="auto", choices=DEVICES, help="as runtime/stream.py's --device")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                        help="OpenVINO CPU precision hint (for an INT8 file: its float rest)")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0: all cores)")
    parser.add_argument("--video", default=str(REPO_ROOT / DEFAULT_VIDEO), help="the KITTI raw video")
    parser.add_argument("--overhead-frames", type=int, default=480, help="frames per loop for the overhead floor")
    parser.add_argument("--live-frames", type=int, default=480, help="frames per loop for the live floor")
    parser.add_argument("--blocks", type=int, default=8, help="alternating blocks the frames are split into")
    parser.add_argument("--frames", type=int, default=10_000, help="frames for the memory soak (0: skip it)")
    parser.add_argument("--target-frames", type=int, default=480,
                        help="frames per loop and case for the latency targets (0: skip them)")
    parser.add_argument("--json", help="also write the figures here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        model = Path(args.model) if args.model else default_model()
        backend, choice = open_requested(model, args.backend, args.device, args.precision, args.threads or None)
        if choice is not None:
            print(choice.line())
    except (ModelFileError, ImportError, OSError, RuntimeError) as error:
        return fail(error)
    video = Path(args.video)
    frame = cv2.VideoCapture(str(video)).read()[1] if video.is_file() else None
    if frame is None:
        return fail(f"{video}: cannot read the benchmark video")
    print(f"model {model}: {backend.name} {backend.precision} on {backend.device}, input "
          f"{backend.spec.input_height}x{backend.spec.input_width}; source {frame.shape[1]}x{frame.shape[0]}")
    if backend.spec.size_hw != SHIPPED_SIZE_HW:
        print(f"note: the floors are defined at the shipped size {SHIPPED_SIZE_HW[0]}x{SHIPPED_SIZE_HW[1]}")
    results: dict = {"model": str(model), "backend": backend.name, "precision": backend.precision,
                     "device": backend.device, "input_size": list(backend.spec.size_hw)}
    try:
        infer, infer_cpu_ms = inference_only(backend, frame, runs=60)  # the headline; blocks measure their own
        infer_ms = float(np.median(infer))
        results["inference_only"] = {"median_ms": round(infer_ms, 3), "mean_ms": round(float(infer.mean()), 3),
                                     "fps": round(1000.0 / infer_ms, 2), "cpu_ms": round(infer_cpu_ms, 3)}
        print(f"inference alone: median {infer_ms:.2f} ms -> inference-bound {1000 / infer_ms:.2f} FPS "
              f"({infer_cpu_ms:.1f} CPU-ms per call)")

        loop = results["default_loop"] = default_loop(backend)
        print(f"floors judged on the {loop} loop (runtime/stream.py's default here, {os.cpu_count()} cores); "
              "both loops measured side by side")
        over = results["overhead"] = overhead_floor(backend, video, args.overhead_frames, args.blocks)
        for case, label in (("video", f"{video.name}, decoded as it streams"),
                            ("memory", "the same frames replayed from memory, as from a camera")):
            print(f"[{'PASS' if over[case]['pass'] else 'FAIL'}] overhead ({label}): everything but inference = "
                  f"{over[case][loop]['non_inference_share'] * 100:.1f} % of frame time (limit 10 %)")
            print_loops(over[case])
        if args.target_frames:
            results["latency_targets"] = measure_targets(backend, video, args.target_frames, args.blocks, loop)
            print_targets(results["latency_targets"])
        live = results["live"] = live_floor(backend, frame, args.live_frames, args.blocks)
        camera = live[loop]
        print(f"[{'PASS' if live['pass'] else 'FAIL'}] live: {camera['ratio'] * 100:.1f} % of the inference-bound "
              f"frame rate (floor 95 %); {camera['frames_dropped']} of {camera['frames_read']} camera frames "
              f"dropped; frame age p50 {camera['frame_age']['p50_ms']:.1f} / "
              f"p99 {camera['frame_age']['p99_ms']:.1f} ms")
        print_loops(live)
        if args.frames:
            results["soak"] = {"pass": True}
            for soak_loop in LOOPS:  # the pipelined loop's held and recycled buffers are a leak risk of their own
                print(f"soak ({soak_loop} loop): {args.frames} frames looping {video.name} ...", flush=True)
                memory = results["soak"][soak_loop] = soak(backend, video, args.frames, soak_loop == "pipelined")
                if "error" in memory:
                    print(f"[FAIL] soak ({soak_loop}): {memory['error']}")
                    memory["pass"] = False
                else:
                    print(f"[{'PASS' if memory['pass'] else 'FAIL'}] soak ({soak_loop}): {memory['frames']} frames "
                          f"in {memory['wall_s']} s ({memory['fps']} FPS); RSS {memory['rss_after_warmup_mb']} MB "
                          f"after {memory['warmup_frames']} warm-up frames, peak {memory['rss_peak_mb']} MB, final "
                          f"{memory['rss_final_mb']} MB: growth {memory['growth'] * 100:.2f} % (limit 5 %)")
                results["soak"]["pass"] &= memory["pass"]
    except (SourceError, ModelFileError, OSError) as error:
        return fail(error)
    if args.json:
        atomic_write_text(args.json, json.dumps(results, indent=2) + "\n")
    floors = [results[k]["pass"] for k in ("overhead", "latency_targets", "live", "soak") if k in results]
    return 0 if all(floors) else 1


if __name__ == "__main__":
    sys.exit(main())
