"""The KITTI Road evaluator: scores any predictor (PyTorch, ONNX Runtime, OpenVINO, TensorRT) over samples.

A predictor is anything with `spec` (the preprocessing contract) and `infer(batch) -> logits`, as the runtime's
backends and train.torch_predictor.TorchPredictor are; this module never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from kitti.data import CATEGORIES, DataError, KittiSample, read_ground_truth, read_image
from kitti.metrics import RoadMetricAccumulator
from runtime.postprocess import road_confidence, road_mask
from runtime.preprocess import FramePreprocessor


@dataclass
class ImageScore:
    sample: KittiSample
    accumulator: RoadMetricAccumulator

    @property
    def f1(self) -> float:
        """F-measure of the argmax mask the runtime shows: 2 TP / (2 TP + FP + FN) = 2I / (I + U)."""
        a = self.accumulator
        total = a.iou_intersection + a.iou_union
        return 2 * a.iou_intersection / total if total else 1.0


def predict_sample(predictor, preprocessor: FramePreprocessor, image_bgr: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(road confidence at native size, argmax road mask at native size) for one BGR image."""
    logits = predictor.infer(preprocessor(image_bgr))[0]
    native_hw = image_bgr.shape[:2]
    road_index = predictor.spec.road_index
    return road_confidence(logits, native_hw, road_index), road_mask(logits, native_hw, road_index)


def evaluate_samples(predictor, samples: list[KittiSample], progress: bool = True,
                     description: str = "eval", per_image: list[ImageScore] | None = None) -> dict:
    """Devkit metrics over all samples, and per category; counts are summed before metrics are taken.

    `per_image`, when given, receives one ImageScore per sample (for error analysis and the bootstrap spread).
    """
    if not samples:
        raise DataError("no images to evaluate")
    preprocessor = FramePreprocessor(predictor.spec)
    per_category = {category: RoadMetricAccumulator() for category in CATEGORIES}
    for sample in tqdm(samples, desc=description, disable=not progress, leave=False):
        image = read_image(sample.image_path)
        gt_road, gt_valid = read_ground_truth(sample.gt_path, image.shape)
        confidence, mask = predict_sample(predictor, preprocessor, image)
        if per_image is None:
            per_category[sample.category].add(confidence, gt_road, gt_valid, mask)
            continue
        single = RoadMetricAccumulator()
        single.add(confidence, gt_road, gt_valid, mask)
        per_category[sample.category].merge(single)
        per_image.append(ImageScore(sample, single))
    total = RoadMetricAccumulator()
    for accumulator in per_category.values():
        total.merge(accumulator)
    result = total.summary()
    result["per_category"] = {c: a.summary() for c, a in per_category.items() if a.images}
    result["_accumulator"] = total
    return result


def public_result(result: dict) -> dict:
    return {key: value for key, value in result.items() if not key.startswith("_")}
