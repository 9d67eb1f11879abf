"""The fleet's two benchmarks, each printing its figures and the targets they are held to.

    python -m fleet.bench batch      # fleet.batch vs runtime/stream.py over the same videos one after another
    python -m fleet.bench serve      # fleet.serve: capacity, then 8 cameras offered 70 % of it

batch: N copies of a real drive (default: the KITTI drive, 6 copies); the single-machine runtime streams them
one after another (one process per video, as a user would, writing masks), then fleet.batch processes the same
folder on a local cluster (one process, cluster start included). Frames/s are given end to end (process and
cluster start, model loading included) and in steady state (the runtime's loop; fleet's `steady_fps`, from the
first frame an actor started to the last it finished, once the actors have loaded the model), with the ratio
fleet / runtime side by side, and the masks of both compared file by file. Target: fleet >= 85 % of the runtime's
frames/s in steady state (the mean of the rounds), identical masks. --rounds alternates the two.

serve: single-frame latency (preprocess + inference + postprocess, no Ray) of the same model in this process;
the deployment's capacity (8 cameras sending as fast as it answers); then 8 cameras offered --load x capacity.
Targets: p95 latency <= 4x single-frame, zero drops, batches larger than 1 formed.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

import fleet.batch
import runtime.stream
from fleet.loadgen import DEFAULT_VIDEO, camera_frames, format_report, run_load
from runtime.ioutil import atomic_write_text, fail
from runtime.machine import cpu_name
from runtime.model_select import default_model
from runtime.sources import read_video_frames

REPO = Path(__file__).resolve().parent.parent
BATCH_TARGET = 0.85
P95_TARGET = 4.0


def machine_line() -> str:
    import os

    load = os.getloadavg() if hasattr(os, "getloadavg") else (0, 0, 0)
    import ray

    return (f"{cpu_name()}, {os.cpu_count()} cores, load average "
            f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}; Python {platform.python_version()}, "
            f"ray {ray.__version__}, OpenCV {cv2.__version__}")


def copy_videos(video: Path, copies: int, folder: Path) -> list[Path]:
    folder.mkdir(parents=True)
    paths = [folder / f"drive_{i:02d}{video.suffix}" for i in range(copies)]
    for path in paths:
        shutil.copyfile(video, path)
    return paths


def run_runtime(videos: list[Path], out: Path, model: Path, backend: str) -> dict:
    """runtime/stream.py over each video, one after another, as separate processes."""
    frames, loop_s = 0, 0.0
    started = time.perf_counter()
    for video in videos:
        stats = out / f"{video.stem}.json"
        result = subprocess.run([sys.executable, runtime.stream.__file__, str(video), "--model", str(model),
                                 "--backend", backend, "--headless", "--quiet", "--save-masks", str(out / video.stem),
                                 "--stats-json", str(stats)], capture_output=True, text=True, cwd=REPO)
        if result.returncode != 0:
            raise RuntimeError(f"runtime/stream.py {video}: {result.stderr.strip()[-300:]}")
        summary = json.loads(stats.read_text())
        frames += summary["frames_processed"]
        loop_s += summary["frames_processed"] / summary["fps"]
    wall_s = time.perf_counter() - started
    return {"frames": frames, "wall_s": round(wall_s, 3), "fps_end_to_end": round(frames / wall_s, 3),
            "fps_steady": round(frames / loop_s, 3)}


def run_fleet(folder: Path, out: Path, model: Path, backend: str, extra: list[str]) -> dict:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", fleet.batch.__name__, str(folder), "--out", str(out), "--model",
                             str(model), "--backend", backend, "--no-progress", *extra],
                            capture_output=True, text=True, cwd=REPO)
    wall_s = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"fleet.batch: {result.stderr.strip()[-300:]}")
    summary = json.loads((out / fleet.batch.SUMMARY_NAME).read_text())
    return {"frames": summary["frames"], "wall_s": round(wall_s, 3),
            "fps_end_to_end": round(summary["frames"] / wall_s, 3),
            "fps_steady": summary.get("steady_fps", 0.0), "pool": summary["pool"],
            "backend": summary["backend"]}


def differing_masks(runtime_out: Path, fleet_out: Path) -> tuple[int, int]:
    """(masks compared, masks that differ or are missing on either side)."""
    compared = differ = 0
    for theirs in sorted(runtime_out.glob("*/*.png")):
        ours = fleet_out / theirs.parent.name / "masks" / theirs.name
        compared += 1
        a = cv2.imread(str(theirs), cv2.IMREAD_UNCHANGED)
        b = cv2.imread(str(ours), cv2.IMREAD_UNCHANGED) if ours.is_file() else None
        differ += b is None or not np.array_equal(a, b)
    differ += sum(1 for _ in fleet_out.glob("*/masks/*.png")) - compared
    return compared, differ


def bench_batch(args: argparse.Namespace) -> dict:
    model = Path(args.model) if args.model else default_model()
    rows = []
    with tempfile.TemporaryDirectory(prefix="fleet_bench_") as temp:
        videos = copy_videos(Path(args.video), args.copies, Path(temp) / "videos")
        for round_number in range(args.rounds):
            order = ("runtime", "fleet") if round_number % 2 == 0 else ("fleet", "runtime")
            outs = {side: Path(temp) / f"{side}_{round_number}" for side in order}
            result = {}
            for side in order:
                if side == "runtime":
                    result[side] = run_runtime(videos, outs[side], model, args.backend)
                else:
                    result[side] = run_fleet(videos[0].parent, outs[side], model, args.backend, args.fleet_args)
            compared, differ = differing_masks(outs["runtime"], outs["fleet"])
            ours, theirs = result["fleet"], result["runtime"]
            row = {"round": round_number, **result, "masks_compared": compared, "masks_differing": differ,
                   "ratio_end_to_end": round(ours["fps_end_to_end"] / theirs["fps_end_to_end"], 3),
                   "ratio_steady": round(ours["fps_steady"] / theirs["fps_steady"], 3)}
            rows.append(row)
            print(f"round {round_number}: runtime {theirs['fps_end_to_end']:.1f} frames/s end to end "
                  f"({theirs['fps_steady']:.1f} in its loop) | fleet {ours['fps_end_to_end']:.1f} "
                  f"end to end ({ours['fps_steady']:.1f} once its actors run; {ours['pool']}) | "
                  f"fleet/runtime {row['ratio_end_to_end']:.2f} end to end, {row['ratio_steady']:.2f} steady | "
                  f"masks: {differ} of {compared} differ", flush=True)
    mean = sum(row["ratio_steady"] for row in rows) / len(rows)
    verdict = "PASS" if mean >= BATCH_TARGET and all(row["masks_differing"] == 0 for row in rows) else "FAIL"
    print(f"target fleet >= {BATCH_TARGET:.0%} of the runtime's frames/s with identical masks: {verdict} "
          f"(steady-state ratios {[row['ratio_steady'] for row in rows]}, mean {mean:.3f}; end to end "
          f"{[row['ratio_end_to_end'] for row in rows]})")
    return {"videos": args.copies, "video": str(args.video), "model": str(model), "rounds": rows, "verdict": verdict}


def single_frame_ms(model: Path, backend: str, frames: list[np.ndarray], repeats: int = 40) -> float:
    """p50 of preprocess + inference + postprocess of one frame, in this process, no Ray."""
    from fleet.segmenter import FrameSegmenter, resolve_backend

    name, precision, _label = resolve_backend(model, backend, "auto", "auto")
    segmenter = FrameSegmenter(model, name, None, precision)
    times = []
    for i in range(repeats):
        started = time.perf_counter()
        segmenter([frames[i % len(frames)]])
        times.append((time.perf_counter() - started) * 1000.0)
    return float(np.percentile(times[5:], 50))


def bench_serve(args: argparse.Namespace) -> dict:
    from fleet import serve as fleet_serve
    from fleet.cluster import connect

    model = Path(args.model) if args.model else default_model()
    frames = camera_frames(Path(args.video), "jpeg")
    decoded = [cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) for data, _ in frames[:16]]
    single_ms = single_frame_ms(model, args.backend, decoded)
    print(f"single frame (preprocess + inference + postprocess, no Ray): p50 {single_ms:.1f} ms", flush=True)
    connect(None)
    try:
        handle = fleet_serve.start(model, None, backend=args.backend, max_batch=args.max_batch)
        run_load(handle, frames, args.cameras, 2.0, 2.0)  # warm-up: replica, handle, event loop
        saturated, _ = run_load(handle, frames, args.cameras, 1000.0 / args.cameras, args.capacity_seconds,
                                max_in_flight=2)
        capacity = saturated["delivered_fps_total"]
        print(f"capacity: {capacity:.1f} frames/s ({args.cameras} cameras sending as fast as answered; batches "
              f"{saturated['batch_histogram']})", flush=True)
        fps = args.load * capacity / args.cameras
        result, _ = run_load(handle, frames, args.cameras, fps, args.seconds)
    finally:
        fleet_serve.stop_serving()
    print(format_report(result))
    ratio = result["latency"]["p95_ms"] / single_ms
    formed = any(int(size) > 1 for size in result["batch_histogram"])
    drops = result["dropped"] + result["lost"] + result["errors"]
    verdict = "PASS" if ratio <= P95_TARGET and drops == 0 and formed else "FAIL"
    print(f"targets at {args.load:.0%} of capacity: p95 {result['latency']['p95_ms']:.1f} ms = {ratio:.2f}x single "
          f"frame (<= {P95_TARGET:g}x), drops {drops} (0), batches > 1 formed: {formed}: {verdict}")
    return {"single_frame_p50_ms": round(single_ms, 3), "capacity_fps": capacity, "load": args.load,
            "p95_over_single": round(ratio, 3), "verdict": verdict, "report": result}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m fleet.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", choices=("batch", "serve"))
    parser.add_argument("--model", metavar="PATH")
    parser.add_argument("--backend", default="auto", choices=("auto", "onnxruntime", "openvino"))
    parser.add_argument("--video", default=str(DEFAULT_VIDEO))
    parser.add_argument("--copies", type=int, default=6, help="batch: copies of the video to process")
    parser.add_argument("--rounds", type=int, default=1, help="batch: runtime/fleet pairs, order alternating")
    parser.add_argument("--fleet-args", nargs=argparse.REMAINDER, default=[],
                        help="batch: more fleet.batch options (e.g. --actors 2 --threads 1), last on the line")
    parser.add_argument("--cameras", type=int, default=8, help="serve: cameras")
    parser.add_argument("--load", type=float, default=0.7, help="serve: offered load as a fraction of capacity")
    parser.add_argument("--seconds", type=float, default=15.0, help="serve: how long the cameras send")
    parser.add_argument("--capacity-seconds", type=float, default=6.0)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--json", metavar="PATH", help="also write the figures here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runtime.stream.quiet_opencv()
    if not Path(args.video).is_file() or not read_video_frames(args.video, 1):
        return fail(f"--video {args.video}: not a readable video")
    print(f"{time.strftime('%Y-%m-%d %H:%M')}  {machine_line()}", flush=True)
    try:
        figures = bench_batch(args) if args.which == "batch" else bench_serve(args)
    except (RuntimeError, OSError, ValueError) as error:
        return fail(error)
    figures["machine"] = machine_line()
    if args.json:
        atomic_write_text(args.json, json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
