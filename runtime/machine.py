"""What this CPU is, read once from /proc/cpuinfo: named beside every figure and keyed into cached measurements."""

from __future__ import annotations

import platform
from pathlib import Path


def cpuinfo_fields() -> dict[str, str]:
    """The first processor's /proc/cpuinfo fields ({} where there is none, e.g. macOS)."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
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


def cpu_flags() -> set[str]:
    return set(cpuinfo_fields().get("flags", "").split())
