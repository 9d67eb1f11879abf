"""What `make bench` measures: a configuration (model, input size, its ONNX files) and one job (a row) on it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Config:
    """One (model, input size) and the ONNX files that run it."""

    model: str
    width: float
    num_classes: int
    size: str
    checkpoint: str | None = None
    random_width: float | None = None
    accuracy: bool = True
    floors: bool = False
    list_skipped: bool = False  # skipped rows are listed once per main configuration, not per sweep size
    heavy: bool = False  # the full-width model: fewer timed runs
    training: str | None = None  # the checkpoint's training summary (JSON), to match build/'s export
    files: dict[str, Path] = field(default_factory=dict)
    origin: str = ""


@dataclass
class Job:
    config: Config
    backend: str
    precision: str
    device: str
    variant: str = ""
    file: Path | None = None
    provider: str = "cpu"
    extra: list[str] = field(default_factory=list)
    skipped: str | None = None
