"""Floors judged on ratios that hold on a noisy machine.

`make bench` measures each row in its own process, one after another; a change in a shared VM's speed between
two rows (seconds apart) moves their ratio (three quiet runs once gave the same INT8-vs-torch ratio as 3.65x,
5.26x and 3.78x). So the floor configurations are also measured interleaved (bench/interleave.py):
every CPU candidate against torch eager FP32 measured just before it, in alternating blocks. A floor is judged
on the median of the per-block ratios, and the spread (min / median / max) is printed beside it.
"""

from __future__ import annotations

import argparse
import statistics

from bench.jobs import Config
from bench.rows import BenchRow

CANDIDATE_BACKENDS = ("onnxruntime", "openvino")
ROUNDS, QUICK_ROUNDS, HEAVY_ROUNDS = 9, 5, 3
RUNS_PER_BLOCK, HEAVY_RUNS_PER_BLOCK = 5, 2


def candidates(rows: list[BenchRow]) -> list[BenchRow]:
    """This configuration's measured CPU rows that can be timed against torch in one process."""
    return [r for r in rows if r.skipped is None and r.device == "cpu" and r.backend in CANDIDATE_BACKENDS
            and r.file]


def interleave_command(config: Config, rows: list[BenchRow], args: argparse.Namespace) -> list[str] | None:
    """Arguments for the interleaving child (bench/interleave.py), or None when there is nothing to compare."""
    chosen = candidates(rows)
    if not chosen:
        return None
    source = (["--checkpoint", config.checkpoint] if config.checkpoint
              else ["--random-width", str(config.random_width)])
    rounds = HEAVY_ROUNDS if config.heavy else QUICK_ROUNDS if args.quick else ROUNDS
    runs = HEAVY_RUNS_PER_BLOCK if config.heavy else RUNS_PER_BLOCK
    command = [*source, "--size", config.size, "--threads", str(args.threads),
               "--rounds", str(rounds), "--runs", str(runs), "--video", args.video]
    for row in chosen:
        precision = row.precision if row.backend == "openvino" else "auto"
        command += ["--candidate", f"{row.label}|{row.backend}|{precision}|{row.file}"]
    return command


def spread(ratios: list[float]) -> dict:
    return {"min": round(min(ratios), 2), "median": round(statistics.median(ratios), 2),
            "max": round(max(ratios), 2), "blocks": len(ratios)}


def summarize(result: dict) -> dict[str, dict]:
    """label -> spread of its per-block speed-ups over torch eager FP32 (+ the blocks' median latencies)."""
    out = {}
    for label, entry in result.get("candidates", {}).items():
        if entry.get("ratios"):
            out[label] = {**spread(entry["ratios"]), "ms_median": round(statistics.median(entry["ms"]), 3),
                          "torch_ms_median": round(statistics.median(entry["torch_ms"]), 3),
                          "ratios": entry["ratios"]}
    return out


def speedup(interleaved: dict[str, dict] | None, torch_row: BenchRow, row: BenchRow) -> tuple[float, dict | None]:
    """(speed-up of `row` over torch, its spread): the interleaved median where measured, else the p50 ratio."""
    found = (interleaved or {}).get(row.label)
    if found:
        return found["median"], found
    return round(torch_row.p50_ms / row.p50_ms, 2), None


def spread_text(found: dict | None) -> str:
    if not found:
        return "rows measured apart (no interleaved blocks)"
    return f"per-block min {found['min']:.2f} / median {found['median']:.2f} / max {found['max']:.2f}x " \
           f"over {found['blocks']} blocks"
