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
    # Seconds, not minutes: for tests and `make pipeline`'s reduced chain.
    "smoke": {"width": 0.125, "input_size": (96, 320), "epochs": 2, "batch_size": 2, "lr": 1e-3,
              "weight_decay": 1e-4, "warmup_epochs": 0.0, "pretrained": "no", "device": "cpu"},
}
