"""KITTI Road metrics as the devkit defines them, in perspective space.

Counts are accumulated over all images first (never averaged per image); MaxF, AP, precision and recall
come from the totals. Only pixels inside the valid area count, at the image's native resolution.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

NUM_THRESHOLDS = 256
THRESHOLDS = np.arange(NUM_THRESHOLDS, dtype=np.float64) / (NUM_THRESHOLDS - 1)


@dataclass
class RoadMetricAccumulator:
    """Sums the devkit's FN(t) and FP(t) over images, for thresholds t = k/255, plus argmax IoU counts."""

    false_negatives: np.ndarray = field(default_factory=lambda: np.zeros(NUM_THRESHOLDS, np.int64))
    false_positives: np.ndarray = field(default_factory=lambda: np.zeros(NUM_THRESHOLDS, np.int64))
    positives: int = 0
    negatives: int = 0
    iou_intersection: int = 0
    iou_union: int = 0
    images: int = 0

    def add(self, road_confidence: np.ndarray, gt_road: np.ndarray, gt_valid: np.ndarray,
            predicted_road: np.ndarray | None = None) -> None:
        """Add one image: road confidence in [0, 1] and boolean road / valid masks, all of one size.

        IoU is scored on `predicted_road` (the argmax mask the runtime shows) when given, else confidence > 0.5.
        """
        if road_confidence.shape != gt_road.shape or gt_road.shape != gt_valid.shape:
            raise ValueError(
                f"prediction {road_confidence.shape} and ground truth {gt_road.shape} differ in size"
            )
        confidence = road_confidence[gt_valid].astype(np.float64)
        is_road = gt_road[gt_valid]
        # Number of thresholds t_k <= confidence, i.e. how many thresholds call this pixel road.
        above = np.searchsorted(THRESHOLDS, confidence, side="right")
        road_hist = np.bincount(above[is_road], minlength=NUM_THRESHOLDS + 1)
        nonroad_hist = np.bincount(above[~is_road], minlength=NUM_THRESHOLDS + 1)
        # FN(t_k): road pixels with confidence < t_k  <=>  above <= k.
        self.false_negatives += np.cumsum(road_hist)[:NUM_THRESHOLDS]
        # FP(t_k): non-road pixels with confidence >= t_k  <=>  above > k.
        nonroad_at_or_below = np.cumsum(nonroad_hist)[:NUM_THRESHOLDS]
        self.false_positives += int(nonroad_hist.sum()) - nonroad_at_or_below
        self.positives += int(is_road.sum())
        self.negatives += int((~is_road).sum())
        predicted_road = confidence > 0.5 if predicted_road is None else predicted_road[gt_valid]
        self.iou_intersection += int((predicted_road & is_road).sum())
        self.iou_union += int((predicted_road | is_road).sum())
        self.images += 1

    def merge(self, other: RoadMetricAccumulator) -> None:
        self.false_negatives += other.false_negatives
        self.false_positives += other.false_positives
        self.positives += other.positives
        self.negatives += other.negatives
        self.iou_intersection += other.iou_intersection
        self.iou_union += other.iou_union
        self.images += other.images

    def pr_curve(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Precision, recall and threshold where either is non-zero (i.e. some true positive)."""
        true_positives = self.positives - self.false_negatives
        keep = true_positives > 0
        precision = true_positives[keep] / (true_positives[keep] + self.false_positives[keep])
        recall = true_positives[keep] / self.positives
        return precision, recall, THRESHOLDS[keep]

    def summary(self) -> dict[str, float | int]:
        if self.images == 0:
            raise ValueError("no images were evaluated")
        precision, recall, thresholds = self.pr_curve()
        iou = self.iou_intersection / self.iou_union if self.iou_union else 0.0
        if precision.size == 0:
            return {"maxf": 0.0, "ap": 0.0, "precision": 0.0, "recall": 0.0, "iou": iou,
                    "threshold": 0.0, "images": self.images}
        fmeasure = 2 * precision * recall / (precision + recall)
        best = int(np.argmax(fmeasure))
        return {
            "maxf": float(fmeasure[best]),
            "ap": pascal_voc_ap(precision, recall),
            "precision": float(precision[best]),
            "recall": float(recall[best]),
            "iou": float(iou),
            "threshold": float(thresholds[best]),
            "images": self.images,
        }


def pascal_voc_ap(precision: np.ndarray, recall: np.ndarray) -> float:
    """11-point VOC AP: mean over r in 0, 0.1, ..., 1 of the best precision at recall >= r."""
    total = 0.0
    for level in np.linspace(0.0, 1.0, 11):
        reached = precision[recall >= level]
        total += float(reached.max()) if reached.size else 0.0
    return total / 11.0
