"""The accuracy gate: every artifact scored on KITTI val with the evaluator, against floors.

    python -m export.accuracy [--build build] [--data ../shared/data/kitti_road]

FP16 must stay within 0.1 pt MaxF of FP32, INT8 within 0.5 pt. Scores are cached per file sha256 under
build/scores/, so re-running the gate after one artifact changed scores only that one. FP16 is scored
through its CPU emulation graph (export/fp16.py says why ONNX Runtime's CPU FP16 would not be faithful).

Where OpenVINO is installed, the same files are also scored as OpenVINO runs them on this CPU: FP32 (f32
hint), bf16 (where the CPU has native bf16; within 0.1 pt) and each INT8 file (within 0.5 pt; where bf16 is
native also as int8+bf16, its float rest in bf16, within the same 0.5 pt of FP32). A file can
pass on ONNX Runtime and a precision fail on OpenVINO, so those rows remove no file: a failed OpenVINO row
is recorded in accuracy.json, and the runtime's `--backend auto` never picks that combination.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from runtime.artifacts import (
    ACCURACY_JSON_FILE,
    ACCURACY_MD_FILE,
    FP16_ONNX,
    FP32_ONNX,
    INT8_CPU_ONNX,
    INT8_FP16_ONNX,
    INT8_ONNX,
)
from runtime.input_policy import read_json
from runtime.ioutil import atomic_write_text, fail, sha256_file
from runtime.openvino_backend import INT8_BF16
from runtime.paths import DEFAULT_KITTI_DIR

FLOORS_PT = {"fp32": None, "fp16": 0.1, "bf16": 0.1, "int8": 0.5, INT8_BF16: 0.5}
# A TensorRT-flavour INT8 file is scored as TensorRT computes it (int8 values, exact integer sums), with ONNX
# Runtime's graph fusions off: its DequantizeLinear -> float Conv. Fused, ONNX Runtime would run its own int8
# kernels, which on an x86 CPU without VNNI sum u8 x s8 pairs into saturating 16-bit lanes and lose accuracy on
# a file with full-range s8 weights: the score would measure this CPU rather than the file.
TENSORRT_INT8_RUNS_AS = "ONNX Runtime CPU, Q/DQ unfused (TensorRT's arithmetic)"
FP16_EMULATION_RUNS_AS = "ONNX Runtime CPU, FP16 emulation"


class AccuracyError(RuntimeError):
    pass


@dataclass(frozen=True)
class Artifact:
    label: str  # row name in the table
    path: Path  # the shipped file
    precision: str  # fp32 | fp16 | int8
    scored_path: Path  # the file actually run (the FP16 emulation for fp16)
    runs_as: str
    backend: str = "onnxruntime"  # or "openvino", run at `precision` (its CPU inference precision hint)

    @property
    def fused(self) -> bool:
        """False: ONNX Runtime runs the graph as written (a TensorRT INT8 file, TENSORRT_INT8_RUNS_AS)."""
        return self.runs_as != TENSORRT_INT8_RUNS_AS


def score_model(scored_path: Path, kitti_dir: str | Path, cache_dir: Path, progress: bool = True,
                backend_name: str = "onnxruntime", precision: str = "auto", fused: bool = True) -> dict:
    """Val metrics of one ONNX on ONNX Runtime CPU (or OpenVINO CPU at `precision`), reusing a cached score
    of the same bytes."""
    from kitti.data import find_samples, split_samples
    from kitti.evaluate import evaluate_samples, public_result
    from runtime.backends import OnnxRuntimeBackend, open_backend

    digest = sha256_file(scored_path)
    tag = ("" if fused else ".unfused") if backend_name == "onnxruntime" else f".{backend_name}-{precision}"
    cache = cache_dir / f"{scored_path.name}{tag}.json"
    if cache.is_file():
        try:
            cached = read_json(cache)
        except ValueError:  # damaged, huge or deep: score again and replace it
            cached = {}
        if isinstance(cached, dict) and cached.get("sha256") == digest and cached.get("data") == str(kitti_dir) \
                and isinstance(cached.get("metrics"), dict):
            return cached["metrics"]
    if backend_name == "onnxruntime":
        backend = OnnxRuntimeBackend(scored_path, provider="cpu", fused=fused)
    else:
        backend = open_backend(scored_path, backend_name, precision=precision)
    samples = split_samples(find_samples(kitti_dir), "val")
    metrics = public_result(evaluate_samples(backend, samples, progress=progress,
                                             description=f"score {scored_path.name}"))
    atomic_write_text(cache, json.dumps({"sha256": digest, "data": str(kitti_dir), "metrics": metrics},
                                        indent=1) + "\n")
    return metrics


def within_floor(fp32_maxf: float | None, maxf: float, precision: str) -> bool:
    """The gate's rule: an artifact may lose at most its precision's floor of MaxF points against FP32."""
    floor = FLOORS_PT.get(precision)
    return floor is None or fp32_maxf is None or fp32_maxf - maxf <= floor + 1e-9


def gate_rows(artifacts: list[Artifact], kitti_dir: str | Path, build: Path,
              progress: bool = True) -> list[dict]:
    rows, baseline = [], None
    for artifact in artifacts:
        metrics = score_model(artifact.scored_path, kitti_dir, build / "scores", progress, artifact.backend,
                              artifact.precision, artifact.fused)
        maxf = metrics["maxf"] * 100
        if artifact.precision == "fp32" and baseline is None:
            baseline = maxf
        drop = None if baseline is None else baseline - maxf
        floor = FLOORS_PT.get(artifact.precision)
        passed = within_floor(baseline, maxf, artifact.precision)
        rows.append({"artifact": artifact.label, "file": str(artifact.path), "precision": artifact.precision,
                     "runs_as": artifact.runs_as, "backend": artifact.backend,
                     "sha256": sha256_file(artifact.path),
                     "maxf": round(maxf, 3), "ap": round(metrics["ap"] * 100, 3),
                     "iou": round(metrics["iou"] * 100, 3), "images": metrics["images"],
                     "drop_pt": None if drop is None else round(drop, 3), "floor_pt": floor,
                     "passed": passed})
    return rows


def markdown_table(rows: list[dict], title: str) -> str:
    lines = [f"### {title}", "",
             "| artifact | precision | runs as | MaxF | AP | IoU | drop vs FP32 (pt) | floor | ok |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for row in rows:
        drop = "-" if row["drop_pt"] is None else f"{row['drop_pt']:+.3f}"
        floor = "-" if row["floor_pt"] is None else f"{row['floor_pt']:.1f}"
        lines.append(f"| {row['artifact']} | {row['precision']} | {row['runs_as']} | {row['maxf']:.2f} | "
                     f"{row['ap']:.2f} | {row['iou']:.2f} | {drop} | {floor} | "
                     f"{'yes' if row['passed'] else 'NO'} |")
    images = rows[0]["images"] if rows else 0
    lines += ["", f"KITTI Road val split ({images} images), devkit metrics in %, "
              "drop = FP32 MaxF - artifact MaxF.",
              "FP16 is scored through an FP32 graph that rounds every weight and tensor to FP16 "
              "(ONNX Runtime CPU has no FP16 convolutions on x86); see export/fp16.py.", ""]
    return "\n".join(lines)


def write_table(rows: list[dict], json_path: Path, title: str, extra: dict | None = None) -> None:
    payload = {"title": title, "rows": rows, **(extra or {})}
    atomic_write_text(json_path, json.dumps(payload, indent=1) + "\n")
    atomic_write_text(json_path.with_suffix(".md"), markdown_table(rows, title))


def standard_artifacts(build: Path, precisions: tuple[str, ...] | None = None) -> list[Artifact]:
    """The shipped ONNX files present in `build`, FP32 first (it is every row's baseline)."""
    from export.fp16 import write_emulation

    candidates = [
        ("FP32 ONNX", build / FP32_ONNX, "fp32", "ONNX Runtime CPU"),
        ("FP16 ONNX", build / FP16_ONNX, "fp16", FP16_EMULATION_RUNS_AS),
        ("INT8 Q/DQ ONNX (TensorRT)", build / INT8_ONNX, "int8", TENSORRT_INT8_RUNS_AS),
        ("INT8 Q/DQ ONNX (CPU)", build / INT8_CPU_ONNX, "int8", "ONNX Runtime CPU (u8s8 Q/DQ)"),
        ("INT8 Q/DQ + FP16 rest (TensorRT 11/RTX)", build / INT8_FP16_ONNX, "int8", FP16_EMULATION_RUNS_AS),
    ]
    artifacts = []
    for label, path, precision, runs_as in candidates:
        if not path.is_file() or (precisions is not None and precision not in precisions):
            continue
        scored = path
        if runs_as == FP16_EMULATION_RUNS_AS:
            scored = write_emulation(path, build / "scoring" / f"{path.stem}.cpu-emulation.onnx")
        artifacts.append(Artifact(label, path, precision, scored, runs_as))
    if not artifacts or artifacts[0].precision != "fp32":
        raise AccuracyError(f"{build / FP32_ONNX}: not found; run `make export` first")
    return artifacts + openvino_artifacts(artifacts, precisions)


def tensorrt_int8_artifact(label: str, path: Path) -> Artifact:
    """A TensorRT-flavour INT8 file's row: the same score on every CPU, the one TensorRT would give."""
    return Artifact(label, path, "int8", path, TENSORRT_INT8_RUNS_AS)


def openvino_artifacts(artifacts: list[Artifact], precisions: tuple[str, ...] | None) -> list[Artifact]:
    """The same files as OpenVINO runs them on this CPU: every precision it offers for each, gated alike."""
    from runtime.openvino_backend import cpu_precisions, hint, openvino_installed

    if not openvino_installed():
        print("  OpenVINO rows skipped: OpenVINO is not installed (make setup-openvino)")
        return []
    rows = []
    for artifact in artifacts:
        if artifact.precision == "fp16":
            continue  # an FP16 file is a GPU artifact; on CPU, OpenVINO's bf16 hint is the 16-bit path
        for precision in cpu_precisions(artifact.precision):
            if precisions is not None and precision not in precisions:
                continue
            label = artifact.label.replace(" ONNX", "") + f" on OpenVINO {hint(precision)}"
            rows.append(Artifact(label, artifact.path, precision, artifact.path,
                                 f"OpenVINO CPU ({hint(precision)} hint)", backend="openvino"))
    return rows


def broken_floors(rows: list[dict], backend: str = "onnxruntime") -> list[str]:
    """Rows below their floor for `backend` (the ONNX Runtime rows are the files' own gate)."""
    return [f"{r['artifact']} MaxF {r['maxf']:.2f} is {r['drop_pt']:.2f} pt below FP32 "
            f"(floor {r['floor_pt']} pt)"
            for r in rows if not r["passed"] and r.get("backend", "onnxruntime") == backend]


def report_openvino_floors(rows: list[dict]) -> None:
    """OpenVINO rows below their floor remove no file; say that `--backend auto` will not pick them."""
    for line in broken_floors(rows, "openvino"):
        print(f"  warning: {line}: --backend auto will not use it")


def run_gate(build: Path, kitti_dir: str | Path, progress: bool = True,
             precisions: tuple[str, ...] | None = None) -> list[dict]:
    rows = gate_rows(standard_artifacts(build, precisions), kitti_dir, build, progress)
    write_table(rows, build / ACCURACY_JSON_FILE, "Accuracy of every artifact on KITTI Road val")
    for row in rows:
        drop = "" if row["drop_pt"] is None else f"  drop {row['drop_pt']:+.3f} pt"
        verdict = "ok" if row["passed"] else "BELOW FLOOR"
        print(f"  {row['artifact']:38s} MaxF {row['maxf']:.2f}{drop}  {verdict}")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.accuracy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", default="build")
    parser.add_argument("--data", default=DEFAULT_KITTI_DIR)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        rows = run_gate(Path(args.build), args.data, not args.no_progress)
    except (AccuracyError, ValueError, OSError) as error:
        return fail(error)
    broken = broken_floors(rows)
    if broken:
        return fail(f"accuracy gate failed: {broken[0]} (table: {Path(args.build) / ACCURACY_MD_FILE})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
