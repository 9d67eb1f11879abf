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
import hashlib
import struct
import sys
from pathlib import Path

from runtime.contract import ModelFileError
from runtime.ioutil import fail
from runtime.tensorrt_backend import read_sidecar, sidecar_flavour
from runtime.trt_flavour import TENSORRT_RTX, release, rtx_engine_version

NOT_FROM_HERE = ("VERSION_MISMATCH", "MALFORMED_ENGINE")  # diagnostics that no GPU could explain


class EngineCheckError(RuntimeError):
    pass


def expected_io(onnx_path: Path) -> list[dict]:
    from engine.build import onnx_io

    return onnx_io(onnx_path)


def check_io(recorded: list[dict], onnx_path: Path) -> None:
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
    """One line describing a good engine; EngineCheckError/ModelFileError naming what is wrong."""
    sidecar = read_sidecar(engine_path)
    engine = engine_path.read_bytes()
    if hashlib.sha256(engine).hexdigest() != sidecar.get("engine_sha256"):
        raise EngineCheckError("engine bytes differ from the sidecar's engine_sha256 (changed since it was "
                               f"built); rebuild: {sidecar['rebuild']}")
    key = sidecar.get("cache_key", {})
    onnx_path = engine_path.parent / str(key.get("onnx"))
    if not onnx_path.is_file():
        raise EngineCheckError(f"{onnx_path}: the ONNX it was built from is missing")
    check_io(sidecar.get("io", []), onnx_path)
    flavour = sidecar_flavour(sidecar)
    if flavour == TENSORRT_RTX:
        check_rtx_header(engine, str(key.get("tensorrt")))
        bad = [reason for reason in rtx_diagnostics(engine) if reason in NOT_FROM_HERE]
        if bad:
            raise EngineCheckError(f"TensorRT-RTX reports {', '.join(bad)}")
    targets = ", ".join(key.get("compute_capabilities") or []) or "the build GPU"
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
        except (EngineCheckError, ModelFileError, OSError) as error:
            return fail(f"{path}: {error}", 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
