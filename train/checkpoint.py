"""Checkpoints: written atomically; read as data, never as code, and checked against the architecture they
declare, with one clear error naming the file and the field when they are not ours.

A `.pt` file is a pickle, and unpickling an arbitrary one runs whatever code it names. So every reader goes
through `read_checkpoint`, which unpickles with torch's `weights_only` loader (tensors, dicts, lists, numbers,
strings only) and then validates the structure before any of it is used.
"""

from __future__ import annotations

import math
import pickle
import re
from pathlib import Path

import numpy as np
import torch

from runtime.contract import MAX_CLASSES, PreprocessSpec, shorten
from runtime.input_policy import ArtifactError, check_depth
from runtime.output_policy import atomic_write
from train.model import ARCH_NAMES, LITE_ARCHES, FCN8s, FCN8sLite, build_model

FORMAT = "roadseg-checkpoint-v1"
# Widths above 1.0 are legal FCN-8s variants, but past 2.0 a declared architecture is a memory bomb, not a model.
MAX_WIDTH = 2.0
# Training states written before checkpoints were plain data hold numpy's RNG state as an ndarray: these are the
# only globals needed to rebuild one, and none of them can run code.
NUMPY_ARRAY_GLOBALS = [np.ndarray, np.dtype, np.dtypes.UInt32DType, np._core.multiarray._reconstruct]


class CheckpointError(ValueError):
    pass


def atomic_torch_save(payload: dict, path: str | Path) -> None:
    """torch.save through the one atomic writer (runtime/output_policy.py): a crash or a full disk never leaves
    half a checkpoint, and an input of the run is never overwritten."""
    atomic_write(path, lambda stream: torch.save(payload, stream))


def model_payload(model: FCN8s | FCN8sLite, spec: PreprocessSpec, summary: dict, half: bool = False) -> dict:
    """What every checkpoint holds: architecture, weights, preprocessing contract, training summary."""
    state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    if half:
        # The shipped model stores weights as fp16 to stay small; they are widened again on load.
        state = {key: value.half() if value.is_floating_point() else value for key, value in state.items()}
    return {"format": FORMAT, "arch": model.arch(), "model": state,
            "preprocess": spec.to_json(), "summary": summary}


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint's payload, unpickled as plain data and validated; CheckpointError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        with torch.serialization.safe_globals(NUMPY_ARRAY_GLOBALS):
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        named = _offending_global(error)
        if named is None:
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (damaged or foreign pickle)") from error
        raise CheckpointError(f"{path}: refused: it holds Python objects, not only tensors and plain data "
                              f"(it names {named}); loading it could run code") from error
    except Exception as error:  # torch raises many types for a foreign or truncated file
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(error).__name__})") from error
    validate_payload(payload, path)
    return payload


def _offending_global(error: Exception) -> str | None:
    """The importable name a refused pickle asked for, or None when the data is merely damaged."""
    match = re.search(r"(?:Unsupported global|GLOBAL)[:\s]+([\w.]+)", str(error))
    return match.group(1) if match else None


def validate_payload(payload: object, path: Path) -> None:
    """Required keys and types, a valid preprocessing contract, and weights whose names and shapes are exactly those
    of the architecture the file declares (checked on torch's meta device, so nothing is allocated)."""
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a roadseg checkpoint (no '{FORMAT}' format tag)")
    for key, kind in (("arch", dict), ("model", dict), ("preprocess", str), ("summary", dict)):
        if not isinstance(payload.get(key), kind):
            have = type(payload[key]).__name__ if key in payload else "missing"
            raise CheckpointError(f"{path}: field '{key}' must be a {kind.__name__} ({have})")
    try:  # the summary is copied into every export's metadata: held to the JSON depth limit like any artifact
        check_depth(payload["summary"], f"{path}: field 'summary'")
    except ArtifactError as error:
        raise CheckpointError(str(error)) from error
    arch = validate_arch(payload["arch"], path)
    try:
        spec = PreprocessSpec.from_json(payload["preprocess"])
    except (ValueError, TypeError, RecursionError) as error:
        raise CheckpointError(f"{path}: invalid field 'preprocess': {str(error)[:200]}") from error
    if len(spec.class_names) != arch["num_classes"]:
        raise CheckpointError(f"{path}: 'preprocess' names {len(spec.class_names)} classes, 'arch' has "
                              f"{arch['num_classes']}")
    validate_weights(payload["model"], arch, path)


def validate_arch(arch: dict, path: Path) -> dict:
    if arch.get("name") not in ARCH_NAMES:
        raise CheckpointError(f"{path}: field 'arch.name' must be one of {', '.join(ARCH_NAMES)}, "
                              f"got {shorten(arch.get('name'))}")
    if arch["name"] in LITE_ARCHES:
        return validate_lite_arch(arch, path)
    width = arch.get("width")
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not (0 < width <= MAX_WIDTH):
        raise CheckpointError(f"{path}: field 'arch.width' must be a number in (0, {MAX_WIDTH}], got {shorten(width)}")
    validate_num_classes(arch, path)
    if not isinstance(arch.get("batch_norm", False), bool):
        raise CheckpointError(f"{path}: field 'arch.batch_norm' must be true or false")
    unknown = sorted(set(arch) - {"name", "width", "num_classes", "batch_norm"})
    if unknown:
        raise CheckpointError(f"{path}: unknown field {shorten(f'arch.{unknown[0]}')}")
    return arch


