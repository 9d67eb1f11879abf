"""CPU training precision: bf16 autocast and channels_last where the CPU has native bf16, FP32 elsewhere.

bf16 autocast keeps FP32 master weights (parameters and optimiser state never leave FP32; only the
convolutions' inputs and outputs are bf16), so no gradient scaler is needed: bf16 has FP32's exponent range.
Native bf16 means AMX (Intel Sapphire Rapids and later) or AVX-512 BF16 (Intel Cooper Lake, AMD Zen 4/5):
without either, oneDNN emulates bf16 and it is slower than FP32, so the mode falls back to FP32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from runtime.machine import cpu_flags

NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
CPU_PRECISIONS = ("auto", "bf16", "fp32")


def native_bf16(flags: set[str] | None = None) -> str | None:
    """The flag that gives this CPU native bf16 matmuls (AMX first), or None."""
    probe_torch = flags is None
    flags = cpu_flags() if flags is None else flags
    for flag in NATIVE_BF16_FLAGS:
        if flag in flags:
            return flag
    # Where /proc/cpuinfo is missing (macOS, some containers) torch's own dispatch level still names AMX.
    if probe_torch and "AMX" in torch.backends.cpu.get_cpu_capability():
        return f"torch capability {torch.backends.cpu.get_cpu_capability()}"
    return None


@dataclass(frozen=True)
class CpuPrecision:
    """What a CPU training run uses, and why (the reason goes into the log and the checkpoint summary)."""

    bf16: bool
    channels_last: bool
    reason: str

    def describe(self) -> str:
        parts = ["bf16 autocast (FP32 master weights)" if self.bf16 else "FP32",
                 "channels_last" if self.channels_last else "NCHW"]
        return f"{' + '.join(parts)}: {self.reason}"


def choose_cpu_precision(requested: str, channels_last: str = "auto", flags: set[str] | None = None
                         ) -> CpuPrecision:
    """Resolve --cpu-precision auto|bf16|fp32 and --channels-last auto|yes|no for this CPU."""
    if requested not in CPU_PRECISIONS:
        raise ValueError(f"--cpu-precision {requested}: expected one of {', '.join(CPU_PRECISIONS)}")
    native = native_bf16(flags)
    if requested == "fp32":
        bf16, reason = False, "--cpu-precision fp32"
    elif requested == "bf16":
        bf16 = True
        reason = f"--cpu-precision bf16 ({native or 'no native bf16 on this CPU: emulated, likely slower'})"
    elif native:
        bf16, reason = True, f"CPU has {native}"
    else:
        bf16, reason = False, "CPU has neither amx_bf16 nor avx512_bf16"
    # channels_last lets oneDNN pick its NHWC bf16 kernels; for FP32 it helped on an Intel Xeon with AMX
    # (1.47x) and cost 5 % on AMD Zen 5 (docs/training.md), so auto means on and --channels-last no opts out.
    use_channels_last = channels_last in ("auto", "yes")
    return CpuPrecision(bf16, use_channels_last, reason)


def autocast(device: torch.device, enabled: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)
