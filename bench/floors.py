"""The performance floors `make bench` holds the shipped and full-width models to, judged on this run's rows."""

from __future__ import annotations

from bench.jobs import Config
from bench.ratios import speedup, spread_text
from bench.rows import BenchRow

FLOOR_INT8_SPEEDUP, FLOOR_FP32_SPEEDUP, FLOOR_MAXF_DROP_PT = 4.0, 1.5, 0.5
FLOOR_BEST_CPU_SPEEDUP = 10.0  # the shipped model's best CPU row (any backend) over torch eager FP32
NOISY_SPREAD = 1.5  # p90 above 1.5x p50: other load on the machine disturbed the row


def floor_checks(rows: list[BenchRow], configs: list[Config], interleaved: dict[str, dict] | None = None
                 ) -> list[dict]:
    """Speed-ups over PyTorch eager FP32 on CPU, per floor configuration, from this run's measurements: the
    median of interleaved per-block ratios where `interleaved` has them ("model@size" -> label -> spread),
    else the ratio of the rows' p50s."""
    return [floor_check(config, rows, (interleaved or {}).get(f"{config.model}@{config.size}"))
            for config in configs if config.floors]


def floor_check(config: Config, rows: list[BenchRow], ratios: dict | None) -> dict:
    """One configuration's floors; `ratios` are its interleaved blocks (label -> spread), if measured."""
    mine = [r for r in rows if r.model == config.model and r.input_size == config.size
            and r.skipped is None and r.device == "cpu"]
    torch_row = next((r for r in mine if r.backend == "torch" and r.precision == "fp32"), None)
    fp32 = next((r for r in mine if r.backend == "onnxruntime" and r.precision == "fp32"), None)
    int8_rows = [r for r in mine if r.backend == "onnxruntime" and r.precision == "int8"]
    check = {"model": config.model, "input_size": config.size, "torch_p50_ms": None, "passed": False}
    if torch_row is None or fp32 is None or not int8_rows:
        missing = [name for name, row in (("torch eager FP32", torch_row), ("ORT FP32", fp32),
                                          ("ORT INT8", int8_rows[0] if int8_rows else None)) if row is None]
        check["reason"] = f"no {', '.join(missing)} row measured here (the floors compare all three)"
        return check
    int8 = best_int8(int8_rows, torch_row, ratios)
    drop = maxf_drop(torch_row, int8)
    (int8_speedup, int8_spread), (fp32_speedup, fp32_spread) = (speedup(ratios, torch_row, int8),
                                                                speedup(ratios, torch_row, fp32))
    check.update({
        "torch_p50_ms": torch_row.p50_ms, "ort_fp32_p50_ms": fp32.p50_ms,
        "ort_int8_p50_ms": int8.p50_ms, "ort_int8_variant": int8.variant,
        "int8_speedup": int8_speedup, "fp32_speedup": fp32_speedup,
        "int8_spread": int8_spread, "fp32_spread": fp32_spread,
        "int8_maxf_drop_pt": drop,
        "floors": {"int8_speedup": FLOOR_INT8_SPEEDUP, "fp32_speedup": FLOOR_FP32_SPEEDUP,
                   "int8_maxf_drop_pt": FLOOR_MAXF_DROP_PT},
    })
    noisy = [r.label for r in (torch_row, fp32, int8) if (r.p90_ms or 0) > NOISY_SPREAD * r.p50_ms]
    if noisy:  # something else took the CPU during these rows: the ratio is not this machine's
        check["noisy_rows"] = noisy
    check["passed"] = (check["int8_speedup"] >= FLOOR_INT8_SPEEDUP
                       and check["fp32_speedup"] >= FLOOR_FP32_SPEEDUP
                       and (drop is None or drop <= FLOOR_MAXF_DROP_PT))
    if drop is None:
        check["accuracy_note"] = "no accuracy for this model (untrained): speed floors only"
    if config.accuracy and config.checkpoint:  # the shipped model: the best CPU row, any backend
        best_cpu_floor(check, mine, torch_row, ratios)
    return check


