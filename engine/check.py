"""Check built engines against their sidecars and their ONNX, as far as a machine without a GPU can.

    python -m engine.check build/model.fp16.engine [build/model.int8.engine ...]

Per engine: the sidecar's sha256 and size are the engine's; the I/O it records (from the network TensorRT
built) has the ONNX's input/output names and shapes with FP32 at both ends (the runtime's contract);
a TensorRT-RTX engine's header carries the magic and the release of the TensorRT-RTX in its sidecar and its
own length, and, when tensorrt_rtx is installed, its runtime finds nothing malformed or version-mismatched in
it (without a GPU it still answers INVALID: it cannot load it here). Loading and running need the GPU.
"""

from __future__ import annotations

import argparse
import struct
import sys
from pathlib import Path

from runtime.contract import ModelFileError, shorten
from runtime.input_policy import ArtifactError, read_limited, regular_file_size, resolve_inside
from runtime.ioutil import fail, sha256_file
from runtime.tensorrt_backend import MAX_ENGINE_BYTES, read_sidecar, sidecar_flavour, sidecar_path
from runtime.trt_flavour import TENSORRT_RTX, release, rtx_engine_version

MAX_IO_ROWS = 8
NOT_FROM_HERE = ("VERSION_MISMATCH", "MALFORMED_ENGINE")  # diagnostics that no GPU could explain


class EngineCheckError(RuntimeError):
    pass


def expected_io(onnx_path: Path) -> list[dict]:
    from engine.build import onnx_io

    return onnx_io(onnx_path)


def checked_io_rows(recorded: object) -> list[dict]:
    """The sidecar's `io` rows, each {name: str, mode: input|output, shape: [int], dtype: str}, or refused."""
    if not isinstance(recorded, list) or not recorded or len(recorded) > MAX_IO_ROWS:
        raise EngineCheckError(f"sidecar field 'io' must list 1..{MAX_IO_ROWS} tensors, got {shorten(recorded)}")
    for row in recorded:
        good = (isinstance(row, dict) and isinstance(row.get("name"), str) and row.get("mode") in ("input", "output")
                and isinstance(row.get("dtype"), str) and isinstance(row.get("shape"), list)
                and all(isinstance(d, int) and not isinstance(d, bool) for d in row["shape"]))
        if not good:
            raise EngineCheckError(f"sidecar field 'io' has a malformed row {shorten(row)} (expected name, mode "
                                   "input|output, shape of integers, dtype)")
    return recorded


def check_io(recorded: object, onnx_path: Path) -> None:
    recorded = checked_io_rows(recorded)
    expected = expected_io(onnx_path)
    shape = [{k: row[k] for k in ("name", "mode", "shape")} for row in recorded]
    if shape != [{k: row[k] for k in ("name", "mode", "shape")} for row in expected]:
        raise EngineCheckError(f"engine I/O {shape} differs from {onnx_path.name}'s {expected}")
    not_fp32 = [row["name"] for row in recorded if row["dtype"] != "FLOAT"]
    if not_fp32:
        raise EngineCheckError(f"engine I/O {not_fp32} is not FP32 (the runtime feeds and reads FP32)")


def check_rtx_header(engine: bytes, version: str) -> None:
    found = rtx_engine_version(engine)
    if found is None:
        raise EngineCheckError("not a TensorRT-RTX engine (no 'vtrt' header)")
    if found != release(version):
        raise EngineCheckError(f"header says TensorRT-RTX {'.'.join(map(str, found))}, sidecar {version}")
    (length,) = struct.unpack_from("<Q", engine, 16)
    if length != len(engine):
        raise EngineCheckError(f"header length {length} != file size {len(engine)} (truncated?)")


def rtx_diagnostics(engine: bytes) -> list[str]:
    """The reasons the installed TensorRT-RTX gives against this engine (['none'] when not installed)."""
    try:
        import tensorrt_rtx as trt
    except ImportError:
        return ["none"]
    runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
    _validity, diagnostics = runtime.get_engine_validity(engine)
    return [name for name, flag in trt.EngineInvalidityDiagnostics.__members__.items()
            if int(diagnostics) & int(flag)]


def check_engine(engine_path: Path) -> str:
    """One line describing a good engine; EngineCheckError/ModelFileError naming what is wrong. The engine is read
    only once its size is the sidecar's and under MAX_ENGINE_BYTES; the ONNX the sidecar names must lie beside it."""
    sidecar = read_sidecar(engine_path)
    flavour = sidecar_flavour(sidecar)
    size = regular_file_size(engine_path)
    recorded_size = sidecar.get("engine_bytes")
    if recorded_size is not None and (not isinstance(recorded_size, int) or recorded_size != size):
        raise EngineCheckError(f"engine is {size} bytes, its sidecar says {shorten(recorded_size)} (truncated or "
                               f"replaced); rebuild: {sidecar['rebuild']}")
    if size > MAX_ENGINE_BYTES:
        raise EngineCheckError(f"engine is {size} bytes, over the {MAX_ENGINE_BYTES}-byte limit; not one of ours")
    if not isinstance(sidecar.get("engine_sha256"), str) or sha256_file(engine_path) != sidecar["engine_sha256"]:
        raise EngineCheckError("engine bytes differ from the sidecar's engine_sha256 (changed since it was "
                               f"built); rebuild: {sidecar['rebuild']}")
    key = sidecar["cache_key"]
    onnx_path = resolve_inside(engine_path.parent, key.get("onnx"), f"{sidecar_path(engine_path)} cache_key.onnx")
    if not onnx_path.is_file():
        raise EngineCheckError(f"{onnx_path}: the ONNX it was built from is missing")
    check_io(sidecar.get("io"), onnx_path)
    engine = read_limited(engine_path, MAX_ENGINE_BYTES)
    if flavour == TENSORRT_RTX:
        check_rtx_header(engine, str(key.get("tensorrt")))
        bad = [reason for reason in rtx_diagnostics(engine) if reason in NOT_FROM_HERE]
        if bad:
            raise EngineCheckError(f"TensorRT-RTX reports {', '.join(bad)}")
    capabilities = key.get("compute_capabilities") or []
    targets = ", ".join(map(str, capabilities)) if isinstance(capabilities, list) else shorten(capabilities)
    return (f"{engine_path}: {flavour} {key.get('tensorrt')}, {key.get('precision')} from {onnx_path.name}, "
            f"{len(engine) / 1e6:.1f} MB, for {targets}: ok")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("engines", nargs="+")
    args = parser.parse_args(argv)
    for name in args.engines:
        path = Path(name)
        try:
            if not path.is_file():
                raise EngineCheckError("not found")
            print(check_engine(path))
        except (EngineCheckError, ModelFileError, ArtifactError, OSError) as error:
            return fail(f"{path}: {error}", 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
