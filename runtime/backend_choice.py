"""`--backend auto` on a CPU: the fastest installed backend for this model on this machine, measured.

Where more than one CPU backend is installed (ONNX Runtime, OpenVINO), a short probe times each candidate on
the model, interleaved round by round so that other load on the machine hits every candidate alike, and the
fastest median wins. The result is cached per (model sha256, machine, library versions, threads) in a small
JSON file (ROADSEG_CACHE_DIR, else $XDG_CACHE_HOME/roadseg, else ~/.cache/roadseg); the file is validated on
read like any other untrusted input and re-probed when it does not hold.

Only combinations that keep accuracy are candidates: the file's own precision on either backend, and
OpenVINO's bf16 hint (bf16 for a float file, int8+bf16 for an INT8 one) only where `make export` or `make
calibrate` gated it (a passing row for this file's sha256 in accuracy.json beside the model). A machine with
one CPU backend opens it exactly as before, with no probe.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass
from importlib import metadata as package_metadata
from pathlib import Path

import numpy as np

from runtime.artifacts import ACCURACY_JSON_FILE
from runtime.backends import ENGINE_SUFFIXES, Backend, int8_saturation_warning, open_backend
from runtime.contract import PRECISIONS, ModelFileError, shorten
from runtime.input_policy import read_json
from runtime.ioutil import atomic_write_text, sha256_file
from runtime.machine import cpu_name
from runtime.openvino_backend import INT8_BF16, bf16_supported, openvino_installed

CACHE_FORMAT = "roadseg-backend-probe-v1"
CACHE_NAME = "backend-probe.json"
PROBE_WARMUP, PROBE_ROUNDS = 3, 12
MAX_CACHE_ENTRIES = 64
BACKENDS = ("onnxruntime", "openvino")  # what the probe compares
RUNTIMES = ("auto", "onnxruntime", "openvino", "tensorrt")  # what a user names with --backend
DEVICES = ("auto", "cpu", "cuda")  # ... and with --device
# What OpenVINO runs on a CPU: every model precision but FP16 (a GPU artifact), and an INT8 file with a bf16 rest.
OPENVINO_PRECISIONS = (*(precision for precision in PRECISIONS if precision != "fp16"), INT8_BF16)


@dataclass(frozen=True)
class Choice:
    backend: str
    precision: str
    timings_ms: dict[str, float]  # "backend precision" -> median ms of the probe
    cached: bool = False
    why: str = ""

    def line(self) -> str:
        if self.why:
            return f"auto kept {self.backend} {self.precision}: {self.why}"
        measured = ", ".join(f"{name} {ms:.1f} ms" for name, ms in sorted(self.timings_ms.items(),
                                                                          key=lambda item: item[1]))
        source = "cached probe" if self.cached else f"probe, median of {PROBE_ROUNDS} interleaved runs"
        return f"auto picked {self.backend} {self.precision}: fastest here ({measured}; {source})"


def cache_path() -> Path:
    root = os.environ.get("ROADSEG_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "roadseg")
    return Path(root) / CACHE_NAME


def machine_key(threads: int | None) -> str:
    """CPU model, core count and the libraries that decide speed: a probe is only reused where they match."""
    cpu = cpu_name()
    versions = []
    for name in ("onnxruntime", "openvino"):
        try:
            versions.append(f"{name}={package_metadata.version(name)}")
        except package_metadata.PackageNotFoundError:
            continue
    return f"{cpu}|cores={os.cpu_count()}|threads={threads or 0}|{','.join(versions)}"


def gated_openvino_precisions(model: Path, digest: str) -> set[str]:
    """OpenVINO precisions that passed the accuracy gate for exactly these bytes (accuracy.json beside the
    model, written by `make export`/`make calibrate`); anything unreadable counts as not gated."""
    table = model.parent / ACCURACY_JSON_FILE
    if not table.exists():
        return set()
    try:
        rows = read_json(table).get("rows", [])
    except (OSError, ValueError, AttributeError) as error:  # a FIFO, a huge or deep file: said, then not gated
        print(f"warning: {shorten(str(error), 160)}; no OpenVINO precision counts as gated", file=sys.stderr)
        return set()
    if not isinstance(rows, list):
        return set()
    return {row["precision"] for row in rows
            if isinstance(row, dict) and row.get("backend") == "openvino" and row.get("sha256") == digest
            and row.get("passed") is True and row.get("precision") in OPENVINO_PRECISIONS}


def candidates(model: Path, file_precision: str, digest: str) -> list[tuple[str, str]]:
    own, bf16 = ("int8", INT8_BF16) if file_precision == "int8" else ("fp32", "bf16")
    found = [("onnxruntime", file_precision), ("openvino", own)]
    # The gate may have run on another machine: bf16 is offered only where this CPU computes it natively.
    if bf16 in gated_openvino_precisions(model, digest) and bf16_supported():
        found.append(("openvino", bf16))
    return found


def probe(opened: dict[tuple[str, str], Backend], rounds: int = PROBE_ROUNDS) -> dict[str, float]:
    """Median ms of each backend's infer, timed round-robin (one run of each per round) on the same input."""
    first = next(iter(opened.values()))
    batch = np.random.default_rng(0).standard_normal((1, 3, *first.spec.size_hw)).astype(np.float32)
    for backend in opened.values():
        for _ in range(PROBE_WARMUP):
            backend.infer(batch)
    samples: dict[tuple[str, str], list[float]] = {key: [] for key in opened}
    for _ in range(rounds):
        for key, backend in opened.items():
            start = time.perf_counter()
            backend.infer(batch)
            samples[key].append((time.perf_counter() - start) * 1000.0)
    return {f"{b} {p}": round(float(np.median(v)), 3) for (b, p), v in samples.items()}


