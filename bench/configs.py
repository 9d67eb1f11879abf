"""The configurations `make bench` measures (the shipped model, the full-width model, the size sweep) and the ONNX
files each runs: the build folder's when they are that model at that size, else made by bench/prepare.py and
cached under OUT/models."""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

from bench import prepare
from bench.children import REPO, child_command, torch_importable
from bench.jobs import Config
from bench.worker import BenchError
from runtime.artifacts import FP16_ONNX, FP32_ONNX, INT8_CPU_ONNX, INT8_ONNX
from runtime.contract import TRAINING_KEY
from runtime.ioutil import sha256_file

FULL_SIZE = "160x576"
PREPARE_RECIPE = 3  # bump when bench/prepare.py makes different files: cached folders are then redone


def parse_size(text: str) -> tuple[int, int]:
    try:
        return prepare.parse_size(text)
    except ValueError as error:
        raise BenchError(str(error).replace("--size ", "--sizes ", 1)) from error


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
