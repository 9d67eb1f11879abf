"""Per-stage latency statistics of a stream: p50/p90/p99 per stage, FPS, counters, and frame age.

Samples go into fixed-size ring buffers, so a stream that runs for days uses the same memory as one that
runs for a minute; percentiles cover the most recent `capacity` frames.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from runtime.ioutil import atomic_write_text

STAGES = ("capture", "preprocess", "inference", "postprocess", "render", "end_to_end")
DEFAULT_CAPACITY = 16384


class LatencyRing:
    """The last `capacity` samples of one quantity, in milliseconds."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self._values = np.zeros(capacity, np.float64)
        self.count = 0
        self.total_ms = 0.0

    def add(self, ms: float) -> None:
        self._values[self.count % len(self._values)] = ms
        self.count += 1
        self.total_ms += ms

    @property
    def values(self) -> np.ndarray:
        return self._values[: min(self.count, len(self._values))]

    def recent_mean(self, n: int) -> float:
        """Mean of the last n samples (for the heads-up line)."""
        n = min(n, self.count, len(self._values))
        if n == 0:
            return 0.0
        end = self.count % len(self._values)
        if end >= n:
            return float(self._values[end - n:end].mean())
        return float((self._values[:end].sum() + self._values[end - n:].sum()) / n)

    def summary(self) -> dict[str, float]:
        values = self.values
        if values.size == 0:
            return {"p50_ms": 0.0, "p90_ms": 0.0, "p99_ms": 0.0, "mean_ms": 0.0, "max_ms": 0.0}
        p50, p90, p99 = np.percentile(values, (50, 90, 99))
        return {"p50_ms": round(float(p50), 3), "p90_ms": round(float(p90), 3), "p99_ms": round(float(p99), 3),
                "mean_ms": round(float(values.mean()), 3), "max_ms": round(float(values.max()), 3)}


class StreamStats:
    """Counters and per-stage timings of one run of the pipeline."""

    def __init__(self, live: bool, capacity: int = DEFAULT_CAPACITY, track_age: bool | None = None) -> None:
        self.live = live
        # Frame age needs a time the frame was born: a live source's capture time; files have one only where the
        # caller supplies it (the multi-camera loop: when the frame reached its muxer).
        self.track_age = live if track_age is None else track_age
        self.capacity = capacity
        self.stages = {name: LatencyRing(capacity) for name in STAGES}
        self.frame_age = LatencyRing(capacity)
        # Time between consecutive results: the frame period. In a pipelined loop stages overlap, so it is
        # shorter than end_to_end (the latency of one frame) and is what FPS is computed from.
        self.frame_interval = LatencyRing(capacity)
        self.frames_processed = 0
        self._first: float | None = None
        self._last: float | None = None

    def record(self, stage_ms: Sequence[float], start: float, end: float, frame_timestamp: float) -> None:
        """One frame: milliseconds of each of STAGES[:-1], and perf_counter() when its latency starts (the later
        of the loop asking for it and its arrival: waiting for the source is not latency) and when its result
        was handed to the outputs (end_to_end; in a pipelined loop more than the sum of the stages' own time)."""
        for name, ms in zip(STAGES[:-1], stage_ms, strict=True):
            self.stages[name].add(ms)
        self.stages["end_to_end"].add((end - start) * 1000.0)
        if self.track_age:  # how old the result is when shown: capture -> rendered
            self.frame_age.add((end - frame_timestamp) * 1000.0)
        if self._first is None:
            self._first = start
        else:
            self.frame_interval.add((end - self._last) * 1000.0)
        self._last = end
        self.frames_processed += 1

    @property
    def fps(self) -> float:
        if self._first is None or self._last is None or self._last <= self._first:
            return 0.0
        return self.frames_processed / (self._last - self._first)

    def recent_fps(self, n: int = 30) -> float:
        mean = self.frame_interval.recent_mean(n)
        return 1000.0 / mean if mean > 0 else 0.0

    def summary(self, frames_read: int, frames_dropped: int, backend: str, precision: str, **extra) -> dict:
        result = {
            "frames_read": frames_read,
            "frames_processed": self.frames_processed,
            "frames_dropped": frames_dropped,
            "fps": round(self.fps, 3),
            "backend": backend,
            "precision": precision,
            "live": self.live,
            "stages": {name: ring.summary() for name, ring in self.stages.items()},
            "frame_interval": self.frame_interval.summary(),
            "percentile_window": min(self.frames_processed, self.capacity),
        }
        if self.track_age:
            result["frame_age"] = self.frame_age.summary()
        result.update(extra)
        return result


def format_summary(summary: dict) -> str:
    causes = summary.get("dropped_by_cause")
    by_cause = f" ({', '.join(f'{n} {cause}' for cause, n in causes.items() if n)})" if causes and \
        summary["frames_dropped"] else ""
    lines = [f"frames: {summary['frames_read']} read, {summary['frames_processed']} processed, "
             f"{summary['frames_dropped']} dropped{by_cause}  |  {summary['fps']:.1f} FPS  |  "
             f"{summary['backend']} {summary['precision']}"]
    lines.append(f"  {'stage':12s} {'p50 ms':>8s} {'p90 ms':>8s} {'p99 ms':>8s}")
    rows = list(summary["stages"].items())
    rows.append(("interval", summary["frame_interval"]))
    if "frame_age" in summary:
        rows.append(("frame_age", summary["frame_age"]))
    for name, stage in rows:
        lines.append(f"  {name:12s} {stage['p50_ms']:8.2f} {stage['p90_ms']:8.2f} {stage['p99_ms']:8.2f}")
    return "\n".join(lines)


def write_stats_json(path: str | Path, summary: dict) -> None:
    atomic_write_text(path, json.dumps(summary, indent=2) + "\n", "--stats-json")


def now() -> float:
    return time.perf_counter()
