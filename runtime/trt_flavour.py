"""Which TensorRT this is, and the few things the two flavours do differently.

Two flavours share one strongly typed code path:
- "tensorrt": NVIDIA's TensorRT (8.6 on JetPack 6.0, 10.x on JetPack 6.1/6.2 and desktops, 11.x on desktops),
  Python module `tensorrt`. Engines are built on, and tied to, the GPU that runs them.
- "tensorrt_rtx": NVIDIA TensorRT for RTX (GeForce/RTX desktops, Linux x86-64 and Windows), module
  `tensorrt_rtx`, versions 1.x. Always strongly typed; builds ahead of time without a GPU for a list of
  target compute capabilities and JIT-specialises on the user's GPU at load (runtime cache); no timing
  cache, no DLA, no trtexec.

What a module can do is read from the module (its name and the names it has), never from comparing version
numbers across flavours. Versions are compared as parsed tuples; within a flavour, engines are tied to the
release (major.minor.patch): trtexec reports three parts where the Python wheels report four.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from types import ModuleType

TENSORRT = "tensorrt"
TENSORRT_RTX = "tensorrt_rtx"
FLAVOURS = (TENSORRT, TENSORRT_RTX)
RTX_ENGINE_MAGIC = b"vtrt"  # first bytes of a TensorRT-RTX 1.x engine (seen)


def version_tuple(version: str) -> tuple[int, ...]:
    """'11.1.0.106' -> (11, 1, 0, 106); '10.3' -> (10, 3); non-digits in a part are ignored."""
    parts = []
    for part in str(version).strip().split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def release(version: str) -> tuple[int, int, int]:
    """major.minor.patch, zero-padded: what trtexec and the Python wheels both report."""
    parts = version_tuple(version)
    return tuple((list(parts) + [0, 0, 0])[:3])  # type: ignore[return-value]


def same_release(built: str, here: str) -> bool:
    return release(built) == release(here)


def flavour_of(trt: ModuleType) -> str:
    """The flavour of an imported TensorRT module (or of a stand-in that declares one)."""
    declared = getattr(trt, "roadseg_flavour", None)
    if declared in FLAVOURS:
        return declared
    return TENSORRT_RTX if trt.__name__.split(".")[0] == TENSORRT_RTX else TENSORRT


def installed_flavours() -> list[str]:
    """Flavours whose module is installed, found without importing it (importing TensorRT can crash
    a process without a GPU; TensorRT-RTX cannot, but neither is imported here)."""
    return [name for name in FLAVOURS if importlib.util.find_spec(name) is not None]


def import_flavour(flavour: str) -> ModuleType:
    if flavour not in FLAVOURS:
        raise ImportError(f"unknown TensorRT flavour {flavour!r} (expected {' or '.join(FLAVOURS)})")
    return importlib.import_module(flavour)


def display_name(flavour: str) -> str:
    return "TensorRT-RTX" if flavour == TENSORRT_RTX else "TensorRT"


def strongly_typed(trt: ModuleType) -> bool:
    """TensorRT 11 and TensorRT-RTX have no precision builder flags: the ONNX's types decide."""
    return not hasattr(trt.BuilderFlag, "FP16")


def builds_without_gpu(flavour: str) -> bool:
    """TensorRT-RTX builds ahead of time on a CPU; TensorRT needs (and may crash without) a CUDA device."""
    return flavour == TENSORRT_RTX


def compute_capability_member(capability: str) -> str:
    """'8.6' -> 'SM86', '12.0' -> 'SM120' (TensorRT-RTX's ComputeCapability names)."""
    major, _, minor = capability.partition(".")
    if not major.isdigit() or not (minor or "0").isdigit():
        raise ValueError(f"compute capability {capability!r}: expected MAJOR.MINOR, e.g. 8.6")
    return f"SM{int(major)}{int(minor or 0)}"


def capability_of_member(name: str) -> str:
    """'SM86' -> '8.6', 'SM120' -> '12.0'."""
    digits = name.removeprefix("SM")
    return f"{digits[:-1]}.{digits[-1]}"


def rtx_engine_version(engine: bytes) -> tuple[int, int, int] | None:
    """The TensorRT-RTX release written in an engine's header, or None when it is not one.

    Layout as observed on 1.7 engines (not a documented format, so only used to explain a refusal and in
    tests): b'vtrt' at 0, the engine's byte length (u64 little-endian) at 16, major/minor/patch at 24..26.
    """
    if len(engine) < 27 or engine[:4] != RTX_ENGINE_MAGIC:
        return None
    return engine[24], engine[25], engine[26]


def runtime_cache_path(engine_path: str | Path, compute_capability: str) -> Path:
    """Where TensorRT-RTX's JIT runtime cache for this engine on a GPU of this compute capability lives."""
    engine_path = Path(engine_path)
    return engine_path.with_name(f"{engine_path.name}.sm{compute_capability.replace('.', '')}.runtime-cache")
