"""The calibration set: chosen frames, their sha256, and the preprocessed tensors, so a calibration is
reproducible and has an identity (the manifest's sha256) that can enter an engine's cache key.

Frames come from a KITTI Road folder (its *train* split: val is what every INT8 model is scored on, so
calibrating on it would flatter the result) stratified across um/umm/uu, or from a video, evenly spaced.
Each frame goes through the runtime's own FramePreprocessor, so the tensors are exactly what the deployed
model sees. The manifest holds no timestamps or absolute paths: the same inputs give the same bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from kitti.data import DataError
from kitti.frames import evenly_spaced, select_kitti_frames
from runtime.contract import PreprocessSpec
from runtime.input_policy import MAX_JSON_BYTES, ArtifactError, parse_json, read_limited, resolve_inside
from runtime.ioutil import atomic_write_bytes, sha256_file
from runtime.preprocess import FramePreprocessor
from runtime.sources import SourceError, count_video_frames, read_video_frames_at

FORMAT = "roadseg-calibration-v1"
MANIFEST_NAME = "manifest.json"
TENSORS_NAME = "tensors.npy"
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm")


class CalibrationError(ValueError):
    """Bad calibration input; the message names the file or argument."""


@dataclass(frozen=True)
class CalibrationSet:
    manifest_path: Path
    tensors_path: Path
    identity: str  # sha256 of the manifest's bytes
    count: int

    def tensors(self) -> np.ndarray:
        return np.load(self.tensors_path, mmap_mode="r")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def decode_image(path: Path) -> np.ndarray:
    data = path.read_bytes() if path.is_file() else None
    if data is None:
        raise CalibrationError(f"{path}: calibration image not found")
    if not data:
        raise CalibrationError(f"{path}: calibration image is empty (0 bytes)")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise CalibrationError(f"{path}: cannot decode calibration image (corrupt or not an image)")
    return image


def kitti_items(kitti_dir: Path, size: int, split: str, preprocess: FramePreprocessor,
                progress: bool) -> tuple[list[dict], np.ndarray]:
    try:
        frames = select_kitti_frames(kitti_dir, size, split)
    except DataError as error:
        raise CalibrationError(str(error)) from error
    tensors = np.empty((len(frames), 3, *preprocess.spec.size_hw), np.float32)
    items = []
    for index, (category, path) in enumerate(tqdm(frames, desc="calibration set", disable=not progress,
                                                  leave=False)):
        image = decode_image(path)
        tensors[index] = preprocess(image)[0]
        items.append({"file": path.name, "category": category, "sha256": sha256_file(path)})
    return items, tensors


def video_items(video: Path, size: int, preprocess: FramePreprocessor,
                progress: bool) -> tuple[list[dict], np.ndarray]:
    # Two passes, neither keeping more than the chosen frames: count what decodes, then decode the chosen ones.
    try:
        total = count_video_frames(video)
    except SourceError as error:
        raise CalibrationError(str(error)) from error
    if not total:
        raise CalibrationError(f"{video}: video has no readable frames")
    chosen = read_video_frames_at(video, evenly_spaced(list(range(total)), size))
    tensors = np.empty((len(chosen), 3, *preprocess.spec.size_hw), np.float32)
    items = []
    for slot, (index, frame) in enumerate(tqdm(chosen, desc="calibration set", disable=not progress, leave=False)):
        tensors[slot] = preprocess(frame)[0]
        items.append({"file": video.name, "frame": index, "category": "video",
                      "sha256": sha256_bytes(np.ascontiguousarray(frame).tobytes())})
    return items, tensors


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def write_if_changed(path: Path, data: bytes) -> None:
    """Leave an identical file untouched so `make` sees nothing changed and rebuilds nothing downstream."""
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return
    atomic_write_bytes(path, data)


def build_calibration_set(source: str | Path, spec: PreprocessSpec, out_dir: str | Path, size: int = 64,
                          split: str = "train", progress: bool = True) -> CalibrationSet:
    """Select, preprocess and store the calibration frames; the manifest is written last (commit point)."""
    source, out_dir = Path(source), Path(out_dir)
    if size <= 0:
        raise CalibrationError(f"--calibration-size {size}: must be at least 1")
    preprocess = FramePreprocessor(spec)
    if source.is_file() and source.suffix.lower() in VIDEO_SUFFIXES:
        items, tensors = video_items(source, size, preprocess, progress)
        origin = {"kind": "video", "name": source.name, "sha256": sha256_file(source)}
    elif source.is_dir():
        items, tensors = kitti_items(source, size, split, preprocess, progress)
        origin = {"kind": "kitti", "split": split}
    else:
        raise CalibrationError(f"{source}: calibration source not found (a KITTI folder or a video file)")
    if not np.isfinite(tensors).all():
        raise CalibrationError(f"{source}: preprocessed calibration tensors contain NaN or Inf")
    tensor_bytes = npy_bytes(tensors)
    manifest = {
        "format": FORMAT,
        "source": origin,
        "requested_size": size,
        "count": len(items),
        "preprocess": json.loads(spec.to_json()),
        "items": items,
        "tensors": {"file": TENSORS_NAME, "shape": list(tensors.shape), "dtype": "float32",
                    "sha256": sha256_bytes(tensor_bytes)},
    }
    manifest_bytes = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
    write_if_changed(out_dir / TENSORS_NAME, tensor_bytes)
    write_if_changed(out_dir / MANIFEST_NAME, manifest_bytes)
    return CalibrationSet(out_dir / MANIFEST_NAME, out_dir / TENSORS_NAME, sha256_bytes(manifest_bytes),
                          len(items))


def load_calibration_set(out_dir: str | Path) -> CalibrationSet:
    """Open a stored set, checking the tensors still match the manifest."""
    out_dir = Path(out_dir)
    manifest_path = out_dir / MANIFEST_NAME
    if not manifest_path.is_file():
        raise CalibrationError(f"{manifest_path}: no calibration manifest; run `make calibrate`")
    try:
        manifest_bytes = read_limited(manifest_path, MAX_JSON_BYTES)
        manifest = parse_json(manifest_bytes, str(manifest_path))
    except ArtifactError as error:
        raise CalibrationError(f"unreadable calibration manifest: {error}") from error
    tensors = manifest.get("tensors") if isinstance(manifest, dict) else None
    if not isinstance(tensors, dict) or manifest.get("format") != FORMAT or not isinstance(tensors.get("sha256"), str) \
            or isinstance(manifest.get("count"), bool) or not isinstance(manifest.get("count"), int):
        raise CalibrationError(f"{manifest_path}: not a roadseg calibration manifest")
    try:  # the tensors it names must lie beside it
        tensors_path = resolve_inside(out_dir, tensors.get("file"), f"{manifest_path} tensors.file")
    except ArtifactError as error:
        raise CalibrationError(str(error)) from error
    if not tensors_path.is_file() or sha256_file(tensors_path) != tensors["sha256"]:
        raise CalibrationError(f"{tensors_path}: calibration tensors missing or changed since the manifest")
    return CalibrationSet(manifest_path, tensors_path, sha256_bytes(manifest_bytes), manifest["count"])
