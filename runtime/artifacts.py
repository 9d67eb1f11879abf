"""Every file a build folder holds, in one table: its name, precision, variant, form, the stage that makes it and
the metadata key that records what it was made from. Every stage, the runtime's model choice and the bench look
names up here, scripts through `python -m runtime.artifacts NAME`; nothing else spells them (the Makefile's two
file targets excepted: make needs them before any environment exists, and a test holds them to this table).

    python -m runtime.artifacts            # the table
    python -m runtime.artifacts int8_cpu   # one file name (what make uses)
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from runtime.contract import CALIBRATION_KEY, PRECISIONS, SOURCE_ONNX_SHA256_KEY, TRAINING_KEY
from runtime.ioutil import sha256_file


@dataclass(frozen=True)
class Artifact:
    name: str  # what callers look it up by
    file_name: str  # relative to the build folder
    stage: str  # the stage that writes it
    precision: str | None = None  # one of runtime.contract.PRECISIONS; None for tables and manifests
    variant: str = ""  # which INT8 flavour: tensorrt (s8 Q/DQ), strongly_typed (FP16 rest), cpu (tuned for x86)
    in_graph: bool = False  # uint8 BGR frame in, road mask out (export/ingraph.py)
    provenance_key: str | None = None  # the metadata (or engine sidecar) key naming what it was made from


ONNX_SUFFIX = ".onnx"
INGRAPH_SUFFIX = ".ingraph.onnx"
ENGINE_SUFFIX = ".engine"
SIDECAR_SUFFIX = ".json"  # beside an engine: model.fp16.engine.json


def _onnx(name: str, stage: str, precision: str, variant: str = "", provenance: str | None = None) -> Artifact:
    return Artifact(name, f"model.{name}{ONNX_SUFFIX}", stage, precision, variant, False, provenance)


def _ingraph(core: Artifact) -> Artifact:
    return Artifact(f"{core.name}_ingraph", f"model.{core.name}{INGRAPH_SUFFIX}", "export.ingraph", core.precision,
                    core.variant, True, core.provenance_key)


ENGINE_CACHE_KEY = "cache_key_sha256"  # in the engine's JSON sidecar: ONNX sha256, calibration, TensorRT, GPU


def _engine(precision: str) -> Artifact:
    return Artifact(f"{precision}_engine", f"model.{precision}{ENGINE_SUFFIX}", "engine", precision,
                    provenance_key=ENGINE_CACHE_KEY)


FP32 = _onnx("fp32", "export", "fp32", provenance=TRAINING_KEY)
FP16 = _onnx("fp16", "export", "fp16", provenance=TRAINING_KEY)
INT8 = _onnx("int8", "calibration", "int8", "tensorrt", SOURCE_ONNX_SHA256_KEY)
INT8_FP16 = _onnx("int8_fp16", "calibration", "int8", "strongly_typed", SOURCE_ONNX_SHA256_KEY)
INT8_CPU = _onnx("int8_cpu", "calibration", "int8", "cpu", SOURCE_ONNX_SHA256_KEY)
CALIBRATION_MANIFEST = Artifact("calibration_manifest", "calibration/manifest.json", "calibration",
                                provenance_key=CALIBRATION_KEY)
TENSORRT_RANGES = Artifact("tensorrt_ranges", "calibration/trt/ranges.json", "calibration")
ACCURACY_JSON = Artifact("accuracy_json", "accuracy.json", "export+calibration")
ACCURACY_MD = Artifact("accuracy_md", "accuracy.md", "export+calibration")

ONNX_FILES = (FP32, FP16, INT8, INT8_FP16, INT8_CPU)
INGRAPH_FILES = tuple(_ingraph(core) for core in (FP32, FP16, INT8_CPU))
ENGINE_PRECISIONS = tuple(precision for precision in PRECISIONS if precision != "bf16")
ENGINES = tuple(_engine(precision) for precision in ENGINE_PRECISIONS)
ARTIFACTS = (*ONNX_FILES, *INGRAPH_FILES, *ENGINES, CALIBRATION_MANIFEST, TENSORRT_RANGES, ACCURACY_JSON, ACCURACY_MD)
BY_NAME = {artifact.name: artifact for artifact in ARTIFACTS}

# The names a build folder's files are looked up by, as plain strings.
FP32_ONNX = FP32.file_name
FP16_ONNX = FP16.file_name
INT8_ONNX = INT8.file_name
INT8_FP16_ONNX = INT8_FP16.file_name
INT8_CPU_ONNX = INT8_CPU.file_name
FP32_INGRAPH_ONNX, FP16_INGRAPH_ONNX, INT8_CPU_INGRAPH_ONNX = (artifact.file_name for artifact in INGRAPH_FILES)
FP32_ENGINE, FP16_ENGINE, INT8_ENGINE = (artifact.file_name for artifact in ENGINES)
CALIBRATION_MANIFEST_FILE = CALIBRATION_MANIFEST.file_name
TENSORRT_RANGES_FILE = TENSORRT_RANGES.file_name
ACCURACY_JSON_FILE = ACCURACY_JSON.file_name
ACCURACY_MD_FILE = ACCURACY_MD.file_name


def file_name(name: str) -> str:
    """The file name of artifact `name` (an ONNX variant such as "fp16", "int8_cpu", or any name in the table)."""
    if name not in BY_NAME:
        raise KeyError(f"no artifact named {name!r}; known: {', '.join(BY_NAME)}")
    return BY_NAME[name].file_name


def onnx_name(variant: str) -> str:
    """model.VARIANT.onnx for an ONNX artifact (shipped files use the same variant names after their stem)."""
    return file_name(variant) if variant in BY_NAME else f"model.{variant}{ONNX_SUFFIX}"


def int8_candidate_name(method: str) -> str:
    """One calibration method's TensorRT Q/DQ file, scored before the best becomes model.int8.onnx."""
    return f"{INT8.file_name.removesuffix(ONNX_SUFFIX)}.{method}{ONNX_SUFFIX}"


def engine_name(precision: str) -> str:
    return file_name(f"{precision}_engine")


@dataclass(frozen=True)
class BuildDir:
    """A build folder: where each artifact lives, whether it is there, and whether it is stale by content hash."""

    root: Path

    def path(self, name: str) -> Path:
        return self.root / file_name(name)

    def present(self, name: str) -> bool:
        return self.path(name).is_file()

    def stale(self, name: str, recorded_source_sha256: str | None, source: str = "fp32") -> bool:
        """True when `name` is missing or records a source hash other than the source file's bytes now. The one
        staleness rule: content hashes, never timestamps."""
        if not self.present(name) or not self.present(source):
            return True
        return recorded_source_sha256 != sha256_file(self.path(source))


def table() -> str:
    rows = ["name | file | stage | precision | variant | in-graph | provenance key"]
    rows += [f"{a.name} | {a.file_name} | {a.stage} | {a.precision or '-'} | {a.variant or '-'} | "
             f"{'yes' if a.in_graph else 'no'} | {a.provenance_key or '-'}" for a in ARTIFACTS]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    if not args:
        print(table())
        return 0
    unknown = [name for name in args if name not in BY_NAME]
    if unknown:
        print(f"error: no artifact named {unknown[0]!r}; known: {', '.join(BY_NAME)}", file=sys.stderr)
        return 2
    print(" ".join(file_name(name) for name in args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
