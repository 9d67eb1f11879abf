"""The KITTI devkit metrics against cases computed by hand."""

import numpy as np
import pytest

from kitti.metrics import RoadMetricAccumulator, pascal_voc_ap


def accumulate(confidence, road, valid=None, predicted=None) -> dict:
    accumulator = RoadMetricAccumulator()
    confidence = np.asarray(confidence, np.float64)[None, :]
    road = np.asarray(road, bool)[None, :]
    valid = np.ones_like(road) if valid is None else np.asarray(valid, bool)[None, :]
    accumulator.add(confidence, road, valid, None if predicted is None else np.asarray(predicted, bool)[None, :])
    return accumulator.summary()


def test_perfect_prediction_scores_one():
    result = accumulate([1.0, 1.0, 0.0, 0.0], [1, 1, 0, 0])
    assert result["maxf"] == 1.0 and result["ap"] == 1.0 and result["iou"] == 1.0
    assert result["precision"] == 1.0 and result["recall"] == 1.0


def test_hand_computed_four_pixels():
    # Road pixels at 0.9 and 0.4, non-road at 0.6 and 0.1. For 0.1 < t <= 0.4 the prediction is
    # {0.9, 0.4, 0.6}: TP 2, FP 1 -> P 2/3, R 1, F 0.8, the best over all thresholds.
    result = accumulate([0.9, 0.4, 0.6, 0.1], [1, 1, 0, 0])
    assert result["maxf"] == pytest.approx(0.8)
    assert result["precision"] == pytest.approx(2 / 3)
    assert result["recall"] == pytest.approx(1.0)
    # 11-point AP: precision 1 is reached up to recall 0.5 (6 points), 2/3 from 0.6 to 1.0 (5 points).
    assert result["ap"] == pytest.approx((6 * 1.0 + 5 * 2 / 3) / 11)
    # IoU at the argmax (confidence > 0.5): predicted {0.9, 0.6}, road {0.9, 0.4}: 1 / 3.
    assert result["iou"] == pytest.approx(1 / 3)


def test_pixels_outside_the_valid_area_do_not_count():
    with_invalid = accumulate([0.9, 0.4, 0.6, 0.1, 1.0, 0.0], [1, 1, 0, 0, 0, 1], valid=[1, 1, 1, 1, 0, 0])
    assert with_invalid == accumulate([0.9, 0.4, 0.6, 0.1], [1, 1, 0, 0])


def test_counts_are_summed_over_images_before_metrics():
    rng = np.random.default_rng(0)
    parts = [(rng.random((7, 9)), rng.random((7, 9)) > 0.6, rng.random((7, 9)) > 0.2) for _ in range(3)]
    per_image = RoadMetricAccumulator()
    for confidence, road, valid in parts:
        per_image.add(confidence, road, valid)
    pooled = RoadMetricAccumulator()
    pooled.add(*(np.concatenate([p[i] for p in parts], axis=1) for i in range(3)))
    summary, pooled_summary = per_image.summary(), pooled.summary()
    assert summary.pop("images") == 3 and pooled_summary.pop("images") == 1
    assert summary == pytest.approx(pooled_summary)
    # ... which differs from averaging per-image MaxF, the mistake this guards against.
    singles = []
    for confidence, road, valid in parts:
        single = RoadMetricAccumulator()
        single.add(confidence, road, valid)
        singles.append(single.summary()["maxf"])
    assert abs(np.mean(singles) - summary["maxf"]) > 1e-6


def test_threshold_is_inclusive_at_k_over_255():
    # Road at exactly 128/255, non-road at 127/255: only t = 128/255 separates them, so it must count
    # confidence >= t as road.
    result = accumulate([128 / 255, 127 / 255], [1, 0])
    assert result["maxf"] == 1.0 and result["threshold"] == pytest.approx(128 / 255)


def test_iou_uses_given_argmax_mask():
    result = accumulate([0.9, 0.9], [1, 0], predicted=[1, 1])
    assert result["iou"] == pytest.approx(0.5)


def test_t_zero_calls_everything_road_and_no_road_scores_zero():
    # At t = 0 every pixel is road: TP 1, FP 1 -> F 2/3 even for a confidently wrong model.
    assert accumulate([0.0, 0.9], [1, 0])["maxf"] == pytest.approx(2 / 3)
    assert accumulate([0.2, 0.9], [0, 0])["maxf"] == 0.0


def test_no_images_is_an_error():
    with pytest.raises(ValueError, match="no images"):
        RoadMetricAccumulator().summary()


def test_size_mismatch_is_reported():
    with pytest.raises(ValueError, match="differ in size"):
        RoadMetricAccumulator().add(np.zeros((2, 2)), np.zeros((2, 3), bool), np.zeros((2, 3), bool))


def test_voc_ap_eleven_points():
    assert pascal_voc_ap(np.array([1.0, 0.5]), np.array([0.5, 1.0])) == pytest.approx((6 + 5 * 0.5) / 11)
