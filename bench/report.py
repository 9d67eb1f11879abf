"""The benchmark's table as text: the console's aligned columns and OUT/latest.md."""

from __future__ import annotations

from typing import Any

from bench.floors import floor_lines
from bench.rows import BenchRow

# (header, BenchRow field, digits): None digits prints the value as it is; no field is the warm-up/runs column.
COLUMNS = (("model", "model", None), ("input", "input_size", None), ("backend", "backend", None),
           ("precision", "precision", None), ("variant", "variant", None), ("device", "device", None),
           ("MB", "size_mb", 1), ("MaxF", "maxf", 2), ("IoU", "iou", 2), ("p50 ms", "p50_ms", 1),
           ("p90 ms", "p90_ms", 1), ("p99 ms", "p99_ms", 1), ("e2e p50", "e2e_p50_ms", 1),
           ("e2e p99", "e2e_p99_ms", 1), ("FPS", "fps", 1), ("GFLOP", "gflop", 1), ("GFLOP/s", "gflops", 1),
           ("% peak", "peak_fraction", None), ("RSS MB", "peak_rss_mb", 0), ("warm/runs", None, None),
           ("thr", "threads", None))


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def cells(row: BenchRow) -> list[str]:
    out = []
    for _, key, digits in COLUMNS:
        if key is None:
            out.append(f"{row.warmup}/{row.runs}" if row.runs else "-")
        elif key == "peak_fraction":
            out.append(f"{row.peak_fraction * 100:.0f}%" if row.peak_fraction is not None else "-")
        else:
            value = getattr(row, key)
            out.append(fmt(value, digits or 0) if digits is not None else fmt(value))
    return out


def console_table(rows: list[BenchRow]) -> str:
    measured = [r for r in rows if r.skipped is None]
    table = [[c[0] for c in COLUMNS]] + [cells(r) for r in measured]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)) for line in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    skipped = [r for r in rows if r.skipped]
    if skipped:
        lines += ["", "skipped:"] + [f"  {r.backend} {r.precision} {r.variant or ''} "
                                     f"({r.model} @ {r.input_size}): {r.skipped}" for r in skipped]
    return "\n".join(lines)


def markdown(report: dict) -> str:
    """OUT/latest.md from a report whose rows are BenchRows."""
    machine = report["machine"]
    gpu = ", ".join(f"{g['name']} (driver {g['driver']})" for g in machine["gpus"]) or "none"
    libs = ", ".join(f"{k} {v}" for k, v in machine["libraries"].items())
    lines = [f"## Benchmark: {machine['cpu']}, {machine['cpu_cores']} cores, {machine['threads']} threads",
             "", f"- GPU: {gpu}", f"- CPU features: {', '.join(machine['cpu_flags']) or '-'}",
             f"- measured fp32 peak: {machine['fp32_peak_gflops']} GFLOP/s, the best GEMM of "
             + ", ".join(f"{k.split('_')[0]} {v}" for k, v in machine["fp32_peak_source"].items()
                         if k.endswith("gflops") and v)
             + f" ({machine['fp32_peak_source']['matmul']})",
             f"- libraries: {libs}", f"- {report['settings']['note']}", "",
             "| " + " | ".join(c[0] for c in COLUMNS) + " |",
             "| " + " | ".join("---" if c[2] is None and c[1] not in ("peak_fraction", "threads") else "---:"
                               for c in COLUMNS) + " |"]
    rows: list[BenchRow] = report["rows"]
    lines += ["| " + " | ".join(cells(r)) + " |" for r in rows if r.skipped is None]
    skipped = [r for r in rows if r.skipped]
    if skipped:
        lines += ["", "Skipped on this machine:", ""]
        lines += [f"- {r.backend} {r.precision} {r.variant} ({r.model} @ {r.input_size}): "
                  f"{r.skipped}" for r in skipped]
    lines += ["", "Performance floors (same run, p50 latencies):", ""]
    lines += [f"- {line}" for line in floor_lines(report["floors"])]
    return "\n".join(lines) + "\n"
