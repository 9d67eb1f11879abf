"""Latency, accuracy and size of every (backend, precision) this machine can run: one table to choose by.

    python -m bench [--checkpoint models/fcn8s_vgg16_w0.25_cpu.pt] [--build build]
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
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

from bench import interleave, prepare, torch_worker, worker
from bench.flops import model_flops
from bench.jobs import Config, Job
from bench.openvino_rows import openvino_jobs
from bench.ratios import interleave_command, speedup, spread_text, summarize
from bench.worker import BenchError
from runtime import machine
from runtime.artifacts import FP16_ONNX, FP32_ONNX, INT8_CPU_ONNX, INT8_ONNX
from runtime.contract import TRAINING_KEY
from runtime.ioutil import atomic_write_text, fail, save_figure, sha256_file
from runtime.paths import DEFAULT_KITTI_DIR, DEFAULT_VIDEO, SHIPPED_CHECKPOINT
from train import evaluate

REPO = Path(__file__).resolve().parents[1]
FULL_SIZE = "160x576"
INT8_VARIANTS = {"int8_tensorrt": "Q/DQ s8 (TensorRT)", "int8_cpu": "Q/DQ u8 + ReLU/pool (CPU)"}
FLOOR_INT8_SPEEDUP, FLOOR_FP32_SPEEDUP, FLOOR_MAXF_DROP_PT = 4.0, 1.5, 0.5
FLOOR_BEST_CPU_SPEEDUP = 10.0  # the shipped model's best CPU row (any backend) over torch eager FP32
PREPARE_RECIPE = 3  # bump when bench/prepare.py makes different files: cached folders are then redone
NOISY_SPREAD = 1.5  # p90 above 1.5x p50: other load on the machine disturbed the row
ORT_CPU_FP16_REASON = ("ONNX Runtime's CPU provider has no FP16 convolution kernels on x86: it inserts casts "
                       "and runs FP32 (see export/fp16.py); FP16 is a GPU precision")


# ---------------------------------------------------------------- arguments and environment


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


def parse_size(text: str) -> tuple[int, int]:
    try:
        return prepare.parse_size(text)
    except ValueError as error:
        raise BenchError(str(error).replace("--size ", "--sizes ", 1)) from error


def child_env(threads: int) -> dict[str, str]:
    """Every child sees the same thread budget, and the repository on its path."""
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    return env


def child_command(module: ModuleType, args: list[str]) -> list[str]:
    """`python -m MODULE ARGS`, the module named by its imported object: a renamed worker fails at import here,
    not as a child that cannot start. Each row still runs in its own process (its own peak memory)."""
    return [sys.executable, "-m", module.__name__, *args]


def run_child(module: ModuleType, args: list[str], env: dict[str, str], timeout: float = 1800) -> dict:
    """Run `python -m MODULE ARGS --json TEMP` and return the JSON it wrote; BenchError with its stderr if not."""
    with tempfile.TemporaryDirectory(prefix="roadseg-bench-") as scratch:
        out = Path(scratch) / "row.json"
        try:
            result = subprocess.run([*child_command(module, args), "--json", str(out)], capture_output=True,
                                    text=True, timeout=timeout, env=env, cwd=REPO)
        except subprocess.TimeoutExpired as error:
            raise BenchError(f"{module.__name__}: timed out after {timeout:.0f} s") from error
        if result.returncode != 0 or not out.is_file():
            lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
            raise BenchError(lines[-1] if lines else f"exit code {result.returncode}")
        return json.loads(out.read_text())


def torch_importable() -> bool:
    return importlib.util.find_spec("torch") is not None


# ---------------------------------------------------------------- the machine


def cpu_flags() -> list[str]:
    """The instruction sets that decide these kernels' speed, of those this CPU has."""
    present = machine.cpu_flags()
    return [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8") if f in present]


def nvidia_gpus() -> list[dict]:
    return [{"name": name, "driver": driver, "memory": f"{memory} MiB"}
            for name, driver, memory in machine.nvidia_smi("gpu", ["name", "driver_version", "memory.total"])]


def library_versions() -> dict[str, str | None]:
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in ("numpy", "opencv-python", "opencv-python-headless", "onnxruntime", "onnxruntime-gpu", "openvino",
                 "onnx",
                 "torch", "tensorrt", "cuda-python"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def machine_info(threads: int, torch_info: dict | None, numpy_peak: dict) -> dict:
    from runtime.backends import available_providers

    peaks = {key: numpy_peak.get(key) for key in ("numpy_matmul_gflops", "onnxruntime_matmul_gflops")}
    if torch_info:
        peaks["torch_matmul_gflops"] = torch_info.get("torch_matmul_gflops")
    peak = max(v for v in peaks.values() if v)
    return {
        "cpu": machine.cpu_model(), "cpu_cores": os.cpu_count(), "cpu_flags": cpu_flags(), "threads": threads,
        "os": f"{platform.system()} {platform.release()}",
        "gpus": nvidia_gpus(), "torch_cuda": (torch_info or {}).get("cuda_device"),
        "onnxruntime_providers": available_providers(), "libraries": library_versions(),
        "fp32_peak_gflops": peak, "fp32_peak_source": {**peaks, "matmul": f"{numpy_peak.get('matmul_size')}^3 "
                                                                          f"fp32 on {threads} threads, best of 3"},
    }


# ---------------------------------------------------------------- configurations and their files




def onnx_description(path: Path) -> tuple[dict, str, dict[str, str]]:
    """(arch dict, HxW, metadata) from an ONNX file's roadseg metadata, read through ONNX Runtime."""
    from runtime.backends import OnnxRuntimeBackend, model_description

    backend = OnnxRuntimeBackend(path, provider="cpu", threads=1)
    height, width = backend.spec.size_hw
    return model_description(backend.metadata), f"{height}x{width}", backend.metadata


def build_files(build: Path, config: Config) -> dict[str, Path]:
    """The build folder's files when they are this configuration's model (same training run) and size."""
    fp32 = build / FP32_ONNX
    if not fp32.is_file():
        return {}
    try:
        file_arch, file_size, metadata = onnx_description(fp32)
    except ValueError:
        return {}
    if file_size != config.size or float(file_arch.get("width", 1.0)) != config.width:
        return {}
    if config.training is not None and metadata.get(TRAINING_KEY) != config.training:
        print(f"  {fp32} is the export of another training run than {config.checkpoint}: not used", flush=True)
        return {}
    names = {"fp32": FP32_ONNX, "fp16": FP16_ONNX, "int8_tensorrt": INT8_ONNX,
             "int8_cpu": INT8_CPU_ONNX}
    files = {key: build / name for key, name in names.items() if (build / name).is_file()}
    for engine in sorted(build.glob("*.engine")) + sorted(build.glob("*.plan")):
        files[f"engine:{engine.name}"] = engine
    return files


def calibration_method(build: Path) -> str:
    """The method the calibration stage chose for the shipped INT8 model, so sweeps quantize alike."""
    try:
        return json.loads((build / "calibration_methods.json").read_text())["best_method"]
    except (OSError, ValueError, KeyError):
        return "entropy"


def prepared_files(config: Config, args: argparse.Namespace, env: dict[str, str]) -> dict[str, Path]:
    """FP32 + both INT8 flavours for this configuration, made once by bench.prepare and cached under
    OUT/models."""
    method = calibration_method(Path(args.build))
    size = ["--size", config.size]
    if config.checkpoint:
        key = f"{Path(config.checkpoint).stem}-{sha256_file(Path(config.checkpoint))[:12]}-{config.size}"
        source = ["--checkpoint", config.checkpoint]
    else:
        key = f"random-w{config.random_width:g}-{config.size}"
        source = ["--random-width", str(config.random_width)]
    folder = Path(args.out) / "models" / f"{key}-r{PREPARE_RECIPE}"
    record_path = folder / "prepared.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    fresh = (record.get("method") == method and record.get("calibration_requested") == args.calibration_frames
             and all((folder / name).is_file() for name in record.get("files", {}).values()))
    if not fresh:
        if not torch_importable():
            raise BenchError(f"{config.model} at {config.size}: no ONNX files and no torch here to export them")
        print(f"  preparing ONNX files for {config.model} at {config.size} (export + INT8 quantization, "
              f"cached in {folder}) ...", flush=True)
        command = child_command(prepare, [*source, *size, "--out", str(folder), "--calibration-source", args.data,
                                          "--calibration-frames", str(args.calibration_frames), "--method", method,
                                          "--no-progress"])
        result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
        if result.returncode != 0:
            lines = result.stderr.strip().splitlines()
            raise BenchError(f"{prepare.__name__} failed for {config.model} at {config.size}: "
                             f"{lines[-1] if lines else result.returncode}")
        record = json.loads(record_path.read_text())
    return {key: folder / name for key, name in record["files"].items()}


def plan_configs(args: argparse.Namespace, torch_info: dict | None) -> list[Config]:
    checkpoint = Path(args.checkpoint)
    build = Path(args.build)
    described = (torch_info or {}).get("checkpoint")
    training = None
    if described:
        arch, size, training = described["arch"], described["input_size"], described.get("training")
    elif (build / FP32_ONNX).is_file():  # no torch: the exported model is all there is
        arch, size, _ = onnx_description(build / FP32_ONNX)
    else:
        raise BenchError(f"{checkpoint}: not found (and no {build / FP32_ONNX}); "
                         "pass --checkpoint or run `make export`")
    name = checkpoint.stem if checkpoint.is_file() else (build / FP32_ONNX).name
    shipped = Config(name, float(arch.get("width", 1.0)), int(arch.get("num_classes", 2)), size,
                     checkpoint=str(checkpoint) if checkpoint.is_file() else None,
                     floors=True, list_skipped=True, training=training)
    configs = [shipped]
    if not args.no_full:
        full_name = Path(args.full_checkpoint).stem if args.full_checkpoint else "fcn8s_vgg16 (untrained)"
        configs.append(Config(full_name, 1.0, 2, FULL_SIZE, checkpoint=args.full_checkpoint,
                              random_width=None if args.full_checkpoint else 1.0,
                              accuracy=bool(args.full_checkpoint), floors=True, list_skipped=True, heavy=True))
    for text in filter(None, (s.strip() for s in args.sizes.split(","))):
        height, width = parse_size(text)
        if f"{height}x{width}" != size and shipped.checkpoint:
            configs.append(Config(name, shipped.width, shipped.num_classes, f"{height}x{width}",
                                  checkpoint=shipped.checkpoint, training=training))
    return configs


def attach_files(config: Config, args: argparse.Namespace, env: dict[str, str]) -> None:
    """The build folder's files when they are this configuration's, else prepared (and cached) ones."""
    files = build_files(Path(args.build), config) if config.random_width is None else {}
    if "fp32" in files or (config.checkpoint is None and config.random_width is None):
        origin = str(args.build)
    else:
        files, origin = prepared_files(config, args, env), prepare.__name__
    config.files, config.origin = files, origin


# ---------------------------------------------------------------- rows


def plan_jobs(config: Config, torch_info: dict | None, providers: list[str]) -> list[Job]:
    jobs: list[Job] = []
    no_torch = "torch is not installed in this environment"
    jobs.append(Job(config, "torch", "fp32", "cpu", "eager", skipped=None if torch_info else no_torch))
    files = config.files
    jobs.append(Job(config, "onnxruntime", "fp32", "cpu", file=files.get("fp32"),
                    skipped=None if "fp32" in files else "no FP32 ONNX file"))
    if config.list_skipped:
        jobs.append(Job(config, "onnxruntime", "fp16", "cpu", skipped=ORT_CPU_FP16_REASON))
    for key, variant in INT8_VARIANTS.items():
        jobs.append(Job(config, "onnxruntime", "int8", "cpu", variant, file=files.get(key),
                        skipped=None if key in files else f"no {variant} ONNX file (make calibrate)"))
    jobs += openvino_jobs(config, INT8_VARIANTS)
    jobs += gpu_jobs(config, torch_info, providers)
    return [j for j in jobs if j.skipped is None or config.list_skipped]


def gpu_jobs(config: Config, torch_info: dict | None, providers: list[str]) -> list[Job]:
    files, gpus = config.files, nvidia_gpus()
    gpu = gpus[0]["name"] if gpus else "gpu"
    cuda = bool(torch_info and torch_info.get("cuda_available"))
    no_cuda = ("no CUDA GPU: torch.cuda.is_available() is False" if torch_info
               else "torch is not installed in this environment")
    jobs = [Job(config, "torch", "fp32", gpu, "eager on CUDA", extra=["--device", "cuda"],
                skipped=None if cuda else no_cuda),
            Job(config, "torch", "fp16", gpu, "eager on CUDA", extra=["--device", "cuda", "--precision", "fp16"],
                skipped=None if cuda else no_cuda),
            Job(config, "torch", "fp16", gpu, "eager + CUDA graph",
                extra=["--device", "cuda", "--precision", "fp16", "--cuda-graph"],
                skipped=None if cuda else no_cuda)]
    for provider, label, keys in (("cuda", "CUDAExecutionProvider", ("fp32", "fp16")),
                                  ("tensorrt", "TensorrtExecutionProvider", ("fp32", "int8_tensorrt"))):
        for key in keys:
            precision = "int8" if key.startswith("int8") else key
            reason = None
            if label not in providers:
                reason = f"ONNX Runtime here has no {label} (providers: {', '.join(providers)}; " \
                         "needs onnxruntime-gpu and an NVIDIA GPU)"
            elif key not in files:
                reason = f"no {precision} ONNX file"
            jobs.append(Job(config, "onnxruntime", precision, gpu, f"{provider} provider", file=files.get(key),
                            provider=provider, skipped=reason))
    jobs += engine_jobs(config, gpus)
    return jobs


def engine_jobs(config: Config, gpus: list[dict]) -> list[Job]:
    engines = {k.split(":", 1)[1]: v for k, v in config.files.items() if k.startswith("engine:")}
    if importlib.util.find_spec("tensorrt") is None:
        reason = "the tensorrt Python package is not installed (TensorRT runs on the NVIDIA target)"
    elif not gpus:
        reason = "no NVIDIA GPU (nvidia-smi finds none); TensorRT engines need one"
    elif not engines:
        reason = "no TensorRT engine in the build folder (make engine on the target)"
    else:
        return [Job(config, "tensorrt", "int8" if "int8" in name else "fp16" if "fp16" in name else "fp32",
                    gpus[0]["name"], name, file=path, provider="tensorrt") for name, path in engines.items()]
    return [Job(config, "tensorrt", precision, gpus[0]["name"] if gpus else "gpu", "engine", skipped=reason)
            for precision in ("fp16", "int8")]


def run_counts(job: Job, args: argparse.Namespace) -> tuple[int, int, int]:
    """(warm-up, runs, end-to-end runs); the full-width model on a CPU gets fewer (it takes ~0.5 s a run)."""
    if job.config.heavy and job.device == "cpu":
        return min(args.warmup, 3), max(3, args.runs // 2 if not args.quick else 8), max(3, args.e2e_runs // 3)
    return args.warmup, args.runs, args.e2e_runs


def measure_job(job: Job, args: argparse.Namespace, env: dict[str, str]) -> dict:
    warmup, runs, e2e = run_counts(job, args)
    common = ["--threads", str(args.threads), "--warmup", str(warmup), "--runs", str(runs),
              "--e2e-runs", str(e2e), "--video", args.video]
    config = job.config
    if job.backend == "torch":
        source = (["--checkpoint", config.checkpoint] if config.checkpoint
                  else ["--random-width", str(config.random_width)])
        data = ["--data", args.data] if config.accuracy and not args.no_accuracy else []
        return run_child(torch_worker, [*source, "--size", config.size, *job.extra, *common, *data], env)
    row = run_child(worker, ["--model", str(job.file), "--provider", job.provider, *job.extra, *common], env)
    if config.accuracy and not args.no_accuracy:
        row.update(score(job, args, env))
    return row


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


def base_row(job: Job) -> dict:
    config = job.config
    size_mb = round(job.file.stat().st_size / 1e6, 2) if job.file and job.file.is_file() else None
    if job.backend == "torch" and size_mb is None and config.checkpoint and Path(config.checkpoint).is_file():
        size_mb = round(Path(config.checkpoint).stat().st_size / 1e6, 2)
    return {"model": config.model, "width": config.width, "backend": job.backend, "precision": job.precision,
            "variant": job.variant, "device": job.device, "input_size": config.size, "size_mb": size_mb,
            "file": str(job.file) if job.file else config.checkpoint, "maxf": None, "iou": None,
            "p50_ms": None, "p90_ms": None, "p99_ms": None, "e2e_p50_ms": None, "e2e_p99_ms": None,
            "fps": None, "peak_rss_mb": None, "warmup": None, "runs": None, "threads": None,
            "skipped": job.skipped}


def add_flops(rows: list[dict], configs: list[Config], peak: float) -> None:
    counted: dict[tuple[str, str], tuple[int, str]] = {}
    for config in configs:
        if "fp32" in config.files:
            height, width = parse_size(config.size)
            counted[(config.model, config.size)] = model_flops(config.files["fp32"], config.width,
                                                               config.num_classes, height, width)
    for row in rows:
        flops = counted.get((row["model"], row["input_size"]))
        row["gflop"] = round(flops[0] / 1e9, 3) if flops else None
        row["flops_counted_from"] = flops[1] if flops else None
        row["gflops"] = row["peak_fraction"] = None
        if flops and row.get("p50_ms") and row["skipped"] is None:
            row["gflops"] = round(flops[0] / 1e9 / (row["p50_ms"] / 1000.0), 1)
            row["peak_fraction"] = round(row["gflops"] / peak, 3)


# ---------------------------------------------------------------- floors


def floor_checks(rows: list[dict], configs: list[Config], interleaved: dict[str, dict] | None = None
                 ) -> list[dict]:
    """Speed-ups over PyTorch eager FP32 on CPU, per floor configuration, from this run's measurements: the
    median of interleaved per-block ratios where `interleaved` has them ("model@size" -> label -> spread),
    else the ratio of the rows' p50s."""
    checks = []
    for config in (c for c in configs if c.floors):
        mine = [r for r in rows if r["model"] == config.model and r["input_size"] == config.size
                and r["skipped"] is None and r["device"] == "cpu"]
        torch_row = next((r for r in mine if r["backend"] == "torch" and r["precision"] == "fp32"), None)
        fp32 = next((r for r in mine if r["backend"] == "onnxruntime" and r["precision"] == "fp32"), None)
        int8_rows = [r for r in mine if r["backend"] == "onnxruntime" and r["precision"] == "int8"]
        check = {"model": config.model, "input_size": config.size, "torch_p50_ms": None, "passed": False}
        if torch_row is None or fp32 is None or not int8_rows:
            missing = [name for name, row in (("torch eager FP32", torch_row), ("ORT FP32", fp32),
                                              ("ORT INT8", int8_rows[0] if int8_rows else None)) if row is None]
            check["reason"] = f"no {', '.join(missing)} row measured here (the floors compare all three)"
            checks.append(check)
            continue
        ratios = (interleaved or {}).get(f"{config.model}@{config.size}")
        int8 = best_int8(int8_rows, torch_row, ratios)
        drop = maxf_drop(torch_row, int8)
        (int8_speedup, int8_spread), (fp32_speedup, fp32_spread) = (speedup(ratios, torch_row, int8),
                                                                    speedup(ratios, torch_row, fp32))
        check.update({
            "torch_p50_ms": torch_row["p50_ms"], "ort_fp32_p50_ms": fp32["p50_ms"],
            "ort_int8_p50_ms": int8["p50_ms"], "ort_int8_variant": int8["variant"],
            "int8_speedup": int8_speedup, "fp32_speedup": fp32_speedup,
            "int8_spread": int8_spread, "fp32_spread": fp32_spread,
            "int8_maxf_drop_pt": drop,
            "floors": {"int8_speedup": FLOOR_INT8_SPEEDUP, "fp32_speedup": FLOOR_FP32_SPEEDUP,
                       "int8_maxf_drop_pt": FLOOR_MAXF_DROP_PT},
        })
        noisy = [f"{r['backend']} {r['precision']} {r['variant']}".strip() for r in (torch_row, fp32, int8)
                 if (r.get("p90_ms") or 0) > NOISY_SPREAD * r["p50_ms"]]
        if noisy:  # something else took the CPU during these rows: the ratio is not this machine's
            check["noisy_rows"] = noisy
        check["passed"] = (check["int8_speedup"] >= FLOOR_INT8_SPEEDUP
                           and check["fp32_speedup"] >= FLOOR_FP32_SPEEDUP
                           and (drop is None or drop <= FLOOR_MAXF_DROP_PT))
        if drop is None:
            check["accuracy_note"] = "no accuracy for this model (untrained): speed floors only"
        if config.accuracy and config.checkpoint:  # the shipped model: the best CPU row, any backend
            best_cpu_floor(check, mine, torch_row, ratios)
        checks.append(check)
    return checks


def best_cpu_floor(check: dict, mine: list[dict], torch_row: dict, ratios: dict | None) -> None:
    """The fastest CPU row of any backend/precision that keeps MaxF within the floor, >= 10x torch eager."""
    cpu_rows = [r for r in mine if r["backend"] != "torch"]
    best = best_int8(cpu_rows, torch_row, ratios)
    best_speedup, best_spread = speedup(ratios, torch_row, best)
    drop = maxf_drop(torch_row, best)
    check.update({"best_cpu_row": f"{best['backend']} {best['precision']} {best['variant']}".strip(),
                  "best_cpu_p50_ms": best["p50_ms"], "best_cpu_speedup": best_speedup,
                  "best_cpu_spread": best_spread, "best_cpu_maxf_drop_pt": drop,
                  "best_cpu_floor": FLOOR_BEST_CPU_SPEEDUP,
                  "best_cpu_passed": best_speedup >= FLOOR_BEST_CPU_SPEEDUP
                  and (drop is None or drop <= FLOOR_MAXF_DROP_PT)})


def maxf_drop(torch_row: dict, row: dict) -> float | None:
    if torch_row.get("maxf") is None or row.get("maxf") is None:
        return None
    return round(torch_row["maxf"] - row["maxf"], 3)


def best_int8(int8_rows: list[dict], torch_row: dict, ratios: dict | None = None) -> dict:
    """The fastest row (by interleaved median speed-up where measured, else p50) that keeps MaxF within the
    floor (or the fastest, when none does)."""
    def within(row: dict) -> bool:
        if row.get("maxf") is None or torch_row.get("maxf") is None:
            return True
        return torch_row["maxf"] - row["maxf"] <= FLOOR_MAXF_DROP_PT

    eligible = [r for r in int8_rows if within(r)] or int8_rows
    return max(eligible, key=lambda r: speedup(ratios, torch_row, r)[0])


def floor_lines(checks: list[dict]) -> list[str]:
    lines = []
    for check in checks:
        head = f"{check['model']} @ {check['input_size']}"
        if "int8_speedup" not in check:
            # Not judged is not passed (--check-floors still exits 1), but it is no measured failure either.
            lines.append(f"NOT JUDGED {head}: {check['reason']}")
            continue
        drop = "n/a (untrained)" if check["int8_maxf_drop_pt"] is None else f"{check['int8_maxf_drop_pt']:+.2f} pt"
        lines.append(f"{'PASS' if check['passed'] else 'FAIL'} {head}: torch eager FP32 {check['torch_p50_ms']:.1f} ms"
                     f" | ORT INT8 {check['ort_int8_variant']} {check['ort_int8_p50_ms']:.1f} ms = "
                     f"{check['int8_speedup']:.2f}x (floor {FLOOR_INT8_SPEEDUP:g}x), MaxF drop {drop} "
                     f"(floor {FLOOR_MAXF_DROP_PT} pt) | ORT FP32 {check['ort_fp32_p50_ms']:.1f} ms = "
                     f"{check['fp32_speedup']:.2f}x (floor {FLOOR_FP32_SPEEDUP:g}x)")
        lines.append(f"  spread: ORT INT8 {spread_text(check.get('int8_spread'))}; "
                     f"ORT FP32 {spread_text(check.get('fp32_spread'))}")
        if "best_cpu_row" in check:
            best_drop = check["best_cpu_maxf_drop_pt"]
            lines.append(f"{'PASS' if check['best_cpu_passed'] else 'FAIL'} {head} best CPU row: "
                         f"{check['best_cpu_row']} {check['best_cpu_p50_ms']:.1f} ms = {check['best_cpu_speedup']:.2f}x"
                         f" torch eager FP32 (floor {FLOOR_BEST_CPU_SPEEDUP:g}x), MaxF drop "
                         f"{'n/a' if best_drop is None else f'{best_drop:+.2f} pt'}; "
                         f"{spread_text(check.get('best_cpu_spread'))}")
        if check.get("noisy_rows"):
            lines.append(f"  warning: p90 > {NOISY_SPREAD:g} x p50 in {', '.join(check['noisy_rows'])}: the CPU "
                         "was shared during the run; rerun on an idle machine before trusting this ratio")
    return lines


# ---------------------------------------------------------------- reports


def fmt(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


COLUMNS = (("model", "model", None), ("input", "input_size", None), ("backend", "backend", None),
           ("precision", "precision", None), ("variant", "variant", None), ("device", "device", None),
           ("MB", "size_mb", 1), ("MaxF", "maxf", 2), ("IoU", "iou", 2), ("p50 ms", "p50_ms", 1),
           ("p90 ms", "p90_ms", 1), ("p99 ms", "p99_ms", 1), ("e2e p50", "e2e_p50_ms", 1),
           ("e2e p99", "e2e_p99_ms", 1), ("FPS", "fps", 1), ("GFLOP", "gflop", 1), ("GFLOP/s", "gflops", 1),
           ("% peak", "peak_fraction", None), ("RSS MB", "peak_rss_mb", 0), ("warm/runs", None, None),
           ("thr", "threads", None))


def cells(row: dict) -> list[str]:
    out = []
    for _, key, digits in COLUMNS:
        if key is None:
            out.append(f"{row['warmup']}/{row['runs']}" if row.get("runs") else "-")
        elif key == "peak_fraction":
            out.append(f"{row[key] * 100:.0f}%" if row.get(key) is not None else "-")
        else:
            out.append(fmt(row.get(key), digits or 0) if digits is not None else fmt(row.get(key)))
    return out


def console_table(rows: list[dict]) -> str:
    measured = [r for r in rows if r["skipped"] is None]
    table = [[c[0] for c in COLUMNS]] + [cells(r) for r in measured]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)) for line in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    skipped = [r for r in rows if r["skipped"]]
    if skipped:
        lines += ["", "skipped:"] + [f"  {r['backend']} {r['precision']} {r['variant'] or ''} "
                                     f"({r['model']} @ {r['input_size']}): {r['skipped']}" for r in skipped]
    return "\n".join(lines)


def markdown(report: dict) -> str:
    machine = report["machine"]
    gpu = ", ".join(f"{g['name']} (driver {g['driver']})" for g in machine["gpus"]) or "none"
    libs = ", ".join(f"{k} {v}" for k, v in machine["libraries"].items())
    lines = [f"## Benchmark: {machine['cpu']}, {machine['cpu_cores']} cores, {machine['threads']} threads",
             "", f"- GPU: {gpu}", f"- CPU features: {', '.join(machine['cpu_flags']) or '-'}",
             f"- measured fp32 peak: {machine['fp32_peak_gflops']} GFLOP/s, the best GEMM of "
             + ", ".join(f"{k.split('_')[0]} {v}" for k, v in machine["fp32_peak_source"].items()
                         if k.endswith("gflops") and v)
             + f" ({machine['fp32_peak_source']['matmul']})",
             f"- libraries: {libs}", f"- {report['settings']['note']}", "",
             "| " + " | ".join(c[0] for c in COLUMNS) + " |",
             "| " + " | ".join("---" if c[2] is None and c[1] not in ("peak_fraction", "threads") else "---:"
                               for c in COLUMNS) + " |"]
    lines += ["| " + " | ".join(cells(r)) + " |" for r in report["rows"] if r["skipped"] is None]
    skipped = [r for r in report["rows"] if r["skipped"]]
    if skipped:
        lines += ["", "Skipped on this machine:", ""]
        lines += [f"- {r['backend']} {r['precision']} {r['variant']} ({r['model']} @ {r['input_size']}): "
                  f"{r['skipped']}" for r in skipped]
    lines += ["", "Performance floors (same run, p50 latencies):", ""]
    lines += [f"- {line}" for line in floor_lines(report["floors"])]
    return "\n".join(lines) + "\n"


def write_plot(report: dict, path: Path) -> str | None:
    """Latency vs MaxF and each row's latency distribution; None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no PNG"
    rows = [r for r in report["rows"] if r["skipped"] is None and r.get("latencies_ms")]
    figure, (left, right) = plt.subplots(1, 2, figsize=(15, max(4.5, 0.32 * len(rows) + 1.5)), dpi=110)
    # One configuration (the shipped model at its working size) keeps the scatter readable.
    scored = [r for r in rows if r.get("maxf") is not None]
    main = [r for r in scored if (r["model"], r["input_size"]) == (scored[0]["model"], scored[0]["input_size"])
            ] if scored else []
    for row in main:
        left.scatter(row["p50_ms"], row["maxf"], s=40)
        left.annotate(f"{row['backend']} {row['precision']} {row['variant']}".strip(), (row["p50_ms"], row["maxf"]),
                      fontsize=7, xytext=(4, 4 if row["precision"] != "int8" else -10), textcoords="offset points",
                      rotation=20)
    title = f"{main[0]['model']} @ {main[0]['input_size']}" if main else "no scored rows"
    left.set(xscale="log", xlabel="inference p50 (ms, log)", ylabel="KITTI val MaxF (%)",
             title=f"latency vs accuracy: {title}")
    left.grid(alpha=0.3, which="both")
    right.boxplot([r["latencies_ms"] for r in rows], orientation="horizontal", showfliers=True, whis=(1, 99))
    right.set_yticks(range(1, len(rows) + 1), [f"{label(r)} @ {r['input_size']}" for r in rows], fontsize=7)
    right.set(xscale="log", xlabel="inference latency (ms, log); whiskers p1-p99", title="latency distributions")
    right.grid(alpha=0.3, axis="x", which="both")
    figure.suptitle(f"{report['machine']['cpu']} ({report['machine']['threads']} threads)", fontsize=10)
    figure.tight_layout()
    save_figure(figure, path)
    return None


def label(row: dict) -> str:
    variant = f" {row['variant']}" if row.get("variant") else ""
    model = "full" if row["width"] == 1.0 else f"w{row['width']:g}"
    return f"{model} {row['backend']} {row['precision']}{variant}"


# ---------------------------------------------------------------- main


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
    rows = []
    to_run = [j for j in jobs if j.skipped is None]
    for job in jobs:
        row = base_row(job)
        if job.skipped is None:
            index = to_run.index(job) + 1
            print(f"[{index}/{len(to_run)}] {label(row)} @ {job.config.size} ...", flush=True)
            try:
                row.update(measure_job(job, args, env))
            except (BenchError, ValueError, OSError) as error:
                row["skipped"] = f"failed: {error}"
                print(f"  failed: {error}", file=sys.stderr)
        rows.append(row)
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


def measure_interleaved(configs: list[Config], rows: list[dict], args: argparse.Namespace,
                        env: dict[str, str]) -> dict[str, dict]:
    """Each floor configuration's CPU rows against torch eager FP32 in alternating blocks (bench/ratios.py)."""
    found = {}
    for config in (c for c in configs if c.floors):
        mine = [r for r in rows if r["model"] == config.model and r["input_size"] == config.size]
        command = interleave_command(config, mine, args)
        if command is None:
            continue
        print(f"interleaved blocks vs torch eager FP32: {config.model} @ {config.size} ...", flush=True)
        try:
            found[f"{config.model}@{config.size}"] = summarize(run_child(interleave, command, env))
        except BenchError as error:
            print(f"  interleaved blocks failed ({error}): floors use the rows' p50s", file=sys.stderr)
    return found


def write_reports(report: dict, out: Path) -> None:
    atomic_write_text(out / "latest.json", json.dumps(report, indent=1) + "\n")
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
