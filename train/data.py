"""KITTI Road reading, the deterministic train/val split, augmentation, and a procedural road generator."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from runtime.contract import PreprocessSpec
from runtime.preprocess import normalize_rgb

CATEGORIES = ("um", "umm", "uu")
IGNORE_INDEX = 255
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


def training_label(road: np.ndarray, valid: np.ndarray) -> np.ndarray:
    label = road.astype(np.uint8)
    label[~valid] = IGNORE_INDEX
    return label


@dataclass(frozen=True)
class Augment:
    """Random scale and crop, horizontal flip and photometric jitter, seeded per (seed, epoch, sample)."""

    scale_min: float = 0.8
    scale_max: float = 1.25
    flip: bool = True
    brightness: float = 0.25
    contrast: float = 0.25
    saturation: float = 0.25
    hue_degrees: float = 6.0


def augment(image_rgb: np.ndarray, label: np.ndarray, size_hw: tuple[int, int], params: Augment | None,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Resize to the model's size (times a random scale), crop or pad to it, flip and jitter colours."""
    height, width = size_hw
    scale = rng.uniform(params.scale_min, params.scale_max) if params else 1.0
    scaled_h, scaled_w = max(1, round(height * scale)), max(1, round(width * scale))
    image_rgb = cv2.resize(image_rgb, (scaled_w, scaled_h), interpolation=cv2.INTER_LINEAR)
    label = cv2.resize(label, (scaled_w, scaled_h), interpolation=cv2.INTER_NEAREST)
    if scaled_h < height or scaled_w < width:
        pad_h, pad_w = max(0, height - scaled_h), max(0, width - scaled_w)
        image_rgb = cv2.copyMakeBorder(image_rgb, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=0)
        label = cv2.copyMakeBorder(label, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=IGNORE_INDEX)
    top = int(rng.integers(0, image_rgb.shape[0] - height + 1))
    left = int(rng.integers(0, image_rgb.shape[1] - width + 1))
    image_rgb = image_rgb[top : top + height, left : left + width]
    label = label[top : top + height, left : left + width]
    if params is None:
        return np.ascontiguousarray(image_rgb), np.ascontiguousarray(label)
    if params.flip and rng.random() < 0.5:
        image_rgb, label = image_rgb[:, ::-1], label[:, ::-1]
    return photometric_jitter(np.ascontiguousarray(image_rgb), params, rng), np.ascontiguousarray(label)


def photometric_jitter(image_rgb: np.ndarray, params: Augment, rng: np.random.Generator) -> np.ndarray:
    hsv = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-params.hue_degrees, params.hue_degrees) / 2) % 180
    hsv[..., 1] *= rng.uniform(1 - params.saturation, 1 + params.saturation)
    image = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)
    image *= rng.uniform(1 - params.brightness, 1 + params.brightness)
    mean = image.mean()
    image = (image - mean) * rng.uniform(1 - params.contrast, 1 + params.contrast) + mean
    return np.clip(image, 0, 255).astype(np.uint8)


class RoadDataset(Dataset):
    """(image tensor, label tensor) pairs at the model's input size; images are decoded once and kept."""

    def __init__(self, images_rgb: list[np.ndarray], labels: list[np.ndarray], spec: PreprocessSpec,
                 augment_params: Augment | None, seed: int = 0) -> None:
        self.images_rgb = images_rgb
        self.labels = labels
        self.spec = spec
        self.augment_params = augment_params
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.images_rgb)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        # The augmentation depends only on (seed, epoch, index): workers, ranks and resumes all agree.
        rng = np.random.default_rng((self.seed, self.epoch, index))
        image, label = augment(self.images_rgb[index], self.labels[index], self.spec.size_hw,
                               self.augment_params, rng)
        return torch.from_numpy(normalize_rgb(image, self.spec)), torch.from_numpy(label.astype(np.int64))


def load_kitti_arrays(samples: list[KittiSample]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    images, labels = [], []
    for sample in samples:
        image = read_image(sample.image_path)
        road, valid = read_ground_truth(sample.gt_path, image.shape)
        images.append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
        labels.append(training_label(road, valid))
    return images, labels


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