def validate_num_classes(arch: dict, path: Path) -> None:
    classes = arch.get("num_classes")
    if isinstance(classes, bool) or not isinstance(classes, int) or not 2 <= classes <= MAX_CLASSES:
        raise CheckpointError(f"{path}: field 'arch.num_classes' must be an integer in 2..{MAX_CLASSES}, "
                              f"got {shorten(classes)}")


def validate_lite_arch(arch: dict, path: Path) -> dict:
    validate_num_classes(arch, path)
    unknown = sorted(set(arch) - {"name", "num_classes"})
    if unknown:
        raise CheckpointError(f"{path}: unknown field {shorten(f'arch.{unknown[0]}')}")
    return arch


def validate_weights(state: dict, arch: dict, path: Path) -> None:
    with torch.device("meta"):
        expected = {name: tuple(t.shape) for name, t in build_model(arch).state_dict().items()}
    missing = sorted(set(expected) - set(state), key=str)
    unexpected = sorted(set(state) - set(expected), key=str)
    if missing or unexpected:
        name = missing[0] if missing else unexpected[0]
        what = "missing" if missing else "unexpected"
        raise CheckpointError(f"{path}: field 'model': {what} tensor {shorten(name)} for {arch}")
    for name, shape in expected.items():
        tensor = state[name]
        # BatchNorm's step counter is the one integer buffer the architecture has.
        integer = name.endswith("num_batches_tracked")
        if not isinstance(tensor, torch.Tensor) or tensor.is_floating_point() == integer:
            kind = "an integer" if integer else "a floating-point"
            raise CheckpointError(f"{path}: field 'model': '{name}' is not {kind} tensor")
        if tuple(tensor.shape) != shape:
            raise CheckpointError(f"{path}: field 'model': '{name}' has shape {tuple(tensor.shape)}, "
                                  f"the architecture needs {shape}")


def validate_training_state(payload: dict, path: Path) -> None:
    """The extra fields `--resume` needs, with their types, so a damaged last.pt fails in one line."""
    if "optimizer" not in payload:
        raise CheckpointError(f"{path}: holds weights only, not a training state to resume (use last.pt)")
    for key, kind in (("optimizer", dict), ("scheduler", dict), ("scaler", dict), ("epoch", int),
                      ("epoch_state", dict), ("history", list), ("best_maxf", float), ("rng", dict)):
        if not isinstance(payload.get(key), kind) or isinstance(payload.get(key), bool):
            raise CheckpointError(f"{path}: field '{key}' must be a {kind.__name__}")
    state = payload["epoch_state"]
    if not isinstance(state.get("step"), int) or state["step"] < 0 or payload["epoch"] < 0:
        raise CheckpointError(f"{path}: field 'epoch_state.step' / 'epoch' must be non-negative integers")
    if not math.isfinite(payload["best_maxf"]):
        raise CheckpointError(f"{path}: field 'best_maxf' must be finite")
    rng = payload["rng"]
    if not {"python", "numpy", "torch"} <= set(rng) or not isinstance(rng["torch"], torch.Tensor):
        raise CheckpointError(f"{path}: field 'rng' lacks the python/numpy/torch generator states")
    validate_optimizer_state(payload["optimizer"], path)


def validate_optimizer_state(optimizer: dict, path: Path) -> None:
    """torch's Optimizer.load_state_dict trusts its input's shape (a damaged one raises AttributeError deep inside):
    {'state': {param id: {name: tensor or number}}, 'param_groups': [{'params': [param id, ...], ...}]}."""
    groups, state = optimizer.get("param_groups"), optimizer.get("state")
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        raise CheckpointError(f"{path}: field 'optimizer.param_groups' must be a list of dicts")
    for group in groups:
        params = group.get("params")
        if not isinstance(params, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in params):
            raise CheckpointError(f"{path}: field 'optimizer.param_groups.params' must be a list of parameter ids")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: field 'optimizer.state' must be a dict")
    for param_id, slots in state.items():
        if not isinstance(param_id, int) or not isinstance(slots, dict) or not all(
                isinstance(v, torch.Tensor | int | float) for v in slots.values()):
            raise CheckpointError(f"{path}: field 'optimizer.state' must map parameter ids to dicts of tensors")


def widened_state(payload: dict) -> dict:
    """The payload's weights as fp32 (the shipped model stores them as fp16)."""
    return {key: value.float() if value.is_floating_point() else value for key, value in payload["model"].items()}


def load_model(path: str | Path, expect_arch: dict | None = None) -> tuple[FCN8s | FCN8sLite, PreprocessSpec, dict]:
    """(model in eval mode, preprocessing contract, checkpoint payload)."""
    payload = read_checkpoint(path)
    arch = payload["arch"]
    if expect_arch is not None and any(arch.get(k) != v for k, v in expect_arch.items()):
        raise CheckpointError(f"{path}: checkpoint is {arch}, expected {expect_arch}")
    try:
        model = build_model(arch)
        model.load_state_dict(widened_state(payload))
    except (ValueError, RuntimeError, KeyError) as error:
        first_line = str(error).strip().splitlines()[0]
        raise CheckpointError(f"{path}: weights do not fit architecture {arch} ({first_line})") from error
    model.eval()
    return model, PreprocessSpec.from_json(payload["preprocess"]), payload
