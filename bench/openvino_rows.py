"""OpenVINO's rows in `make bench`: every CPU precision it offers for each ONNX file of a configuration.

A float file runs at fp32 (f32 hint) and, where the CPU computes bf16 natively, bf16; each INT8 Q/DQ file runs
as int8 (f32 hint) and, where bf16 is native, int8+bf16 (its float rest in bf16). Rows are measured by
bench/worker.py (`--backend openvino --precision P`) and scored by train.evaluate the same way, in fresh
processes like every other row. Without OpenVINO the rows are listed as skipped, with the command that
installs it.
"""

from __future__ import annotations

from bench.jobs import Config, Job
from runtime.openvino_backend import INSTALL_HINT, INT8_BF16, bf16_supported, openvino_installed

HINT_VARIANTS = {"fp32": "f32 hint", "bf16": "bf16 hint"}
NO_BF16 = "this CPU has no native bf16 (OpenVINO lists no BF16 capability: no AMX or AVX-512 BF16)"


def openvino_jobs(config: Config, int8_variants: dict[str, str]) -> list[Job]:
    """Jobs for `config`'s files on OpenVINO, or skipped ones saying why."""
    files = config.files
    installed = openvino_installed()
    bf16 = installed and bf16_supported()
    jobs = []
    for precision, variant in HINT_VARIANTS.items():
        reason = None
        if not installed:
            reason = f"OpenVINO is not installed ({INSTALL_HINT})"
        elif precision == "bf16" and not bf16:
            reason = NO_BF16
        elif "fp32" not in files:
            reason = "no FP32 ONNX file"
        jobs.append(Job(config, "openvino", precision, "cpu", variant, file=files.get("fp32"), provider="openvino",
                        extra=["--backend", "openvino", "--precision", precision], skipped=reason))
    for key, variant in int8_variants.items():
        reason = None if installed and key in files else (
            f"OpenVINO is not installed ({INSTALL_HINT})" if not installed else f"no {variant} ONNX file")
        for precision in ("int8", INT8_BF16):
            why = reason or (NO_BF16 if precision == INT8_BF16 and not bf16 else None)
            jobs.append(Job(config, "openvino", precision, "cpu", variant, file=files.get(key), provider="openvino",
                            extra=["--backend", "openvino", "--precision", precision], skipped=why))
    return jobs
