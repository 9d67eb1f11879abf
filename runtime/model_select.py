"""The default --model: the best artifact for this machine that `make export` / `make engine` left in build/.

Order: a TensorRT engine when TensorRT and a working CUDA device are both present; else ONNX for
ONNX Runtime's CUDA provider (in-graph pre/post first, then FP16 before FP32) when it has one; else the CPU
order INT8-for-CPU > INT8 > FP32; else an ONNX model shipped in models/. Checking costs no TensorRT call:
on a machine without a GPU, TensorRT is never touched.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from runtime.artifacts import FP16_INGRAPH_ONNX, FP16_ONNX, FP32_INGRAPH_ONNX, FP32_ONNX, INT8_CPU_ONNX, INT8_ONNX
from runtime.backends import ENGINE_SUFFIXES, cuda_provider_available
from runtime.contract import ModelFileError
from runtime.paths import SHIPPED_CHECKPOINT

REPO_ROOT = Path(__file__).resolve().parent.parent
CPU_ORDER = (INT8_CPU_ONNX, INT8_ONNX, FP32_ONNX)
# On a GPU the in-graph form wins (H100, CUDA provider: end-to-end 2.07 vs 3.05 ms FP16, 1.86 vs 2.54 ms FP32):
# only the resize stays on the CPU. On a CPU it loses (ONNX Runtime runs the cast/normalise slower than the
# runtime's fused one), so CPU_ORDER keeps the float-input files.
CUDA_ORDER = (FP16_INGRAPH_ONNX, FP32_INGRAPH_ONNX, FP16_ONNX, FP32_ONNX,
              INT8_ONNX)
ENGINE_PRECISION_ORDER = ("int8", "fp16", "fp32")


def cuda_device_present() -> bool:
    """A working CUDA device, asked the way the TensorRT backend asks (cuda-python), never through TensorRT."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    try:
        from runtime.tensorrt_backend import probe_cuda
    except ImportError:  # a runtime-only install without the TensorRT backend module
        return False
    info, _why = probe_cuda()
    return info is not None


def tensorrt_usable() -> bool:
    installed = any(importlib.util.find_spec(name) is not None for name in ("tensorrt", "tensorrt_rtx"))
    return installed and cuda_device_present()


def _rank_engines(build: Path) -> list[Path]:
    engines = [p for p in build.iterdir() if p.suffix in ENGINE_SUFFIXES and p.is_file()]

    def rank(path: Path) -> tuple[int, str]:
        name = path.name.lower()
        position = next((i for i, p in enumerate(ENGINE_PRECISION_ORDER) if p in name), len(ENGINE_PRECISION_ORDER))
        return position, name

    return sorted(engines, key=rank)


def candidate_models(build_dir: str | Path | None = None, models_dir: str | Path | None = None) -> list[Path]:
    """Every usable artifact, best first."""
    build = Path(build_dir) if build_dir is not None else REPO_ROOT / "build"
    models = Path(models_dir) if models_dir is not None else REPO_ROOT / "models"
    found: list[Path] = []
    order = CUDA_ORDER if cuda_provider_available() else CPU_ORDER
    if build.is_dir():
        if tensorrt_usable():
            found += _rank_engines(build)
        found += [build / name for name in order if (build / name).is_file()]
    if models.is_dir():
        found += _rank_shipped(models, order)
    return found


def _rank_shipped(models: Path, order: tuple[str, ...]) -> list[Path]:
    """models/STEM.VARIANT.onnx in this machine's order (model.VARIANT.onnx names), the default model's files
    before another shipped model's of the same variant, then any other ONNX."""
    variants = [name.removeprefix("model.").removesuffix(".onnx") for name in order]
    shipped = sorted(p for p in models.glob("*.onnx") if p.is_file())
    default_stem = Path(SHIPPED_CHECKPOINT).stem

    def rank(path: Path) -> tuple[int, bool, str]:
        stem, _, variant = path.name.removesuffix(".onnx").rpartition(".")
        return (variants.index(variant) if variant in variants else len(variants)), stem != default_stem, path.name

    return sorted(shipped, key=rank)


def default_model(build_dir: str | Path | None = None, models_dir: str | Path | None = None) -> Path:
    found = candidate_models(build_dir, models_dir)
    if not found:
        build = build_dir if build_dir is not None else "build"
        raise ModelFileError(f"no model in {build}/ or models/: run `make export` (or pass --model PATH)")
    return found[0]