def read_cache(path: Path) -> dict:
    """The cache's entries, or {} when the file is missing, unreadable or not in the expected shape."""
    if not path.exists():
        return {}
    try:
        raw = read_json(path)
    except (OSError, ValueError):
        return {}
    if not isinstance(raw, dict) or raw.get("format") != CACHE_FORMAT or not isinstance(raw.get("entries"), dict):
        return {}
    return {key: entry for key, entry in raw["entries"].items() if isinstance(key, str) and valid_entry(entry)}


def valid_entry(entry: object) -> bool:
    if (not isinstance(entry, dict) or entry.get("backend") not in BACKENDS
            or entry.get("precision") not in OPENVINO_PRECISIONS):
        return False
    timings = entry.get("timings_ms")
    if not isinstance(timings, dict) or not timings or len(timings) > 8:
        return False
    return all(isinstance(name, str) and len(name) < 40 and isinstance(ms, (int, float))
               and not isinstance(ms, bool) and math.isfinite(ms) and 0 < ms < 1e6 for name, ms in timings.items())


def write_cache(path: Path, entries: dict) -> None:
    kept = dict(list(entries.items())[-MAX_CACHE_ENTRIES:])
    try:
        atomic_write_text(path, json.dumps({"format": CACHE_FORMAT, "entries": kept}, indent=1) + "\n")
    except OSError:
        pass  # a read-only home: the probe simply runs again next time


