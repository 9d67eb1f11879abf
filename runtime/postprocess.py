"""Model logits -> road mask at the source resolution, and the views drawn from it."""

from __future__ import annotations

import cv2
import numpy as np

from runtime.preprocess import road_probability

ROAD_COLOR_BGR = (255, 0, 255)  # KITTI's own magenta for road


class MaskPostprocessor:
    """Argmax at model resolution (cheap), then a nearest-neighbour resize of the 8-bit mask.

    Buffers are allocated on the first frame of a given source size and reused after that.
    """

    def __init__(self, road_index: int = 1) -> None:
        self.road_index = road_index
        self._model_mask: np.ndarray | None = None
        self._source_mask: np.ndarray | None = None

    def __call__(self, logits: np.ndarray, source_hw: tuple[int, int]) -> np.ndarray:
        """C x H x W logits, or the H x W uint8 mask of a model with in-graph argmax, -> H_src x W_src uint8
        mask (1 = road)."""
        model_mask = logits if logits.ndim == 2 and logits.dtype == np.uint8 else self._argmax(logits)
        height, width = source_hw
        if self._source_mask is None or self._source_mask.shape != (height, width):
            self._source_mask = np.empty((height, width), np.uint8)
        cv2.resize(model_mask, (width, height), dst=self._source_mask, interpolation=cv2.INTER_NEAREST)
        return self._source_mask

    def _argmax(self, logits: np.ndarray) -> np.ndarray:
        other = 1 - self.road_index
        if self._model_mask is None or self._model_mask.shape != logits.shape[1:]:
            self._model_mask = np.empty(logits.shape[1:], np.uint8)
        if logits.shape[0] == 2:
            np.greater(logits[self.road_index], logits[other], out=self._model_mask, casting="unsafe")
        else:
            np.equal(logits.argmax(axis=0), self.road_index, out=self._model_mask, casting="unsafe")
        return self._model_mask


def road_mask(logits: np.ndarray, source_hw: tuple[int, int], road_index: int = 1) -> np.ndarray:
    """One-shot form of MaskPostprocessor, for evaluation and tests: a fresh boolean mask."""
    return MaskPostprocessor(road_index)(logits, source_hw).astype(bool)


def road_confidence(logits: np.ndarray, source_hw: tuple[int, int], road_index: int = 1) -> np.ndarray:
    """Road probability resized bilinearly to the source size: what KITTI's MaxF/AP are computed on."""
    probability = road_probability(logits, road_index)
    height, width = source_hw
    return np.clip(cv2.resize(probability, (width, height), interpolation=cv2.INTER_LINEAR), 0.0, 1.0)
