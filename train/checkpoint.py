"""Checkpoints: written atomically, read with one clear error naming the file when they are not ours."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from runtime.ioutil import publish
from runtime.preprocess import PreprocessSpec
from train.model import FCN8s, build_model

FORMAT = "roadseg-checkpoint-v1"


class CheckpointError(ValueError):
    pass


def atomic_torch_save(payload: dict, path: str | Path) -> None:
    """Write to a temporary file in the same folder, then rename: a crash never leaves half a checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(payload, stream)
            stream.flush()
            os.fsync(stream.fileno())
        publish(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def model_payload(model: FCN8s, spec: PreprocessSpec, summary: dict, half: bool = False) -> dict:
    """What every checkpoint holds: architecture, weights, preprocessing contract, training summary."""
    state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    if half:
        # The shipped model stores weights as fp16 to stay small; they are widened again on load.
        state = {key: value.half() if value.is_floating_point() else value for key, value in state.items()}
    return {"format": FORMAT, "arch": model.arch(), "model": state,
            "preprocess": spec.to_json(), "summary": summary}


def read_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises many types for a foreign or truncated file
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(error).__name__})") from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a roadseg checkpoint (no '{FORMAT}' format tag)")
    return payload


def widened_state(payload: dict) -> dict:
    """The payload's weights as fp32 (the shipped model stores them as fp16)."""
    return {key: value.float() if value.is_floating_point() else value for key, value in payload["model"].items()}


def load_model(path: str | Path, expect_arch: dict | None = None) -> tuple[FCN8s, PreprocessSpec, dict]:
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
