"""The machine a benchmark ran on: CPU, instruction sets, GPUs, library versions and the measured fp32 peak."""

from __future__ import annotations

import os
import platform

from runtime import machine


def cpu_flags() -> list[str]:
    """The instruction sets that decide these kernels' speed, of those this CPU has."""
    present = machine.cpu_flags()
    return [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8") if f in present]


def nvidia_gpus() -> list[dict]:
    return [{"name": name, "driver": driver, "memory": f"{memory} MiB"}
            for name, driver, memory in machine.nvidia_smi("gpu", ["name", "driver_version", "memory.total"])]


def library_versions() -> dict[str, str | None]:
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in ("numpy", "opencv-python", "opencv-python-headless", "onnxruntime", "onnxruntime-gpu", "openvino",
                 "onnx",
                 "torch", "tensorrt", "cuda-python"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def machine_info(threads: int, torch_info: dict | None, numpy_peak: dict) -> dict:
    from runtime.backends import available_providers

    peaks = {key: numpy_peak.get(key) for key in ("numpy_matmul_gflops", "onnxruntime_matmul_gflops")}
    if torch_info:
        peaks["torch_matmul_gflops"] = torch_info.get("torch_matmul_gflops")
    peak = max(v for v in peaks.values() if v)
    return {
        "cpu": machine.cpu_model(), "cpu_cores": os.cpu_count(), "cpu_flags": cpu_flags(), "threads": threads,
        "os": f"{platform.system()} {platform.release()}",
        "gpus": nvidia_gpus(), "torch_cuda": (torch_info or {}).get("cuda_device"),
        "onnxruntime_providers": available_providers(), "libraries": library_versions(),
        "fp32_peak_gflops": peak, "fp32_peak_source": {**peaks, "matmul": f"{numpy_peak.get('matmul_size')}^3 "
                                                                          f"fp32 on {threads} threads, best of 3"},
    }
