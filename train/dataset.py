"""Training samples from KITTI: labels with the devkit's ignore value, seeded augmentation, a torch Dataset."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from kitti.data import KittiSample, read_ground_truth, read_image
from runtime.contract import PreprocessSpec
from runtime.preprocess import normalize_rgb

IGNORE_INDEX = 255


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
