"""OUT/latest.png: latency against accuracy, and every measured row's latency distribution."""

from __future__ import annotations

from pathlib import Path

from bench.rows import BenchRow
from runtime.ioutil import save_figure


def write_plot(report: dict, path: Path) -> str | None:
    """Latency vs MaxF and each row's latency distribution from a report whose rows are BenchRows; the problem,
    when matplotlib is not installed (no PNG then), else None."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no PNG"
    rows: list[BenchRow] = [r for r in report["rows"] if r.skipped is None and r.latencies_ms]
    figure, (left, right) = plt.subplots(1, 2, figsize=(15, max(4.5, 0.32 * len(rows) + 1.5)), dpi=110)
    # One configuration (the shipped model at its working size) keeps the scatter readable.
    scored = [r for r in rows if r.maxf is not None]
    main = [r for r in scored if (r.model, r.input_size) == (scored[0].model, scored[0].input_size)
            ] if scored else []
    for row in main:
        left.scatter(row.p50_ms, row.maxf, s=40)
        left.annotate(row.label, (row.p50_ms, row.maxf),
                      fontsize=7, xytext=(4, 4 if row.precision != "int8" else -10), textcoords="offset points",
                      rotation=20)
    title = f"{main[0].model} @ {main[0].input_size}" if main else "no scored rows"
    left.set(xscale="log", xlabel="inference p50 (ms, log)", ylabel="KITTI val MaxF (%)",
             title=f"latency vs accuracy: {title}")
    left.grid(alpha=0.3, which="both")
    right.boxplot([r.latencies_ms for r in rows], orientation="horizontal", showfliers=True, whis=(1, 99))
    right.set_yticks(range(1, len(rows) + 1), [f"{r.title} @ {r.input_size}" for r in rows], fontsize=7)
    right.set(xscale="log", xlabel="inference latency (ms, log); whiskers p1-p99", title="latency distributions")
    right.grid(alpha=0.3, axis="x", which="both")
    figure.suptitle(f"{report['machine']['cpu']} ({report['machine']['threads']} threads)", fontsize=10)
    figure.tight_layout()
    save_figure(figure, path)
    return None
