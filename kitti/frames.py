"""Frames chosen from KITTI for calibration and the export's parity gate: spread over the categories and over each
category's run of frames, since neighbouring KITTI frames are near-duplicates."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kitti.data import CATEGORIES, find_samples, split_samples


def evenly_spaced(items: list, count: int) -> list:
    """`count` items spread over the whole list (neighbouring KITTI frames are near-duplicates)."""
    if count >= len(items):
        return list(items)
    positions = np.linspace(0, len(items) - 1, count)
    return [items[int(round(p))] for p in positions]


def stratified_quota(available: dict[str, int], size: int) -> dict[str, int]:
    """Split `size` as evenly as availability allows (water-filling: a category that runs out passes its share on);
    the units an even split cannot place go one each to the open categories in their given order (um, umm, uu)."""
    quota = dict.fromkeys(available, 0)
    remaining = min(size, sum(max(0, count) for count in available.values()))
    while remaining > 0:
        open_categories = [c for c in available if quota[c] < available[c]]
        share = remaining // len(open_categories)
        if share == 0:
            for category in open_categories[:remaining]:
                quota[category] += 1
            break
        for category in open_categories:
            take = min(share, available[category] - quota[category])
            quota[category] += take
            remaining -= take
    return quota


def select_kitti_frames(kitti_dir: str | Path, size: int, split: str = "train") -> list[tuple[str, Path]]:
    """(category, image path) pairs, stratified across um/umm/uu, from the KITTI split given."""
    samples = split_samples(find_samples(kitti_dir), split)
    by_category = {c: [s for s in samples if s.category == c] for c in CATEGORIES}
    quota = stratified_quota({c: len(v) for c, v in by_category.items()}, size)
    chosen = []
    for category in CATEGORIES:
        chosen += [(category, s.image_path) for s in evenly_spaced(by_category[category], quota[category])]
    return chosen
