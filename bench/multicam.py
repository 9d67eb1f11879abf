"""Many cameras, one engine: the multi-camera loop (runtime/multicam.py) against the single-camera loop and against
inference alone, at 1, 2, 4, 8 cameras.

    python -m bench.multicam [--model M] [--cameras 1,2,4,8] [--frames 24] [--blocks 2] [--json out.json]

Per camera count N, in alternating blocks (a shared machine's load drifts over seconds):
- cameras: N file-like cameras (the KITTI drive's frames replayed from memory through the file source: every frame,
  in order, no decoding cost) through run_cameras: total and per-camera frames/s, frame age p50/p99 (frame reached
  the muxer -> result), batch sizes formed, batch interval;
- inference-bound: backend.infer alone on batches of the sizes the run formed, as many calls: frames/s;
- single: one camera through the single-camera loop (runtime.pipeline.run_pipeline), the same frame count.
Then 8 live synthetic cameras, together faster than the engine: drops counted per camera, by cause.

Verdicts against the targets: 4 cameras reach >= 90 % of the inference-bound rate at the same batch composition;
their frame age p99 <= 2 batch intervals (p50); no drops from file cameras; the 8 live cameras drop only by the
freshness rule ("stale"), never because a queue was full. A model with a fixed batch of 1 is given a symbolic batch
axis first (export/batch_axis.py), so the shipped files can be measured batched.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from bench.stream import MemoryReader
from runtime.backend_choice import DEVICES, RUNTIMES, open_requested
from runtime.backends import Backend
from runtime.contract import ModelFileError
from runtime.ioutil import atomic_write_text, fail
from runtime.model_select import REPO_ROOT, default_model
from runtime.multicam import CameraOutputs, push_timeout_for, run_cameras, summary
from runtime.mux import CameraFeed
from runtime.outputs import Outputs, Renderer
from runtime.paths import DEFAULT_VIDEO
from runtime.pipeline import StopRequest, frame_preprocessor, run_pipeline
from runtime.sources import FrameSource, PrefetchSource, SourceError, SourceOptions, open_uri, read_video_frames
from runtime.stats import StreamStats

THROUGHPUT_FLOOR = 0.90
AGE_LIMIT_INTERVALS = 2.0


def file_cameras(frames: list[np.ndarray], count: int, per_camera: int) -> list[CameraOutputs]:
    cameras = []
    for index in range(count):
        reader = MemoryReader(frames[index % len(frames):] + frames[:index % len(frames)])  # each its own scene
        source = PrefetchSource(reader, per_camera)
        outputs = Outputs(Renderer("overlay", 0.5))
        cameras.append(CameraOutputs(CameraFeed(f"cam{index}", source), outputs, StreamStats(False, track_age=True)))
    return cameras


def run_to_end(cameras: list[CameraOutputs], backend: Backend) -> dict:
    """The multi-camera loop over these cameras until every one has ended, with the default push timeout; its
    summary. The cameras are closed afterwards."""
    try:
        run = run_cameras(cameras, backend, StopRequest(), push_timeout_for([c.feed.source for c in cameras], None),
                          hud=False, say=lambda _line: None)
        return summary(cameras, run, backend)
    finally:
        for camera in cameras:
            camera.outputs.close()
            camera.feed.source.close()


def run_files(backend: Backend, frames: list[np.ndarray], count: int, per_camera: int) -> dict:
    return run_to_end(file_cameras(frames, count, per_camera), backend)


def inference_bound(backend: Backend, frame: np.ndarray, batch_sizes: dict[str, int]) -> float:
    """Frames/s of backend.infer alone on the same batches (sizes and counts) the loop formed."""
    preprocess = frame_preprocessor(backend, batch=max(int(size) for size in batch_sizes))
    for slot in range(preprocess.input_tensor.shape[0]):
        preprocess(frame, slot)
    backend.infer(preprocess.input_tensor)  # warm-up at this size
    frames, seconds = 0, 0.0
    for size, count in batch_sizes.items():
        tensor = preprocess.input_tensor[:int(size)]
        for _ in range(count):
            start = time.perf_counter()
            backend.infer(tensor)
            seconds += time.perf_counter() - start
            frames += int(size)
    return frames / seconds


def run_single(backend: Backend, frames: list[np.ndarray], count: int) -> float:
    return single_loop_fps(PrefetchSource(MemoryReader(frames), count), backend)


def single_loop_fps(source: FrameSource, backend: Backend) -> float:
    """Frames/s of the single-camera loop (runtime/stream.py's default, no outputs) over `source`, then closed."""
    stats = StreamStats(live=False)
    outputs = Outputs(Renderer("overlay", 0.5))
    try:
        run_pipeline(source, backend, outputs, stats, hud=False)
    finally:
        outputs.close()
        source.close()
    return stats.fps


def run_live(backend: Backend, frame: np.ndarray, count: int, fps: float, seconds: float) -> dict:
    height, width = frame.shape[:2]
    options = SourceOptions(max_frames=int(fps * seconds))
    cameras = []
    for index in range(count):
        source = open_uri(f"synthetic://{width}x{height}@{fps:g}", options)
        cameras.append(CameraOutputs(CameraFeed(f"live{index}", source), Outputs(Renderer("overlay", 0.5)),
                                     StreamStats(True)))
    return run_to_end(cameras, backend)


def measure(backend: Backend, frames: list[np.ndarray], counts: list[int], per_camera: int, blocks: int) -> dict:
    rows: dict[int, dict] = {n: {"cameras": [], "inference_bound": [], "single": []} for n in counts}
    for block in range(blocks):
        order = counts if block % 2 == 0 else counts[::-1]
        for n in order:
            print(f"  block {block + 1}/{blocks}: {n} camera{'s' if n > 1 else ''} ...", flush=True)
            result = run_files(backend, frames, n, per_camera)
            rows[n]["cameras"].append(result)
            rows[n]["inference_bound"].append(inference_bound(backend, frames[0], result["total"]["batch_sizes"]))
            rows[n]["single"].append(run_single(backend, frames, per_camera * n))
    return {n: condense(row) for n, row in rows.items()}


def condense(row: dict) -> dict:
    totals = [r["total"] for r in row["cameras"]]
    fps = [t["fps"] for t in totals]
    ratios = [f / bound for f, bound in zip(fps, row["inference_bound"], strict=True)]
    interval_p50 = float(np.median([t["batch_interval"]["p50_ms"] for t in totals]))
    age_p99 = float(np.median([t["frame_age"]["p99_ms"] for t in totals]))
    sizes: Counter[str] = Counter()
    for total in totals:
        sizes.update(total["batch_sizes"])
    names = row["cameras"][0]["cameras"]
    per_camera = [np.median([r["cameras"][name]["fps"] for r in row["cameras"]]) for name in names]
    return {
        "total_fps": round(float(np.median(fps)), 2),
        "per_camera_fps": [round(float(f), 2) for f in per_camera],
        "inference_bound_fps": round(float(np.median(row["inference_bound"])), 2),
        "ratio_to_inference_bound": round(float(np.median(ratios)), 3),
        "block_ratios": [round(r, 3) for r in ratios],
        "single_loop_fps": round(float(np.median(row["single"])), 2),
        "speedup_over_single_loop": round(float(np.median(fps) / np.median(row["single"])), 3),
        "frame_age_p50_ms": round(float(np.median([t["frame_age"]["p50_ms"] for t in totals])), 2),
        "frame_age_p99_ms": round(age_p99, 2),
        "batch_interval_p50_ms": round(interval_p50, 2),
        "age_p99_in_batch_intervals": round(age_p99 / interval_p50, 2) if interval_p50 else None,
        "batch_sizes": dict(sorted(sizes.items(), key=lambda kv: int(kv[0]))),
        "frames_dropped": sum(t["frames_dropped"] for t in totals),
    }


def print_rows(rows: dict) -> None:
    print(f"  {'cameras':>7s} {'total FPS':>9s} {'per camera':>22s} {'infer-bound':>11s} {'ratio':>6s} "
          f"{'single loop':>11s} {'speedup':>7s} {'age p50/p99 ms':>15s} {'interval':>8s} batches")
    for n, row in rows.items():
        per_camera = "/".join(f"{f:.1f}" for f in row["per_camera_fps"][:4]) + ("/..." if n > 4 else "")
        print(f"  {n:7d} {row['total_fps']:9.1f} {per_camera:>22s} {row['inference_bound_fps']:11.1f} "
              f"{row['ratio_to_inference_bound'] * 100:5.1f}% {row['single_loop_fps']:11.1f} "
              f"{row['speedup_over_single_loop']:6.2f}x {row['frame_age_p50_ms']:7.1f}/{row['frame_age_p99_ms']:<7.1f} "
              f"{row['batch_interval_p50_ms']:8.1f} {row['batch_sizes']}")


def verdicts(rows: dict, live: dict | None) -> list[tuple[bool, str]]:
    lines = []
    four = rows.get(4)
    if four is not None:
        ratio = four["ratio_to_inference_bound"]
        lines.append((ratio >= THROUGHPUT_FLOOR, f"4 file cameras: {ratio * 100:.1f} % of the inference-bound rate at "
                      f"the same batches (floor {THROUGHPUT_FLOOR * 100:.0f} %; blocks {four['block_ratios']})"))
        age = four["age_p99_in_batch_intervals"]
        lines.append((age is not None and age <= AGE_LIMIT_INTERVALS, f"4 file cameras: frame age p99 "
                      f"{four['frame_age_p99_ms']:.1f} ms = {age} batch intervals (limit {AGE_LIMIT_INTERVALS:g})"))
        lines.append((four["frames_dropped"] == 0, f"4 file cameras: {four['frames_dropped']} frames dropped"))
    if live is not None:
        drops = {name: camera["dropped_by_cause"] for name, camera in live["cameras"].items()}
        only_stale = all(d["queue_full"] == 0 for d in drops.values())
        stale = [d["stale"] for d in drops.values()]
        full = sum(d["queue_full"] for d in drops.values())
        lines.append((only_stale and sum(stale) > 0, f"{len(drops)} live cameras faster than the engine: drops by "
                      f"the freshness rule per camera {stale}, queue_full {full}; {live['total']['fps']:.1f} FPS"))
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.multicam", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="default: the best model in build/ (as runtime/stream.py picks it)")
    parser.add_argument("--backend", default="auto", choices=RUNTIMES)
    parser.add_argument("--device", default="auto", choices=DEVICES)
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    parser.add_argument("--threads", type=int, default=0, help="CPU inference threads (0: all cores)")
    parser.add_argument("--cameras", default="1,2,4,8", help="camera counts, comma-separated")
    parser.add_argument("--frames", type=int, default=24, help="frames per camera and block")
    parser.add_argument("--blocks", type=int, default=2, help="alternating blocks")
    parser.add_argument("--live-cameras", type=int, default=8, help="live synthetic cameras (0: skip)")
    parser.add_argument("--live-seconds", type=float, default=3.0)
    parser.add_argument("--video", default=str(REPO_ROOT / DEFAULT_VIDEO), help="the KITTI raw video")
    parser.add_argument("--json", help="also write the figures here")
    return parser.parse_args(argv)


def batchable(model: Path, scratch: Path) -> Path:
    """The model itself when its batch axis is symbolic, else a symbolic-batch copy (export/batch_axis.py)."""
    import onnx

    from export.batch_axis import convert

    if model.suffix != ".onnx":
        return model
    dims = onnx.load(str(model), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    if dims and dims[0].dim_param:
        return model
    target = scratch / f"{model.stem}.batch.onnx"
    convert(model, target)
    print(f"{model} has a fixed batch of 1: measured through a symbolic-batch copy (python -m export.batch_axis)")
    return target


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    counts = sorted({int(part) for part in args.cameras.split(",") if part.strip()})
    frames = read_video_frames(args.video, limit=32)
    if not frames:
        return fail(f"{args.video}: cannot read the benchmark video")
    with tempfile.TemporaryDirectory(prefix="roadseg-multicam-") as scratch:
        try:
            model = batchable(Path(args.model) if args.model else default_model(), Path(scratch))
            backend, choice = open_requested(model, args.backend, args.device, args.precision, args.threads or None)
        except (ModelFileError, ImportError, OSError, RuntimeError, ValueError) as error:
            return fail(error)
        if choice is not None:
            print(choice.line())
        print(f"model {model}: {backend.name} {backend.precision} on {backend.device}, takes up to "
              f"{backend.max_batch} frames a call; {args.frames} frames per camera, {args.blocks} blocks")
        try:
            rows = measure(backend, frames, counts, args.frames, args.blocks)
            live = None
            if args.live_cameras:
                bound = rows[max(counts)]["inference_bound_fps"]
                fps = 2.0 * bound / args.live_cameras  # together twice what the engine can take
                print(f"  {args.live_cameras} live cameras at {fps:.1f} FPS each (together 2x the engine) ...",
                      flush=True)
                live = run_live(backend, frames[0], args.live_cameras, fps, args.live_seconds)
        except (SourceError, ModelFileError, OSError) as error:
            return fail(error)
    print_rows(rows)
    results = {"model": str(model), "backend": backend.name, "precision": backend.precision, "device": backend.device,
               "rows": {str(n): row for n, row in rows.items()}, "live": live}
    checks = verdicts(rows, live)
    for ok, line in checks:
        print(f"[{'PASS' if ok else 'FAIL'}] {line}")
    results["verdicts"] = [{"pass": ok, "line": line} for ok, line in checks]
    if args.json:
        atomic_write_text(args.json, json.dumps(results, indent=2) + "\n")
    return 0 if all(ok for ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
