"""The jobs (rows) of one configuration: every backend and precision, measured here or listed as skipped with why."""

from __future__ import annotations

import importlib.util

from bench.host import nvidia_gpus
from bench.jobs import Config, Job
from bench.openvino_rows import openvino_jobs

INT8_VARIANTS = {"int8_tensorrt": "Q/DQ s8 (TensorRT)", "int8_cpu": "Q/DQ u8 + ReLU/pool (CPU)"}
ORT_CPU_FP16_REASON = ("ONNX Runtime's CPU provider has no FP16 convolution kernels on x86: it inserts casts "
                       "and runs FP32 (see export/fp16.py); FP16 is a GPU precision")


def plan_jobs(config: Config, torch_info: dict | None, providers: list[str]) -> list[Job]:
    jobs: list[Job] = []
    no_torch = "torch is not installed in this environment"
    jobs.append(Job(config, "torch", "fp32", "cpu", "eager", skipped=None if torch_info else no_torch))
    files = config.files
    jobs.append(Job(config, "onnxruntime", "fp32", "cpu", file=files.get("fp32"),
                    skipped=None if "fp32" in files else "no FP32 ONNX file"))
    if config.list_skipped:
        jobs.append(Job(config, "onnxruntime", "fp16", "cpu", skipped=ORT_CPU_FP16_REASON))
    for key, variant in INT8_VARIANTS.items():
        jobs.append(Job(config, "onnxruntime", "int8", "cpu", variant, file=files.get(key),
                        skipped=None if key in files else f"no {variant} ONNX file (make calibrate)"))
    jobs += openvino_jobs(config, INT8_VARIANTS)
    jobs += gpu_jobs(config, torch_info, providers)
    return [j for j in jobs if j.skipped is None or config.list_skipped]


def gpu_jobs(config: Config, torch_info: dict | None, providers: list[str]) -> list[Job]:
    files, gpus = config.files, nvidia_gpus()
    gpu = gpus[0]["name"] if gpus else "gpu"
    cuda = bool(torch_info and torch_info.get("cuda_available"))
    no_cuda = ("no CUDA GPU: torch.cuda.is_available() is False" if torch_info
               else "torch is not installed in this environment")
    jobs = [Job(config, "torch", "fp32", gpu, "eager on CUDA", extra=["--device", "cuda"],
                skipped=None if cuda else no_cuda),
            Job(config, "torch", "fp16", gpu, "eager on CUDA", extra=["--device", "cuda", "--precision", "fp16"],
                skipped=None if cuda else no_cuda),
            Job(config, "torch", "fp16", gpu, "eager + CUDA graph",
                extra=["--device", "cuda", "--precision", "fp16", "--cuda-graph"],
                skipped=None if cuda else no_cuda)]
    for provider, label, keys in (("cuda", "CUDAExecutionProvider", ("fp32", "fp16")),
                                  ("tensorrt", "TensorrtExecutionProvider", ("fp32", "int8_tensorrt"))):
        for key in keys:
            precision = "int8" if key.startswith("int8") else key
            reason = None
            if label not in providers:
                reason = f"ONNX Runtime here has no {label} (providers: {', '.join(providers)}; " \
                         "needs onnxruntime-gpu and an NVIDIA GPU)"
            elif key not in files:
                reason = f"no {precision} ONNX file"
            jobs.append(Job(config, "onnxruntime", precision, gpu, f"{provider} provider", file=files.get(key),
                            provider=provider, skipped=reason))
    jobs += engine_jobs(config, gpus)
    return jobs


def engine_jobs(config: Config, gpus: list[dict]) -> list[Job]:
    engines = {k.split(":", 1)[1]: v for k, v in config.files.items() if k.startswith("engine:")}
    if importlib.util.find_spec("tensorrt") is None:
        reason = "the tensorrt Python package is not installed (TensorRT runs on the NVIDIA target)"
    elif not gpus:
        reason = "no NVIDIA GPU (nvidia-smi finds none); TensorRT engines need one"
    elif not engines:
        reason = "no TensorRT engine in the build folder (make engine on the target)"
    else:
        return [Job(config, "tensorrt", "int8" if "int8" in name else "fp16" if "fp16" in name else "fp32",
                    gpus[0]["name"], name, file=path, provider="tensorrt") for name, path in engines.items()]
    return [Job(config, "tensorrt", precision, gpus[0]["name"] if gpus else "gpu", "engine", skipped=reason)
            for precision in ("fp16", "int8")]
