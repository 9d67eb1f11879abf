"""One row of `make bench`: a (model, size, backend, precision) and what was measured of it.

The JSON report (OUT/latest.json) and the workers' outputs carry rows as dicts; `BenchRow.to_json` and
`BenchRow.from_json` are the only conversions between the two forms.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

# Every measured row has these (the workers always report them); a row never measured has none of them.
MEASURED_KEYS = ("mean_ms", "min_ms", "e2e_p90_ms", "e2e_preprocess_p50_ms", "e2e_inference_p50_ms",
                 "e2e_postprocess_p50_ms", "e2e_runs", "frame_size", "gpu_memory_mb", "latencies_ms")
# Reported by some backends or rows only: the JSON has the key where there is a value.
WHEN_SET_KEYS = ("provider", "ap", "eval_images", "accuracy_note")


@dataclass
class BenchRow:
    """Field order is the JSON's key order (the order in which a row's figures arrive)."""

    model: str
    width: float
    backend: str
    precision: str
    variant: str
    device: str
    input_size: str
    size_mb: float | None = None
    file: str | None = None
    maxf: float | None = None
    iou: float | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    e2e_p50_ms: float | None = None
    e2e_p99_ms: float | None = None
    fps: float | None = None
    peak_rss_mb: float | None = None
    warmup: int | None = None
    runs: int | None = None
    threads: int | None = None
    skipped: str | None = None
    provider: str | None = None
    mean_ms: float | None = None
    min_ms: float | None = None
    e2e_p90_ms: float | None = None
    e2e_preprocess_p50_ms: float | None = None
    e2e_inference_p50_ms: float | None = None
    e2e_postprocess_p50_ms: float | None = None
    e2e_runs: int | None = None
    frame_size: str | None = None
    gpu_memory_mb: float | None = None
    latencies_ms: list[float] | None = None
    ap: float | None = None
    eval_images: int | None = None
    accuracy_note: str | None = None
    gflop: float | None = None
    flops_counted_from: str | None = None
    gflops: float | None = None
    peak_fraction: float | None = None

    @property
    def measured(self) -> bool:
        return self.latencies_ms is not None

    @property
    def label(self) -> str:
        """Backend, precision and variant: the name interleaved blocks and floors know a row by."""
        return f"{self.backend} {self.precision} {self.variant}".strip()

    @property
    def title(self) -> str:
        """The label with the model's width in front: rows of several configurations side by side."""
        variant = f" {self.variant}" if self.variant else ""
        return f"{self.model_tag} {self.backend} {self.precision}{variant}"

    @property
    def model_tag(self) -> str:
        """The model in a word: its EfficientNet encoder ('lite0'), else the VGG16 width ('full', 'w0.25')."""
        if "efficientnet_" in self.model:
            return self.model.split("efficientnet_", 1)[1]
        return "full" if self.width == 1.0 else f"w{self.width:g}"

    def to_json(self) -> dict[str, Any]:
        out = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if (item.name in WHEN_SET_KEYS and value is None) or (item.name in MEASURED_KEYS and not self.measured):
                continue
            out[item.name] = value
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BenchRow:
        unknown = sorted(set(data) - {item.name for item in fields(cls)})
        if unknown:  # a worker reporting a new figure: give it a field rather than drop it
            raise ValueError(f"bench row: unknown keys {', '.join(unknown)}")
        return cls(**data)

    def updated(self, reported: dict[str, Any]) -> BenchRow:
        """This row with a worker's figures; what the worker reports wins (its device name, its variant)."""
        return BenchRow.from_json({**self.to_json(), **reported})
