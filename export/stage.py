"""The export stage as a function: checkpoint -> build/model.fp32.onnx (+ model.fp16.onnx), each behind its gate.

`run_export` is what `python -m export` (export/__main__.py, whose help lists the steps) and the engine build
call. Gate failures raise one of GATE_ERRORS (the CLI exits 1); bad input raises a ValueError or OSError (exit 2).
"""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from export.ingraph import InGraphError, wrap_file
from export.onnx_export import DEFAULT_OPSET, export_onnx
from export.parity import ParityError
from runtime.artifacts import FP16_ONNX, FP32_ONNX, onnx_name
from runtime.ioutil import atomic_write_text, sha256_file
from runtime.output_policy import place, temporary_name
from runtime.paths import DEFAULT_VIDEO, SHIPPED_CHECKPOINT


class ExportError(RuntimeError):
    pass


GATE_ERRORS = (ExportError, ParityError, InGraphError)


@dataclass(frozen=True)
class ExportOptions:
    opset: int = DEFAULT_OPSET
    dynamic_batch: bool = True
    parity_frames: int = 20
    slim: bool = True  # try onnxslim, kept only if the slimmed graph passes the same parity gate
    fp16: bool = True
    accuracy: bool = True  # the KITTI val accuracy gate for FP32/FP16
    progress: bool = True
    in_graph: bool = False  # also the models with pre/postprocessing in the graph
    video: Path = Path(DEFAULT_VIDEO)  # the KITTI drive for the in-graph mask gate


@dataclass
class ExportResult:
    fp32: Path
    parity: dict  # what build/parity.json records
    fp16: Path | None = None
    in_graph: list[Path] = field(default_factory=list)


def run_export(checkpoint: Path, build: Path, data: Path, options: ExportOptions = ExportOptions()) -> ExportResult:
    """Export, gate and write the ONNX files of `checkpoint` into `build`, gated on the KITTI folder `data`."""
    check_writable(build)
    parity = export_fp32(checkpoint, build, data, options)
    result = ExportResult(build / FP32_ONNX, parity)
    if options.fp16:
        result.fp16 = export_fp16(build)
        if options.accuracy:
            accuracy_gate(build, data, options.progress)
    if options.in_graph:
        for precision in ("fp32", "fp16") if options.fp16 else ("fp32",):
            result.in_graph.append(wrap_file(build / onnx_name(precision), Path(options.video)))
    return result


def check_writable(build: Path) -> None:
    try:
        build.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=build, prefix=".write-test-"):
            pass
    except OSError as error:
        raise ExportError(f"{build}: build folder is not writable ({error.strerror or error})") from error


def load_checkpoint(path: Path):
    from train.checkpoint import load_model

    if not path.is_file() and str(path) == SHIPPED_CHECKPOINT:
        raise ExportError(f"{path}: the shipped model is not there yet (it lands after `make train`); "
                          "pass --checkpoint PATH")
    model, spec, payload = load_model(path)
    if model.batch_norm:  # BatchNorm is a training aid: the exported graph gets it folded into the convs
        from export.bn_fold import fold_batchnorm

        model = fold_batchnorm(model)
        payload = {**payload, "arch": {**model.arch(), "batch_norm_folded": True}}
    return model, spec, payload


def slim(model_path: Path, out_path: Path) -> bool:
    """onnxslim, keeping our metadata; False when it fails (the unslimmed graph is then kept)."""
    try:
        import onnxslim
    except ImportError:
        return False
    original = onnx.load(str(model_path))
    try:
        slimmed = onnxslim.slim(original)
    except Exception as error:  # onnxslim raises whatever its passes raise
        print(f"warning: onnxslim failed ({type(error).__name__}); keeping the unslimmed graph",
              file=sys.stderr)
        return False
    del slimmed.metadata_props[:]
    slimmed.metadata_props.extend(original.metadata_props)
    onnx.checker.check_model(slimmed)
    slimmed = onnx.shape_inference.infer_shapes(slimmed, strict_mode=True)
    onnx.save(slimmed, str(out_path))
    return True


def export_fp32(checkpoint: Path, build: Path, data: Path, options: ExportOptions) -> dict:
    from export.parity import check_parity, val_frames

    model, spec, payload = load_checkpoint(checkpoint)
    frames = val_frames(data, options.parity_frames)
    final = build / FP32_ONNX
    raw, slimmed = temporary_name(final), temporary_name(final, ".slim.onnx")
    try:
        export_onnx(model, spec, payload["arch"], payload.get("summary", {}), raw, opset=options.opset,
                    dynamic_batch=options.dynamic_batch)
        report = check_parity(model, spec, raw, frames, min_frames=min(20, options.parity_frames))
        if not report.passed:
            raise ExportError(f"{checkpoint}: PARITY GATE FAILED, {report.line()}")
        chosen, slim_note = raw, "not tried (--no-slim)"
        if options.slim and slim(raw, slimmed):
            slim_report = check_parity(model, spec, slimmed, frames, min_frames=min(20, options.parity_frames))
            if slim_report.passed:
                chosen, report, slim_note = slimmed, slim_report, "kept (parity holds)"
            else:
                slim_note = f"discarded ({slim_report.line()})"
        place(chosen, final)
    finally:
        raw.unlink(missing_ok=True)
        slimmed.unlink(missing_ok=True)
    print(f"wrote {final}  (opset {options.opset}, onnxslim {slim_note})")
    print(f"  {report.line()}")
    result = {"checkpoint": str(checkpoint), "checkpoint_sha256": sha256_file(checkpoint),
              "onnx": str(final), "opset": options.opset,
              "dynamic_batch": options.dynamic_batch, "onnxslim": slim_note, "parity": report.to_dict()}
    atomic_write_text(build / "parity.json", json.dumps(result, indent=1) + "\n")
    return result


def export_fp16(build: Path) -> Path:
    from export.fp16 import write_fp16

    final = build / FP16_ONNX
    write_fp16(build / FP32_ONNX, final)
    print(f"wrote {final}  (FP16 weights and activations, FP32 input/output)")
    return final


def accuracy_gate(build: Path, data: Path, progress: bool) -> None:
    from export.accuracy import broken_floors, report_openvino_floors, run_gate

    rows = run_gate(build, data, progress, precisions=("fp32", "fp16", "bf16"))
    report_openvino_floors(rows)
    broken = broken_floors(rows)
    if broken:
        (build / FP16_ONNX).unlink(missing_ok=True)
        raise ExportError(f"ACCURACY GATE FAILED: {broken[0]}; removed {build / FP16_ONNX}")
