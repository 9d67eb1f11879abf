"""Training-recipe options for small data from scratch: losses closer to MaxF, EMA weights, cosine schedule,
stronger augmentation. Each is off by default (the shipped recipe); docs/training.md records what each did.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from runtime.preprocess import normalize_rgb
from train.dataset import IGNORE_INDEX, Augment, RoadDataset, augment

LOSSES = ("ce", "ce+dice", "ce+lovasz")
SCHEDULES = ("poly", "cosine")
AUGMENTS = ("default", "strong")


def soft_dice_loss(logits: torch.Tensor, labels: torch.Tensor, road_index: int = 1) -> float:
    """1 - soft Dice of the road class over the batch's valid pixels (ignore label excluded)."""
    valid = labels != IGNORE_INDEX
    road_probability = torch.softmax(logits.float(), dim=1)[:, road_index][valid]
    road = (labels[valid] == road_index).float()
    intersection = (road_probability * road).sum()
    return 1 - (2 * intersection + 1) / (road_probability.sum() + road.sum() + 1)


def lovasz_hinge_loss(logits: torch.Tensor, labels: torch.Tensor, road_index: int = 1) -> torch.Tensor:
    """Lovasz hinge (Berman et al. 2018) on the road-vs-rest margin, over the batch's valid pixels."""
    valid = labels != IGNORE_INDEX
    logits = logits.float()
    margin = (logits[:, road_index] - logits[:, 1 - road_index])[valid]
    road = (labels[valid] == road_index).float()
    if road.numel() == 0:
        return margin.sum() * 0
    signs = 2 * road - 1
    errors = 1 - margin * signs
    errors_sorted, order = torch.sort(errors, descending=True)
    gt_sorted = road[order]
    positives = gt_sorted.sum()
    intersection = positives - gt_sorted.cumsum(0)
    union = positives + (1 - gt_sorted).cumsum(0)
    jaccard = 1 - intersection / union
    jaccard[1:] = jaccard[1:] - jaccard[:-1]
    return torch.dot(F.relu(errors_sorted), jaccard)


def make_criterion(name: str):
    """loss(logits, labels) for --loss ce | ce+dice | ce+lovasz."""
    if name not in LOSSES:
        raise ValueError(f"--loss {name}: expected one of {', '.join(LOSSES)}")
    cross_entropy = torch.nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)
    if name == "ce":
        return cross_entropy
    extra = soft_dice_loss if name == "ce+dice" else lovasz_hinge_loss

    def criterion(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return cross_entropy(logits, labels) + 0.5 * extra(logits, labels)

    return criterion


def cosine_lambda(total_steps: int, warmup_steps: int):
    """Linear warm-up, then cosine decay to zero (the alternative to FCN's poly decay)."""

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return 0.1 + 0.9 * step / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.5 * (1 + math.cos(math.pi * progress))

    return factor


class WeightEma:
    """An exponential moving average of the weights (and BatchNorm statistics), evaluated in their place.

    The decay warms up as min(decay, (1 + n) / (10 + n)) so early, fast-changing weights do not linger.
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.state = {k: v.detach().clone().float() if v.is_floating_point() else v.detach().clone()
                      for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for key, value in model.state_dict().items():
            if value.is_floating_point():
                self.state[key].mul_(decay).add_(value.detach().float(), alpha=1 - decay)
            else:
                self.state[key].copy_(value)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "state": self.state}

    def load_state_dict(self, payload: dict) -> None:
        self.decay, self.updates, self.state = payload["decay"], payload["updates"], payload["state"]

    def swapped_into(self, model: torch.nn.Module) -> dict:
        """Load the averaged weights into `model`; returns the live weights to put back afterwards."""
        live = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.state)
        return live


STRONG = Augment(scale_min=0.6, scale_max=1.6, brightness=0.4, contrast=0.4, saturation=0.4, hue_degrees=10.0)


def random_shadows(image_rgb: np.ndarray, rng: np.random.Generator, probability: float = 0.5) -> np.ndarray:
    """Darken 1-3 random soft-edged polygons (tree and building shadows, KITTI's hardest lighting)."""
    if rng.random() >= probability:
        return image_rgb
    height, width = image_rgb.shape[:2]
    shade = np.ones((height, width), np.float32)
    for _ in range(int(rng.integers(1, 4))):
        points = np.stack([rng.uniform(-0.2, 1.2, 5) * width, rng.uniform(0.2, 1.2, 5) * height], 1)
        polygon = np.zeros((height, width), np.uint8)
        cv2.fillPoly(polygon, [cv2.convexHull(points.astype(np.int32))], 1)
        shade[polygon > 0] *= rng.uniform(0.35, 0.75)
    shade = cv2.GaussianBlur(shade, (0, 0), sigmaX=max(1.0, width / 200))
    return np.clip(image_rgb.astype(np.float32) * shade[..., None], 0, 255).astype(np.uint8)


class StrongRoadDataset(RoadDataset):
    """RoadDataset with wider scale/crop and colour ranges plus random shadows."""

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng((self.seed, self.epoch, index))
        image, label = augment(self.images_rgb[index], self.labels[index], self.spec.size_hw,
                               self.augment_params, rng)
        image = random_shadows(image, rng)
        return torch.from_numpy(normalize_rgb(image, self.spec)), torch.from_numpy(label.astype(np.int64))