def choose(model: Path, ort: Backend, threads: int | None, spinning: bool) -> tuple[Backend, Choice]:
    """The fastest CPU backend for `model` (`ort`: the model already open on ONNX Runtime), from the cache
    when it holds this machine's answer."""
    digest = sha256_file(model)
    wanted = candidates(model, ort.precision, digest)
    key = f"{digest}|{machine_key(threads)}|{','.join(f'{b}:{p}' for b, p in wanted)}"
    path = cache_path()
    entries = read_cache(path)
    entry = entries.get(key)
    if entry is not None and (entry["backend"], entry["precision"]) in wanted:
        choice = Choice(entry["backend"], entry["precision"], entry["timings_ms"], cached=True)
        if choice.backend == "onnxruntime":
            return ort, choice
        return open_backend(model, choice.backend, threads, spinning, choice.precision), choice
    opened = {pair: ort if pair[0] == "onnxruntime" else open_backend(model, pair[0], threads, spinning, pair[1])
              for pair in wanted}
    timings = probe(opened)
    best = min(opened, key=lambda pair: timings[f"{pair[0]} {pair[1]}"])
    entries.pop(key, None)
    entries[key] = {"backend": best[0], "precision": best[1], "timings_ms": timings, "model": str(model),
                    "probed": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_cache(path, entries)
    return opened[best], Choice(best[0], best[1], timings)


def open_auto(model: str | Path, threads: int | None, spinning: bool) -> tuple[Backend, Choice | None]:
    """`--backend auto`: as before (engine -> TensorRT, ONNX -> ONNX Runtime, GPU provider first) unless the
    model is ONNX, ONNX Runtime runs it on the CPU and OpenVINO is installed; then the measured choice."""
    model = Path(model)
    backend = open_backend(model, "auto", threads, spinning)
    if backend.name != "onnxruntime" or backend.device != "cpu" or not openvino_installed() \
            or backend.precision not in OPENVINO_PRECISIONS:  # an FP16 file is a GPU artifact: as before
        return backend, None
    if backend.in_graph:  # the OpenVINO backend takes the float-input form only
        return backend, Choice(backend.name, backend.precision, {}, why="in-graph pre/post model: ONNX Runtime")
    try:
        return choose(model, backend, threads, spinning)
    except ModelFileError as error:  # OpenVINO cannot run this file: ONNX Runtime, and say why
        return backend, Choice(backend.name, backend.precision, {}, why=f"OpenVINO not usable ({error})")


def backend_name(runtime: str, device: str) -> str:
    """open_backend's name for --backend x --device: ONNX Runtime's provider by device; one line for a pair that
    cannot run."""
    if device == "cuda" and runtime == "openvino":
        raise ModelFileError("--backend openvino --device cuda: OpenVINO runs on the CPU here; use --device cpu")
    if device == "cpu" and runtime == "tensorrt":
        raise ModelFileError("--backend tensorrt --device cpu: TensorRT runs on a GPU; use --backend onnxruntime "
                             "or openvino for the CPU")
    if runtime in ("auto", "onnxruntime") and device != "auto":
        return device  # ONNX Runtime with that provider (an engine refuses it in one line)
    return runtime


def open_requested(model: Path, runtime: str, device: str, precision: str, threads: int | None = None,
                   spinning: bool = False) -> tuple[Backend, Choice | None]:
    """(backend, the auto choice's evidence or None) for --backend/--device/--precision: a measured pick only for
    `auto`/`auto|cpu`/`auto`; any explicit choice opens exactly what was asked for, and a precision the runtime
    cannot honour is refused."""
    if model.suffix in ENGINE_SUFFIXES and (device == "cpu" or runtime in ("onnxruntime", "openvino")):
        raise ModelFileError(f"{model}: a TensorRT engine runs on TensorRT on a GPU; for --backend {runtime} "
                             f"--device {device} give the .onnx")
    backend, choice = None, None
    if runtime == "auto" and device in ("auto", "cpu") and precision == "auto":
        backend, choice = open_auto(model, threads, spinning)
        if device != "auto" and backend.device != "cpu":
            backend, choice = None, None
    if backend is None:
        name = "openvino" if runtime == "auto" and precision == "bf16" else backend_name(runtime, device)
        backend = open_backend(model, name, threads=threads, spinning=spinning, precision=precision)
        if backend.name != "openvino" and precision not in ("auto", backend.precision):
            raise ModelFileError(f"--precision {precision}: {backend.name} runs {model} in its own precision "
                                 f"({backend.precision}); bf16/fp32 math is an OpenVINO CPU choice "
                                 "(--backend openvino)")
    warning = int8_saturation_warning(backend, model)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    return backend, choice
