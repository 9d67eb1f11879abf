"""Named training configurations; every field can be overridden on the command line."""

from __future__ import annotations

CONFIGS: dict[str, dict] = {
    # The seed's setup: exact VGG16 width, ImageNet encoder, KITTI's native size padded to a multiple of 32.
    "full": {"width": 1.0, "input_size": (384, 1248), "epochs": 60, "batch_size": 4, "lr": 1e-4,
             "weight_decay": 5e-4, "warmup_epochs": 1.0, "pretrained": "auto", "device": "auto"},
    # What trains well on a 2-core CPU in half an hour: a quarter-width net at half resolution, from scratch.
    # The shipped model's recipe: a fixed schedule whose last epoch is kept, so the select block trains too and
    # the report block's figure stays honest (recipe comparisons: --keep best --select-fraction 0.15).
    "cpu": {"width": 0.25, "input_size": (192, 640), "epochs": 120, "batch_size": 4, "lr": 1e-3,
            "weight_decay": 1e-4, "warmup_epochs": 2.0, "pretrained": "no", "device": "cpu",
            "keep": "last", "select_fraction": 0.0},
    # An ImageNet-pretrained EfficientNet-Lite0 encoder fine-tuned on a 2-core CPU: the decoder learns at --lr, the
    # encoder at a tenth of it with ImageNet's BatchNorm statistics; a fixed schedule whose last epoch is kept.
    "lite0": {"arch": "fcn8s_efficientnet_lite0", "width": 1.0, "input_size": (288, 960), "epochs": 20,
              "batch_size": 4, "lr": 3e-3, "encoder_lr_scale": 0.1, "weight_decay": 1e-4, "warmup_epochs": 1.0,
              "pretrained": "auto", "device": "cpu", "keep": "last", "select_fraction": 0.0},
    # Seconds, not minutes: for tests and `make pipeline`'s reduced chain.
    "smoke": {"width": 0.125, "input_size": (96, 320), "epochs": 2, "batch_size": 2, "lr": 1e-3,
              "weight_decay": 1e-4, "warmup_epochs": 0.0, "pretrained": "no", "device": "cpu"},
}
