"""KITTI Road reading, the split, augmentation and bad data."""

import cv2
import numpy as np
import pytest
from conftest import KITTI_DIR, needs_kitti

from kitti.data import DataError, find_samples, read_ground_truth, split_samples, write_synthetic_kitti
from runtime.contract import PreprocessSpec
from train.dataset import IGNORE_INDEX, Augment, RoadDataset, load_kitti_arrays


@needs_kitti
def test_real_layout_pairs_images_with_road_masks_not_lane_masks():
    samples = find_samples(KITTI_DIR)
    assert len(samples) == 229
    assert all("_road_" in s.gt_path.name for s in samples)
    assert {s.category for s in samples} == {"um", "umm", "uu"}


@needs_kitti
def test_split_is_deterministic_stratified_contiguous_and_disjoint():
    samples = find_samples(KITTI_DIR)
    train, val = split_samples(samples, "train"), split_samples(samples, "val")
    assert split_samples(samples, "val") == val
    assert not {s.name for s in train} & {s.name for s in val}
    assert len(train) + len(val) == len(samples)
    for category in ("um", "umm", "uu"):
        indices = sorted(int(s.name.split("_")[1]) for s in val if s.category == category)
        members = sorted(int(s.name.split("_")[1]) for s in samples if s.category == category)
        assert 0.15 <= len(indices) / len(members) <= 0.25
        assert indices == members[-len(indices):]  # one contiguous block at the end


@needs_kitti
def test_devkit_ground_truth_definitions_on_real_masks():
    sample = find_samples(KITTI_DIR)[0]
    road, valid = read_ground_truth(sample.gt_path)
    gt = cv2.imread(str(sample.gt_path))
    assert np.array_equal(road, gt[:, :, 0] > 0) and np.array_equal(valid, gt[:, :, 2] > 0)
    assert road.any() and (~road & valid).any()


def test_stray_blue_pixels_are_road_but_invalid(tmp_path):
    gt = np.zeros((2, 3, 3), np.uint8)
    gt[0, 0] = (255, 0, 255)  # magenta: road, valid
    gt[0, 1] = (0, 0, 255)  # red (BGR): not road, valid
    gt[0, 2] = (255, 0, 0)  # blue (BGR): a stray annotation pixel
    path = tmp_path / "gt.png"
    cv2.imwrite(str(path), gt)
    road, valid = read_ground_truth(path)
    assert road[0].tolist() == [True, False, True] and valid[0].tolist() == [True, True, False]


def test_missing_folder_missing_ground_truth_corrupt_png_and_size_mismatch(tmp_path):
    with pytest.raises(DataError, match="data folder not found"):
        find_samples(tmp_path / "nope")
    root = write_synthetic_kitti(tmp_path / "k", per_category=1)
    gt_dir = root / "training" / "gt_image_2"
    (gt_dir / "uu_road_000000.png").unlink()
    with pytest.raises(DataError, match="uu_000000.png: no ground truth"):
        find_samples(root)
    root = write_synthetic_kitti(tmp_path / "k2", per_category=1)
    image = root / "training" / "image_2" / "um_000000.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match="um_000000.png: cannot decode"):
        load_kitti_arrays(find_samples(root))
    root = write_synthetic_kitti(tmp_path / "k3", per_category=1)
    gt = root / "training" / "gt_image_2" / "umm_road_000000.png"
    cv2.imwrite(str(gt), np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(DataError, match="umm_road_000000.png: ground truth is 10x10"):
        load_kitti_arrays(find_samples(root))


def test_empty_split_is_an_error(tmp_path):
    root = write_synthetic_kitti(tmp_path / "k", per_category=1)
    with pytest.raises(DataError, match="split 'val' is empty"):
        split_samples(find_samples(root), "val")


def test_augmentation_is_seeded_and_keeps_labels_aligned(synthetic_kitti):
    images, labels = load_kitti_arrays(find_samples(synthetic_kitti))
    spec = PreprocessSpec(64, 192)
    dataset = RoadDataset(images, labels, spec, Augment(), seed=3)
    first, again = dataset[1], dataset[1]
    assert torch_equal(first, again)
    dataset.set_epoch(1)
    assert not torch_equal(first, dataset[1])
    image, label = first
    assert image.shape == (3, 64, 192) and label.shape == (64, 192)
    assert set(np.unique(label.numpy())) <= {0, 1, IGNORE_INDEX}
    plain = RoadDataset(images, labels, spec, None)[1][1].numpy()
    expected = cv2.resize(labels[1], (192, 64), interpolation=cv2.INTER_NEAREST)
    assert np.array_equal(plain, expected)


def torch_equal(a, b) -> bool:
    return all(np.array_equal(x.numpy(), y.numpy()) for x, y in zip(a, b, strict=True))
