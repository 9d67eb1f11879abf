"""Default locations, relative to the repository root: the dev data beside the checkout and the shipped model."""

DEFAULT_KITTI_DIR = "../shared/data/kitti_road"
DEFAULT_VIDEO = "../shared/data/kitti_raw/2011_09_26_drive_0001_image_02.mp4"
SHIPPED_CHECKPOINT = "models/fcn8s_efficientnet_lite0.pt"
