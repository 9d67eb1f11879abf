"""The artifact contract: what every roadseg model file (ONNX, engine sidecar, checkpoint) promises, and the one
validator that checks a file keeps that promise before anything is allocated or run.

Model files travel (a colleague's export, a release page), so their metadata is untrusted input: every reader goes
through `parse_preprocess`, `check_graph_io` and `validate_sidecar` here, and every failure is a `ModelFileError`
whose one line names the file and the field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
CLASS_NAMES = ("not_road", "road")
ROAD_CLASS = 1

# The keys of an exported model's metadata_props (and of an engine sidecar's "metadata").
PREPROCESS_KEY = "roadseg.preprocess"
MODEL_KEY = "roadseg.model"
PRECISION_KEY = "roadseg.precision"
TRAINING_KEY = "roadseg.training"
COMMIT_KEY = "roadseg.source_commit"
CALIBRATION_KEY = "roadseg.calibration"
SOURCE_ONNX_SHA256_KEY = "roadseg.source_onnx_sha256"
# Which form a model's inputs and outputs have. Absent: the float N x 3 x H x W tensor runtime/preprocess.py makes,
# and logits out. IN_GRAPH_IO: the model does the contract's preprocessing and the argmax itself (export/ingraph.py).
IO_KEY = "roadseg.io"
IN_GRAPH_IO = "uint8_bgr_nhwc_to_road_mask"

SIDECAR_FORMAT = "roadseg-engine-v1"
PRECISIONS = ("fp32", "fp16", "bf16", "int8")  # the one list; engine and OpenVINO subsets derive from it
COLOR_ORDERS = ("RGB",)
LAYOUTS = ("NCHW",)

# Bounds checked before any buffer is sized from a file's numbers: 4096 x 4096 is a 200 MB float input already,
# well past any camera this product streams, and 64 classes is far beyond road segmentation's needs.
MAX_INPUT_SIDE = 4096
MAX_CLASSES = 64
MAX_NAME_LENGTH = 64
MAX_METADATA_BYTES = 1 << 20
# The most frames one inference call may take: a dynamic-batch export allows 1..MAX_BATCH, an engine's optimisation
# profile may not go beyond it, and a batch axis a backend reports as symbolic is taken to allow this many.
MAX_BATCH = 64


class ModelFileError(ValueError):
    """A model file that is missing, unreadable, or not one of ours; the message names it."""


@dataclass(frozen=True)
class PreprocessSpec:
    """How a BGR camera frame becomes the model's N x 3 x H x W float input."""

    input_height: int
    input_width: int
    mean: tuple[float, float, float] = IMAGENET_MEAN_RGB
    std: tuple[float, float, float] = IMAGENET_STD_RGB
    color_order: str = "RGB"
    layout: str = "NCHW"
    value_scale: float = 1.0 / 255.0
    class_names: tuple[str, ...] = field(default=CLASS_NAMES)

    def __post_init__(self) -> None:
        problem = spec_problem(self)
        if problem:
            raise ValueError(problem)

    @property
    def size_hw(self) -> tuple[int, int]:
        return self.input_height, self.input_width

    @property
    def road_index(self) -> int:
        return self.class_names.index("road")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> PreprocessSpec:
        """Parse and validate; ValueError names the field that breaks the contract."""
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError(f"expected a JSON object, got {type(raw).__name__}")
        allowed = {spec_field.name for spec_field in fields(cls)}
        unknown = sorted(set(raw) - allowed)
        if unknown:
            raise ValueError(f"unknown field {shorten(unknown[0])}")
        missing = sorted(name for name in ("input_height", "input_width", "mean", "std", "class_names")
                         if name not in raw)
        if missing:
            raise ValueError(f"missing field '{missing[0]}'")
        for key in ("mean", "std", "class_names"):
            if not isinstance(raw[key], list):
                raise ValueError(f"'{key}' must be a list, got {shorten(raw[key])}")
            raw[key] = tuple(raw[key])
        return cls(**raw)

    def channel_scale_bias(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel (scale, bias) so that normalised = uint8 * scale + bias, in RGB order."""
        std = np.asarray(self.std, np.float32)
        scale = np.float32(self.value_scale) / std
        bias = -np.asarray(self.mean, np.float32) / std
        return scale.astype(np.float32), bias.astype(np.float32)


def shorten(value: object, limit: int = 60) -> str:
    """A value as it can appear in a one-line error: a hostile file's 10,000-character field is cut short."""
    text = repr(list(value) if isinstance(value, tuple) else value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def spec_problem(spec: PreprocessSpec) -> str:
    """'' when the spec keeps the contract, else the first broken field and why."""
    for name in ("input_height", "input_width"):
        value = getattr(spec, name)
        if not _is_int(value) or not 1 <= value <= MAX_INPUT_SIDE:
            return f"'{name}' must be an integer in 1..{MAX_INPUT_SIDE}, got {shorten(value)}"
    for name, low, high in (("mean", -1e4, 1e4), ("std", 1e-6, 1e4)):
        values = getattr(spec, name)
        if not isinstance(values, tuple) or len(values) != 3:
            return f"'{name}' must hold 3 numbers (one per channel), got {shorten(values)}"
        if not all(_is_number(v) and low <= v <= high for v in values):
            return f"'{name}' values must be finite numbers in [{low:g}, {high:g}], got {shorten(values)}"
    if not _is_number(spec.value_scale) or not 1e-6 <= spec.value_scale <= 1e3:
        return f"'value_scale' must be a finite number in [1e-06, 1000], got {shorten(spec.value_scale)}"
    if spec.color_order not in COLOR_ORDERS:
        return f"'color_order' must be one of {', '.join(COLOR_ORDERS)}, got {shorten(spec.color_order)}"
    if spec.layout not in LAYOUTS:
        return f"'layout' must be one of {', '.join(LAYOUTS)}, got {shorten(spec.layout)}"
    names = spec.class_names
    if not isinstance(names, tuple) or not 2 <= len(names) <= MAX_CLASSES:
        return f"'class_names' must list 2..{MAX_CLASSES} classes, got {shorten(names)}"
    if not all(isinstance(n, str) and 0 < len(n) <= MAX_NAME_LENGTH for n in names) or len(set(names)) != len(names):
        return "'class_names' must be distinct non-empty strings"
    if "road" not in names:
        return f"'class_names' has no 'road' class (got {shorten(names)})"
    return ""


def parse_preprocess(metadata: dict[str, str], source: str | Path) -> PreprocessSpec:
    """The preprocessing contract from a model's metadata; ModelFileError naming the file and field otherwise."""
    if PREPROCESS_KEY not in metadata:
        raise ModelFileError(f"{source}: not a roadseg model (no '{PREPROCESS_KEY}' metadata); "
                             "export one with `python -m export`")
    text = metadata[PREPROCESS_KEY]
    if not isinstance(text, str) or len(text) > MAX_METADATA_BYTES:
        raise ModelFileError(f"{source}: '{PREPROCESS_KEY}' metadata is not a JSON text of at most 1 MB")
    try:
        return PreprocessSpec.from_json(text)
    except (ValueError, TypeError, RecursionError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ModelFileError(f"{source}: invalid '{PREPROCESS_KEY}' metadata: {reason}") from error


def parse_precision(metadata: dict[str, str], source: str | Path) -> str:
    precision = metadata.get(PRECISION_KEY, "fp32")
    if precision not in PRECISIONS:
        raise ModelFileError(f"{source}: metadata '{PRECISION_KEY}' must be one of {', '.join(PRECISIONS)}, "
                             f"got {shorten(precision)}")
    return precision


def in_graph_prepost(metadata: dict[str, str]) -> bool:
    """Whether a model's metadata declares in-graph pre/postprocessing (ValueError on an unknown form)."""
    if IO_KEY not in metadata:
        return False
    io = json.loads(metadata[IO_KEY])
    form = io.get("form") if isinstance(io, dict) else None
    if form != IN_GRAPH_IO:
        raise ValueError(f"unknown '{IO_KEY}' form {shorten(form)} (expected {IN_GRAPH_IO})")
    return True


def parse_io_form(metadata: dict[str, str], source: str | Path) -> bool:
    """in_graph_prepost, with a ModelFileError naming the file; `check_graph_io` then holds the graph to the claim."""
    try:
        return in_graph_prepost(metadata)
    except (ValueError, TypeError, RecursionError) as error:
        raise ModelFileError(f"{source}: unreadable '{IO_KEY}' metadata ({shorten(str(error), 120)})") from error


@dataclass(frozen=True)
class TensorInfo:
    """One graph input or output as a backend reports it: dims are ints, or None/str where symbolic."""

    name: str
    shape: Sequence[int | str | None]
    dtype: str  # numpy dtype name: "float32", "float16", "uint8", ...


def check_graph_io(spec: PreprocessSpec, inputs: Sequence[TensorInfo], outputs: Sequence[TensorInfo],
                   source: str | Path, in_graph: bool = False) -> None:
    """The graph's I/O must be what the metadata says: N x 3 x H x W floats in and N x C x H x W scores out, or, for
    an in-graph model, N x H x W x 3 uint8 frames in and an N x H x W uint8 road mask (+ road probability) out."""
    if len(inputs) != 1 or not 1 <= len(outputs) <= (2 if in_graph else 1):
        raise ModelFileError(f"{source}: unexpected graph I/O: {len(inputs)} inputs and {len(outputs)} outputs")
    height, width = spec.size_hw
    if in_graph:
        expected = [("input", inputs[0], (None, height, width, 3), ("uint8",)),
                    ("output", outputs[0], (None, height, width), ("uint8",))]
        expected += [("output", extra, (None, height, width), ("float32",)) for extra in outputs[1:]]
    else:
        expected = [("input", inputs[0], (None, 3, height, width), ("float32", "float16")),
                    ("output", outputs[0], (None, len(spec.class_names), height, width), ("float32", "float16"))]
    for role, tensor, want, dtypes in expected:
        if tensor.dtype not in dtypes:
            raise ModelFileError(f"{source}: {role} '{tensor.name}' is {tensor.dtype}, expected {' or '.join(dtypes)}")
        if len(tensor.shape) != len(want):
            raise ModelFileError(f"{source}: {role} '{tensor.name}' has rank {len(tensor.shape)}, expected {len(want)}")
        for axis, (have, need) in enumerate(zip(tensor.shape, want, strict=True)):
            if need is not None and _is_int(have) and have >= 0 and have != need:
                raise ModelFileError(f"{source}: {role} '{tensor.name}' shape {list(tensor.shape)} does not match "
                                     f"the metadata's {'x'.join(str(w or 'N') for w in want)} (axis {axis})")


def check_model(metadata: dict[str, str], inputs: Sequence[TensorInfo], outputs: Sequence[TensorInfo],
                source: str | Path) -> tuple[PreprocessSpec, bool, str]:
    """(contract, in-graph form, precision) of a model file, after holding its graph to its metadata: the one check
    every backend (ONNX Runtime, OpenVINO) runs before a frame goes in."""
    spec = parse_preprocess(metadata, source)
    in_graph = parse_io_form(metadata, source)
    check_graph_io(spec, inputs, outputs, source, in_graph)
    return spec, in_graph, parse_precision(metadata, source)


def batch_capacity(shape: Sequence[int | str | None]) -> int:
    """How many frames one call may take, from a graph input's shape: its batch dim when fixed, else MAX_BATCH."""
    first = shape[0] if len(shape) else None
    return first if _is_int(first) and first > 0 else MAX_BATCH


def parse_batch_profile(raw: object, path: str | Path) -> dict[str, int]:
    """An engine sidecar's optimisation profile along the batch axis: {"min", "opt", "max"}, 1 <= min <= opt <= max
    <= MAX_BATCH."""
    keys = ("min", "opt", "max")
    if not isinstance(raw, dict) or set(raw) != set(keys) or not all(_is_int(raw[k]) for k in keys):
        raise ModelFileError(f"{path}: engine sidecar field 'batch' must be {{\"min\", \"opt\", \"max\"}} integers, "
                             f"got {shorten(raw)}")
    if not 1 <= raw["min"] <= raw["opt"] <= raw["max"] <= MAX_BATCH:
        raise ModelFileError(f"{path}: engine sidecar field 'batch' must hold 1 <= min <= opt <= max <= {MAX_BATCH}, "
                             f"got {shorten(raw)}")
    return {k: raw[k] for k in keys}


def _require(raw: dict, key: str, kind: type | tuple[type, ...], path: Path) -> object:
    if key not in raw:
        raise ModelFileError(f"{path}: engine sidecar has no '{key}'")
    value = raw[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ModelFileError(f"{path}: engine sidecar field '{key}' has the wrong type ({type(value).__name__})")
    return value


def validate_sidecar(raw: object, path: str | Path) -> dict:
    """An engine sidecar's schema: format tag, string metadata with a valid contract, a cache key, a rebuild line."""
    path = Path(path)
    if not isinstance(raw, dict) or raw.get("format") != SIDECAR_FORMAT:
        raise ModelFileError(f"{path}: not a roadseg engine sidecar (no '{SIDECAR_FORMAT}' format tag)")
    metadata = _require(raw, "metadata", dict, path)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise ModelFileError(f"{path}: engine sidecar field 'metadata' must map strings to strings")
    parse_preprocess(metadata, path)
    parse_precision(metadata, path)
    _require(raw, "cache_key", dict, path)
    rebuild = _require(raw, "rebuild", str, path)
    if len(rebuild) > 2000 or "\n" in rebuild:
        raise ModelFileError(f"{path}: engine sidecar field 'rebuild' is not a one-line command")
    if "batch" in raw:  # a sidecar without one describes a batch-1 engine
        parse_batch_profile(raw["batch"], path)
    return raw
