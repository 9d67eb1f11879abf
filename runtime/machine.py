"""What this machine is: the CPU from /proc/cpuinfo, NVIDIA GPUs from nvidia-smi. Named beside every figure and
keyed into cached measurements."""

from __future__ import annotations

import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path


def cpuinfo_fields(cpuinfo: str | None = None) -> dict[str, str]:
    """The first processor's fields of `cpuinfo` text (default /proc/cpuinfo; {} where there is none, e.g. macOS)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return {}
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_name() -> str:
    """The CPU's marketing name ("AMD EPYC", "Intel(R) Xeon(R) ..."), or what the platform says."""
    return cpuinfo_fields().get("model name") or platform.processor() or platform.machine()


def cpu_model() -> str:
    """The name plus family/model numbers: VMs often report only "AMD EPYC", which hides the generation."""
    fields = cpuinfo_fields()
    name = cpu_name()
    if "cpu family" in fields:
        name += f" (family {fields['cpu family']}, model {fields.get('model', '?')})"
    return name


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo cannot be read)."""
    return set(cpuinfo_fields(cpuinfo).get("flags", "").split())


def nvidia_smi(target: str, fields: Sequence[str], timeout_s: float = 10.0) -> list[list[str]]:
    """`nvidia-smi --query-TARGET=FIELDS` ("gpu", "compute-apps") as rows of values, without units (memory in
    MiB); [] where there is no NVIDIA driver or it does not answer."""
    command = ["nvidia-smi", f"--query-{target}={','.join(fields)}", "--format=csv,noheader,nounits"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.SubprocessError):
        return []
    if result.returncode != 0:
        return []
    rows = [[part.strip() for part in line.split(",")] for line in result.stdout.splitlines() if line.strip()]
    return [row for row in rows if len(row) == len(fields)]
