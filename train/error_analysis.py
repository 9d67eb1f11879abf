"""Error analysis on KITTI Road: per-image scores, bootstrap spread, worst-image overlays and a contact sheet.

Overlay colours (BGR): true positive road green, false positive (road predicted on non-road) red, false
negative (road missed) blue; pixels outside the ground truth's valid area are left as they are.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from kitti.data import read_ground_truth, read_image
from kitti.evaluate import ImageScore, predict_sample
from kitti.metrics import RoadMetricAccumulator
from runtime.ioutil import atomic_write_bytes

TRUE_POSITIVE_BGR = (0, 200, 0)
FALSE_POSITIVE_BGR = (0, 0, 255)
FALSE_NEGATIVE_BGR = (255, 80, 0)
SHEET_TILE_WIDTH = 620


def bootstrap_spread(scores: list[ImageScore], resamples: int = 200, seed: int = 0) -> dict[str, float]:
    """Std of MaxF/AP/IoU over image resamples (with replacement): how much the figure moves with the images."""
    if len(scores) < 2:
        return {}
    rng = np.random.default_rng(seed)
    values: dict[str, list[float]] = {"maxf": [], "ap": [], "iou": []}
    for _ in range(resamples):
        total = RoadMetricAccumulator()
        for index in rng.integers(0, len(scores), len(scores)):
            total.merge(scores[index].accumulator)
        summary = total.summary()
        for key in values:
            values[key].append(summary[key])
    return {f"{key}_std": float(np.std(series)) for key, series in values.items()}


def overlay_errors(image_bgr: np.ndarray, predicted_road: np.ndarray, gt_road: np.ndarray,
                   gt_valid: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """The image with TP / FP / FN tinted in their colours inside the valid area."""
    tint = image_bgr.copy()
    for mask, colour in ((predicted_road & gt_road, TRUE_POSITIVE_BGR),
                         (predicted_road & ~gt_road, FALSE_POSITIVE_BGR),
                         (~predicted_road & gt_road, FALSE_NEGATIVE_BGR)):
        tint[mask & gt_valid] = colour
    return cv2.addWeighted(tint, alpha, image_bgr, 1 - alpha, 0)


def caption(tile: np.ndarray, text: str) -> np.ndarray:
    band = np.full((28, tile.shape[1], 3), 255, np.uint8)
    cv2.putText(band, text, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([band, tile])


def legend(width: int) -> np.ndarray:
    band = np.full((30, width, 3), 255, np.uint8)
    x = 8
    for name, colour in (("true positive", TRUE_POSITIVE_BGR), ("false positive", FALSE_POSITIVE_BGR),
                         ("false negative", FALSE_NEGATIVE_BGR)):
        cv2.rectangle(band, (x, 8), (x + 16, 24), colour, -1)
        cv2.putText(band, name, (x + 22, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
        x += 190
    return band


def write_png(path: Path, image: np.ndarray) -> None:
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise OSError(f"{path}: PNG encoding failed")
    atomic_write_bytes(path, encoded.tobytes())


def write_worst(predictor, scores: list[ImageScore], count: int, out_dir: str | Path) -> Path:
    """The `count` lowest-F1 images as overlays in out_dir, a contact sheet and worst.json; returns the sheet."""
    from runtime.preprocess import FramePreprocessor

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    preprocessor = FramePreprocessor(predictor.spec)
    worst = sorted(scores, key=lambda score: score.f1)[:count]
    tiles, listing = [], []
    for rank, score in enumerate(worst, 1):
        image = read_image(score.sample.image_path)
        gt_road, gt_valid = read_ground_truth(score.sample.gt_path, image.shape)
        _, predicted = predict_sample(predictor, preprocessor, image)
        overlay = overlay_errors(image, predicted, gt_road, gt_valid)
        write_png(out_dir / f"{rank:02d}_{score.sample.name}.png", overlay)
        a = score.accumulator
        false_positives = int((predicted & ~gt_road & gt_valid).sum())
        false_negatives = int((~predicted & gt_road & gt_valid).sum())
        listing.append({"rank": rank, "image": score.sample.name, "f1": score.f1,
                        "iou": a.iou_intersection / a.iou_union if a.iou_union else 1.0,
                        "false_positive_px": false_positives, "false_negative_px": false_negatives})
        height = round(overlay.shape[0] * SHEET_TILE_WIDTH / overlay.shape[1])
        tile = cv2.resize(overlay, (SHEET_TILE_WIDTH, height), interpolation=cv2.INTER_AREA)
        tiles.append(caption(tile, f"#{rank} {score.sample.name}  F1 {score.f1 * 100:.1f}  "
                                   f"FP {false_positives}  FN {false_negatives} px"))
    sheet = contact_sheet(tiles)
    sheet_path = out_dir / "contact_sheet.png"
    write_png(sheet_path, sheet)
    atomic_write_bytes(out_dir / "worst.json", (json.dumps(listing, indent=1) + "\n").encode())
    return sheet_path


def contact_sheet(tiles: list[np.ndarray], columns: int = 2) -> np.ndarray:
    """Tiles in a grid (padded to a common height), with the colour legend on top."""
    if not tiles:
        raise ValueError("no images for the contact sheet")
    height = max(tile.shape[0] for tile in tiles)
    padded = [np.vstack([t, np.full((height - t.shape[0], t.shape[1], 3), 255, np.uint8)]) for t in tiles]
    blank = np.full_like(padded[0], 255)
    rows = []
    for start in range(0, len(padded), columns):
        row = padded[start : start + columns]
        row += [blank] * (columns - len(row))
        rows.append(np.hstack(row))
    grid = np.vstack(rows)
    return np.vstack([legend(grid.shape[1]), grid])
