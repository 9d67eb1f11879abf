"""KITTI Road: finding and reading samples, the deterministic train/val split, and a procedural road generator."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

CATEGORIES = ("um", "umm", "uu")
IMAGE_PATTERN = re.compile(r"^(um|umm|uu)_(\d{6})\.png$")


class DataError(ValueError):
    """Bad or missing data; the message names the file."""


@dataclass(frozen=True)
class KittiSample:
    name: str  # e.g. "um_000012"
    category: str
    image_path: Path
    gt_path: Path


def find_samples(kitti_dir: str | Path) -> list[KittiSample]:
    """Pair each training/image_2/{cat}_{idx}.png with gt_image_2/{cat}_road_{idx}.png (lane masks ignored)."""
    root = Path(kitti_dir)
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found")
    # Accept the dataset root, its training/ folder, or a folder holding image_2/ directly.
    for base in (root / "training", root):
        if (base / "image_2").is_dir():
            break
    else:
        raise DataError(f"{root}: no image_2/ folder (expected the KITTI Road layout training/image_2)")
    samples = []
    for image_path in sorted((base / "image_2").iterdir()):
        match = IMAGE_PATTERN.match(image_path.name)
        if not match:
            continue
        category, index = match.groups()
        gt_path = base / "gt_image_2" / f"{category}_road_{index}.png"
        if not gt_path.is_file():
            raise DataError(f"{image_path}: no ground truth {gt_path}")
        samples.append(KittiSample(f"{category}_{index}", category, image_path, gt_path))
    if not samples:
        raise DataError(f"{base / 'image_2'}: no {{um,umm,uu}}_NNNNNN.png images")
    return samples


def split_samples(samples: list[KittiSample], split: str, val_fraction: float = 0.2) -> list[KittiSample]:
    """Deterministic split, stratified by category, val taken as one contiguous block per category.

    Neighbouring KITTI frames are near-duplicates, so a random split would leak; one block at the end of
    each category's sorted list keeps val frames away from train frames except at a single boundary.
    """
    if split == "all":
        return list(samples)
    if split not in ("train", "val"):
        raise DataError(f"--split {split}: expected all, train or val")
    chosen = []
    for category in CATEGORIES:
        members = sorted((s for s in samples if s.category == category), key=lambda s: s.name)
        n_val = int(round(len(members) * val_fraction)) if len(members) > 1 else 0
        val_members = members[len(members) - n_val :] if n_val else []
        chosen += val_members if split == "val" else members[: len(members) - n_val]
    if not chosen:
        raise DataError(f"split {split!r} is empty")
    return chosen


def read_image(path: Path) -> np.ndarray:
    """BGR uint8 image, or a DataError naming the file."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DataError(f"{path}: cannot decode image (corrupt or not an image)")
    return image


def read_ground_truth(path: Path, image_shape: tuple[int, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The devkit's definitions: road = blue channel > 0, valid = red channel > 0 (OpenCV's BGR order)."""
    gt = read_image(path)
    if image_shape is not None and gt.shape[:2] != tuple(image_shape[:2]):
        raise DataError(f"{path}: ground truth is {gt.shape[1]}x{gt.shape[0]}, "
                        f"image is {image_shape[1]}x{image_shape[0]}")
    return gt[:, :, 0] > 0, gt[:, :, 2] > 0


def synthetic_road_scene(rng: np.random.Generator, height: int = 188, width: int = 621
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A procedural road scene (BGR image, road mask, valid mask) for fast tests without a dataset.

    Sky on top, textured grass or buildings at the sides, a grey trapezoid road meeting a horizon, lane
    markings, noise, and an invalid band at the bottom like KITTI's black ground-truth areas.
    """
    horizon = int(height * rng.uniform(0.35, 0.5))
    image = np.empty((height, width, 3), np.uint8)
    image[:horizon] = rng.integers(150, 230, 3)
    image[horizon:] = rng.integers(30, 110, 3)
    ys, xs = np.mgrid[0:height, 0:width]
    centre = width * rng.uniform(0.35, 0.65)
    half_top = width * rng.uniform(0.02, 0.06)
    half_bottom = width * rng.uniform(0.3, 0.55)
    depth = np.clip((ys - horizon) / max(1, height - horizon), 0, 1)
    half = half_top + (half_bottom - half_top) * depth
    road = (ys > horizon) & (np.abs(xs - centre - (depth - 1) * width * rng.uniform(-0.1, 0.1)) < half)
    grey = rng.integers(70, 140)
    image[road] = (grey, grey, grey + rng.integers(-8, 8))
    marking = road & (np.abs(xs - centre) < 2 + 3 * depth) & ((ys // 12) % 2 == 0)
    image[marking] = 235
    noise = rng.normal(0, 8, image.shape)
    image = np.clip(image + noise, 0, 255).astype(np.uint8)
    valid = np.ones((height, width), bool)
    valid[height - int(height * rng.uniform(0.0, 0.08)) :] = False
    return image, road, valid


def write_synthetic_kitti(root: str | Path, per_category: int = 4, seed: int = 0,
                          height: int = 188, width: int = 621) -> Path:
    """Write a tiny dataset in the KITTI Road layout (images, road and lane masks, calib stubs)."""
    rng = np.random.default_rng(seed)
    base = Path(root) / "training"
    for folder in ("image_2", "gt_image_2", "calib"):
        (base / folder).mkdir(parents=True, exist_ok=True)
    for category in CATEGORIES:
        for index in range(per_category):
            image, road, valid = synthetic_road_scene(rng, height, width)
            gt = np.zeros((height, width, 3), np.uint8)
            gt[valid, 2] = 255
            gt[road & valid, 0] = 255
            name = f"{index:06d}"
            cv2.imwrite(str(base / "image_2" / f"{category}_{name}.png"), image)
            cv2.imwrite(str(base / "gt_image_2" / f"{category}_road_{name}.png"), gt)
            if category == "um":
                cv2.imwrite(str(base / "gt_image_2" / f"{category}_lane_{name}.png"), gt)
            (base / "calib" / f"{category}_{name}.txt").write_text("P2: 0 0 0 0 0 0 0 0 0 0 0 0\n")
    return Path(root)
