"""Measuring the planned rows: each job in its own worker process, its accuracy, its FLOPs, and the floor
configurations' CPU rows interleaved with torch eager FP32."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench import interleave, torch_worker, worker
from bench.children import run_child, torch_importable
from bench.configs import parse_size
from bench.flops import model_flops
from bench.jobs import Config, Job
from bench.ratios import interleave_command, summarize
from bench.rows import BenchRow
from bench.worker import BenchError
from runtime.ioutil import atomic_write_text, sha256_file
from train import evaluate


def collect_rows(jobs: list[Job], args: argparse.Namespace, env: dict[str, str]) -> list[BenchRow]:
    """A row per job: measured, or skipped with why (a failed measurement says so and the run goes on)."""
    rows = []
    to_run = [j for j in jobs if j.skipped is None]
    for job in jobs:
        row = base_row(job)
        if job.skipped is None:
            index = to_run.index(job) + 1
            print(f"[{index}/{len(to_run)}] {row.title} @ {job.config.size} ...", flush=True)
            try:
                row = row.updated(measure_job(job, args, env))
            except (BenchError, ValueError, OSError) as error:
                row.skipped = f"failed: {error}"
                print(f"  failed: {error}", file=sys.stderr)
        rows.append(row)
    return rows


def run_counts(job: Job, args: argparse.Namespace) -> tuple[int, int, int]:
    """(warm-up, runs, end-to-end runs); the full-width model on a CPU gets fewer (it takes ~0.5 s a run)."""
    if job.config.heavy and job.device == "cpu":
        return min(args.warmup, 3), max(3, args.runs // 2 if not args.quick else 8), max(3, args.e2e_runs // 3)
    return args.warmup, args.runs, args.e2e_runs


def measure_job(job: Job, args: argparse.Namespace, env: dict[str, str]) -> dict:
    """The figures a worker reports for `job` (and its accuracy), in the workers' JSON form."""
    warmup, runs, e2e = run_counts(job, args)
    common = ["--threads", str(args.threads), "--warmup", str(warmup), "--runs", str(runs),
              "--e2e-runs", str(e2e), "--video", args.video]
    config = job.config
    if job.backend == "torch":
        source = (["--checkpoint", config.checkpoint] if config.checkpoint
                  else ["--random-width", str(config.random_width)])
        data = ["--data", args.data] if config.accuracy and not args.no_accuracy else []
        return run_child(torch_worker, [*source, "--size", config.size, *job.extra, *common, *data], env)
    reported = run_child(worker, ["--model", str(job.file), "--provider", job.provider, *job.extra, *common], env)
    if config.accuracy and not args.no_accuracy:
        reported.update(score(job, args, env))
    return reported


def score(job: Job, args: argparse.Namespace, env: dict[str, str]) -> dict:
    """KITTI val MaxF/IoU of a model file through train.evaluate, cached per file content and backend."""
    if not torch_importable():
        return {"accuracy_note": "train.evaluate needs the training environment (torch)"}
    backend = "cpu" if job.provider == "cpu" and job.backend == "onnxruntime" else job.provider
    hint = ["--precision", job.precision] if job.backend == "openvino" else []
    tag = f"{backend}-{job.precision}" if hint else backend
    cache = Path(args.out) / "scores" / f"{sha256_file(job.file)[:20]}-{tag}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    result = run_child(evaluate, ["--model", str(job.file), "--data", args.data, "--split", "val",
                                  "--backend", backend, *hint, "--no-progress"], env)
    metrics = {"maxf": round(result["maxf"] * 100, 3), "iou": round(result["iou"] * 100, 3),
               "ap": round(result["ap"] * 100, 3), "eval_images": result["images"]}
    atomic_write_text(cache, json.dumps(metrics) + "\n")
    return metrics


def base_row(job: Job) -> BenchRow:
    config = job.config
    size_mb = round(job.file.stat().st_size / 1e6, 2) if job.file and job.file.is_file() else None
    if job.backend == "torch" and size_mb is None and config.checkpoint and Path(config.checkpoint).is_file():
        size_mb = round(Path(config.checkpoint).stat().st_size / 1e6, 2)
    return BenchRow(model=config.model, width=config.width, backend=job.backend, precision=job.precision,
                    variant=job.variant, device=job.device, input_size=config.size, size_mb=size_mb,
                    file=str(job.file) if job.file else config.checkpoint, skipped=job.skipped)


def add_flops(rows: list[BenchRow], configs: list[Config], peak: float) -> None:
    counted: dict[tuple[str, str], tuple[int, str]] = {}
    for config in configs:
        if "fp32" in config.files:
            height, width = parse_size(config.size)
            counted[(config.model, config.size)] = model_flops(config.files["fp32"], config.width,
                                                               config.num_classes, height, width)
    for row in rows:
        flops = counted.get((row.model, row.input_size))
        row.gflop = round(flops[0] / 1e9, 3) if flops else None
        row.flops_counted_from = flops[1] if flops else None
        row.gflops = row.peak_fraction = None
        if flops and row.p50_ms and row.skipped is None:
            row.gflops = round(flops[0] / 1e9 / (row.p50_ms / 1000.0), 1)
            row.peak_fraction = round(row.gflops / peak, 3)


def measure_interleaved(configs: list[Config], rows: list[BenchRow], args: argparse.Namespace,
                        env: dict[str, str]) -> dict[str, dict]:
    """Each floor configuration's CPU rows against torch eager FP32 in alternating blocks (bench/ratios.py)."""
    found = {}
    for config in (c for c in configs if c.floors):
        mine = [r for r in rows if r.model == config.model and r.input_size == config.size]
        command = interleave_command(config, mine, args)
        if command is None:
            continue
        print(f"interleaved blocks vs torch eager FP32: {config.model} @ {config.size} ...", flush=True)
        try:
            found[f"{config.model}@{config.size}"] = summarize(run_child(interleave, command, env))
        except BenchError as error:
            print(f"  interleaved blocks failed ({error}): floors use the rows' p50s", file=sys.stderr)
    return found