def best_cpu_floor(check: dict, mine: list[BenchRow], torch_row: BenchRow, ratios: dict | None) -> None:
    """The fastest CPU row of any backend/precision that keeps MaxF within the floor, >= 10x torch eager."""
    cpu_rows = [r for r in mine if r.backend != "torch"]
    best = best_int8(cpu_rows, torch_row, ratios)
    best_speedup, best_spread = speedup(ratios, torch_row, best)
    drop = maxf_drop(torch_row, best)
    check.update({"best_cpu_row": best.label,
                  "best_cpu_p50_ms": best.p50_ms, "best_cpu_speedup": best_speedup,
                  "best_cpu_spread": best_spread, "best_cpu_maxf_drop_pt": drop,
                  "best_cpu_floor": FLOOR_BEST_CPU_SPEEDUP,
                  "best_cpu_passed": best_speedup >= FLOOR_BEST_CPU_SPEEDUP
                  and (drop is None or drop <= FLOOR_MAXF_DROP_PT)})


def maxf_drop(torch_row: BenchRow, row: BenchRow) -> float | None:
    if torch_row.maxf is None or row.maxf is None:
        return None
    return round(torch_row.maxf - row.maxf, 3)


def best_int8(int8_rows: list[BenchRow], torch_row: BenchRow, ratios: dict | None = None) -> BenchRow:
    """The fastest row (by interleaved median speed-up where measured, else p50) that keeps MaxF within the
    floor (or the fastest, when none does)."""
    def within(row: BenchRow) -> bool:
        if row.maxf is None or torch_row.maxf is None:
            return True
        return torch_row.maxf - row.maxf <= FLOOR_MAXF_DROP_PT

    eligible = [r for r in int8_rows if within(r)] or int8_rows
    return max(eligible, key=lambda r: speedup(ratios, torch_row, r)[0])


def floor_lines(checks: list[dict]) -> list[str]:
    lines = []
    for check in checks:
        head = f"{check['model']} @ {check['input_size']}"
        if "int8_speedup" not in check:
            # Not judged is not passed (--check-floors still exits 1), but it is no measured failure either.
            lines.append(f"NOT JUDGED {head}: {check['reason']}")
            continue
        drop = "n/a (untrained)" if check["int8_maxf_drop_pt"] is None else f"{check['int8_maxf_drop_pt']:+.2f} pt"
        lines.append(f"{'PASS' if check['passed'] else 'FAIL'} {head}: torch eager FP32 {check['torch_p50_ms']:.1f} ms"
                     f" | ORT INT8 {check['ort_int8_variant']} {check['ort_int8_p50_ms']:.1f} ms = "
                     f"{check['int8_speedup']:.2f}x (floor {FLOOR_INT8_SPEEDUP:g}x), MaxF drop {drop} "
                     f"(floor {FLOOR_MAXF_DROP_PT} pt) | ORT FP32 {check['ort_fp32_p50_ms']:.1f} ms = "
                     f"{check['fp32_speedup']:.2f}x (floor {FLOOR_FP32_SPEEDUP:g}x)")
        lines.append(f"  spread: ORT INT8 {spread_text(check.get('int8_spread'))}; "
                     f"ORT FP32 {spread_text(check.get('fp32_spread'))}")
        if "best_cpu_row" in check:
            best_drop = check["best_cpu_maxf_drop_pt"]
            lines.append(f"{'PASS' if check['best_cpu_passed'] else 'FAIL'} {head} best CPU row: "
                         f"{check['best_cpu_row']} {check['best_cpu_p50_ms']:.1f} ms = {check['best_cpu_speedup']:.2f}x"
                         f" torch eager FP32 (floor {FLOOR_BEST_CPU_SPEEDUP:g}x), MaxF drop "
                         f"{'n/a' if best_drop is None else f'{best_drop:+.2f} pt'}; "
                         f"{spread_text(check.get('best_cpu_spread'))}")
        if check.get("noisy_rows"):
            lines.append(f"  warning: p90 > {NOISY_SPREAD:g} x p50 in {', '.join(check['noisy_rows'])}: the CPU "
                         "was shared during the run; rerun on an idle machine before trusting this ratio")
    return lines
