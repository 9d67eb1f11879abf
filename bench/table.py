"""Latency, accuracy and size of every (backend, precision) this machine can run: one table to choose by.

    python -m bench [--checkpoint models/fcn8s_efficientnet_lite0.pt] [--build build]
                            [--data ../shared/data/kitti_road] [--video VIDEO] [--sizes 160x576,256x832]
                            [--no-full] [--quick] [--threads 2] [--out runs/bench] [--check-floors]

Rows: PyTorch eager (CPU FP32; CUDA FP32/FP16/FP16 + CUDA graph on a GPU), ONNX Runtime CPU FP32 and
INT8 (TensorRT-style s8 Q/DQ and the CPU's u8-activation Q/DQ), OpenVINO CPU at every precision it offers
(bench/openvino_rows.py), ONNX Runtime CUDA / TensorRT providers and TensorRT engines; what this machine
cannot run is listed as skipped, with why. Floors are judged on speed-ups measured interleaved with torch eager
FP32 (bench/ratios.py: median of per-block ratios, spread printed). Configurations: the
shipped model at its working size, the full-width VGG16 FCN-8s at 160x576 (untrained unless
--full-checkpoint: its speed does not depend on training), and the shipped model at each --sizes size.

Every row is measured in a fresh process (bench/worker.py, bench/torch_worker.py) so its peak
memory is its own; accuracy is KITTI val MaxF/IoU through train.evaluate on the same 46 images for every
row. ONNX files the build folder does not have (other sizes, the full model) are made by
bench/prepare.py with the project's own export and quantization, and cached under OUT/models.
Writes OUT/latest.json (`machine`, `rows`, `floors`), OUT/latest.md and OUT/latest.png.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from bench import torch_worker, worker
from bench.children import child_env, run_child, torch_importable
from bench.configs import attach_files, parse_size, plan_configs
from bench.floors import floor_checks, floor_lines
from bench.host import machine_info
from bench.measure import add_flops, collect_rows, measure_interleaved
from bench.plan import plan_jobs
from bench.plot import write_plot
from bench.report import console_table, markdown
from bench.worker import BenchError
from runtime.artifacts import FP32_ONNX
from runtime.ioutil import atomic_write_text, fail
from runtime.paths import DEFAULT_KITTI_DIR, DEFAULT_VIDEO, SHIPPED_CHECKPOINT


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=SHIPPED_CHECKPOINT, help="the shipped model")
    parser.add_argument("--build", default="build", help="folder of the exported ONNX files / engines")
    parser.add_argument("--data", default=DEFAULT_KITTI_DIR, help="KITTI Road folder (val split)")
    parser.add_argument("--video", default=DEFAULT_VIDEO,
                        help="real frames for the end-to-end timing")
    parser.add_argument("--sizes", default="", help="comma list of HxW sizes to sweep the shipped model over")
    parser.add_argument("--no-full", action="store_true", help="leave out the full-width VGG16 FCN-8s")
    parser.add_argument("--full-checkpoint", help="a trained full-width checkpoint (accuracy for its rows)")
    parser.add_argument("--quick", action="store_true", help="fewer runs and no sweep: a few minutes")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--warmup", type=int, help="untimed runs per row (default 5, quick 2)")
    parser.add_argument("--runs", type=int, help="timed inference runs per row (default 50, quick 15)")
    parser.add_argument("--e2e-runs", type=int, help="timed end-to-end frames per row (default 30, quick 10)")
    parser.add_argument("--no-accuracy", action="store_true", help="skip KITTI val scoring")
    parser.add_argument("--calibration-frames", type=int, default=32)
    parser.add_argument("--matmul-size", type=int, default=4096, help="side of the fp32 peak GEMM")
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--check-floors", action="store_true", help="exit 1 when a performance floor fails")
    args = parser.parse_args(argv)
    quick = args.quick
    args.warmup = args.warmup if args.warmup is not None else (2 if quick else 5)
    args.runs = args.runs if args.runs is not None else (15 if quick else 50)
    args.e2e_runs = args.e2e_runs if args.e2e_runs is not None else (10 if quick else 30)
    return args


def validate(args: argparse.Namespace) -> None:
    from bench.worker import load_frames

    if args.threads < 1:
        raise BenchError(f"--threads {args.threads}: must be at least 1")
    if args.runs < 1 or args.e2e_runs < 1 or args.warmup < 0:
        raise BenchError("--runs and --e2e-runs must be >= 1, --warmup >= 0")
    for size in filter(None, args.sizes.split(",")):
        parse_size(size)
    if not args.no_accuracy and not (Path(args.data) / "training" / "image_2").is_dir():
        raise BenchError(f"--data {args.data}: no KITTI Road folder there (training/image_2); "
                         "pass --data or --no-accuracy")
    load_frames(args.video, 1)


def probe_torch(args: argparse.Namespace, env: dict[str, str]) -> dict | None:
    if not torch_importable():
        return None
    command = ["--probe", "--threads", str(args.threads), "--matmul-size", str(args.matmul_size)]
    if Path(args.checkpoint).is_file():
        command += ["--checkpoint", args.checkpoint]
    elif not (Path(args.build) / FP32_ONNX).is_file():
        raise BenchError(f"--checkpoint {args.checkpoint}: not found")
    return run_child(torch_worker, command, env)


def run(args: argparse.Namespace) -> dict:
    """The report: machine, settings, configurations, rows (BenchRows), interleaved ratios and floors."""
    started = time.time()
    env = child_env(args.threads)
    print(f"measuring the fp32 peak ({args.threads} threads) ...", flush=True)
    numpy_peak = run_child(worker, ["--matmul-peak", "--threads", str(args.threads),
                                    "--matmul-size", str(args.matmul_size)], env)
    torch_info = probe_torch(args, env)
    machine = machine_info(args.threads, torch_info, numpy_peak)
    configs = plan_configs(args, torch_info)
    for config in configs:
        attach_files(config, args, env)
    jobs = [job for config in configs for job in plan_jobs(config, torch_info, machine["onnxruntime_providers"])]
    rows = collect_rows(jobs, args, env)
    add_flops(rows, configs, machine["fp32_peak_gflops"])
    interleaved = measure_interleaved(configs, rows, args, env) if torch_info else {}
    note = (f"{'quick' if args.quick else 'full'} run; inference = infer() alone; e2e = preprocess + infer + "
            f"postprocess on real frames from {Path(args.video).name}; accuracy on the KITTI Road val split "
            "(same images every row); % peak = achieved GFLOP/s over the measured fp32 GEMM peak (INT8 rows "
            "may pass 100%: VNNI does 4 int8 multiply-adds where fp32 FMA does 1)")
    return {"format": "roadseg-bench-v1", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "duration_s": round(time.time() - started, 1), "machine": machine,
            "settings": {"quick": args.quick, "threads": args.threads, "warmup": args.warmup, "runs": args.runs,
                         "e2e_runs": args.e2e_runs, "sizes": args.sizes, "data": args.data, "video": args.video,
                         "note": note},
            "configs": [{"model": c.model, "input_size": c.size, "files_from": c.origin,
                         "files": {k: str(v) for k, v in c.files.items()}} for c in configs],
            "rows": rows, "interleaved": interleaved, "floors": floor_checks(rows, configs, interleaved)}


def write_reports(report: dict, out: Path) -> None:
    on_disk = {**report, "rows": [row.to_json() for row in report["rows"]]}
    atomic_write_text(out / "latest.json", json.dumps(on_disk, indent=1) + "\n")
    atomic_write_text(out / "latest.md", markdown(report))
    problem = write_plot(report, out / "latest.png")
    if problem:
        print(f"warning: {problem}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        validate(args)
        report = run(args)
        write_reports(report, Path(args.out))
    except (BenchError, ValueError, OSError) as error:
        return fail(error)
    print()
    print(console_table(report["rows"]))
    print()
    lines = floor_lines(report["floors"])
    print("\n".join(lines))
    print(f"\nwrote {Path(args.out) / 'latest.json'}, latest.md, latest.png ({report['duration_s']:.0f} s)")
    if args.check_floors and not all(c["passed"] for c in report["floors"]):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
