"""What this CPU is, read once from /proc/cpuinfo: named beside every figure and keyed into cached measurements."""

from __future__ import annotations

import platform
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
