"""FCN-8s (Long, Shelhamer, Darrell 2015): the seed's VGG16 encoder with a width multiplier for small targets, and
an ImageNet-pretrained EfficientNet-Lite encoder for edge devices."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from runtime.contract import PreprocessSpec
from runtime.preprocess import MODEL_STRIDE
from train.efficientnet_lite import (
    HEAD_CHANNELS,
    LITE_MEAN_RGB,
    LITE_STD_RGB,
    VARIANTS,
    EfficientNetLite,
    WeightsError,
    load_imagenet_weights,
)

ARCH_NAME = "fcn8s_vgg16"
# torchvision's VGG16 layout: channel counts, "M" for a 2x2 max pool.
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
FC_CHANNELS = 4096
IMAGENET_VGG16_FILE = "vgg16-397923af.pth"
# --weights none: train the encoder from scratch.
NO_WEIGHTS = "none"


class WeightsUnavailable(RuntimeError):
    pass


def scaled(channels: int, width: float) -> int:
    return max(8, int(round(channels * width)))


def bilinear_kernel(in_channels: int, out_channels: int, size: int) -> torch.Tensor:
    """Transposed-convolution weights that perform per-channel bilinear upsampling (as in FCN's surgery)."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    grid = torch.arange(size, dtype=torch.float32)
    profile = 1 - (grid - center).abs() / factor
    kernel = profile[:, None] * profile[None, :]
    weight = torch.zeros(in_channels, out_channels, size, size)
    for channel in range(min(in_channels, out_channels)):
        weight[channel, channel] = kernel
    return weight


def padded_to_stride(logits_of, x: torch.Tensor) -> torch.Tensor:
    """`logits_of` on `x` zero-padded bottom/right to a multiple of the model stride, cropped back to x's H x W."""
    height, width = x.shape[-2:]
    pad_h = (-height) % MODEL_STRIDE
    pad_w = (-width) % MODEL_STRIDE
    if not (pad_h or pad_w):
        return logits_of(x)
    return logits_of(F.pad(x, (0, pad_w, 0, pad_h)))[:, :, :height, :width]


def add_fcn8s_head(model: nn.Module, num_classes: int, stride8_channels: int, stride16_channels: int,
                   stride32_channels: int) -> None:
    """FCN-8s's decoder: 1x1 scores on the stride-8/16/32 maps, transposed convolutions x2, x2, x8."""
    model.score_fr = nn.Conv2d(stride32_channels, num_classes, 1)
    model.score_pool4 = nn.Conv2d(stride16_channels, num_classes, 1)
    model.score_pool3 = nn.Conv2d(stride8_channels, num_classes, 1)
    model.upscore2 = nn.ConvTranspose2d(num_classes, num_classes, 4, stride=2, padding=1, bias=False)
    model.upscore_pool4 = nn.ConvTranspose2d(num_classes, num_classes, 4, stride=2, padding=1, bias=False)
    model.upscore8 = nn.ConvTranspose2d(num_classes, num_classes, 16, stride=8, padding=4, bias=False)


def init_fcn8s_head(model: nn.Module) -> None:
    # The skip scores start at zero, as in the paper's staged nets: training starts as FCN-32s.
    for module in (model.score_pool4, model.score_pool3):
        nn.init.zeros_(module.weight)
        nn.init.zeros_(module.bias)
    for module in (model.upscore2, model.upscore_pool4, model.upscore8):
        channels = module.in_channels
        module.weight.data.copy_(bilinear_kernel(channels, channels, module.kernel_size[0]))


def fcn8s_decode(model: nn.Module, stride8: torch.Tensor, stride16: torch.Tensor,
                 stride32: torch.Tensor) -> torch.Tensor:
    """Score the three maps and fuse them coarse to fine: logits at 8x the stride-8 map's size."""
    upscore2 = model.upscore2(model.score_fr(stride32))
    upscore_pool4 = model.upscore_pool4(upscore2 + model.score_pool4(stride16))
    return model.upscore8(upscore_pool4 + model.score_pool3(stride8))


class FCN8s(nn.Module):
    """FCN-8s: VGG16 conv1-5, fc6 (7x7) and fc7 (1x1) as convolutions, score layers and 2x/2x/8x upsampling.

    Inputs whose sides are not multiples of 32 are zero-padded on the bottom/right and the output is cropped
    back, so the output is always N x C x H x W at the input's H x W.
    """

    def __init__(self, num_classes: int = 2, width: float = 1.0, dropout: float = 0.5,
                 batch_norm: bool = False) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.width = width
        # BatchNorm after each encoder convolution (training from scratch); export folds it into the convs.
        self.batch_norm = batch_norm
        layers: list[nn.Module] = []
        in_channels = 3
        # Remember where pool3 and pool4 end so their outputs can feed the skips.
        self.pool_indices: list[int] = []
        for item in VGG16_CFG:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                self.pool_indices.append(len(layers) - 1)
            else:
                out_channels = scaled(item, width)
                layers.append(nn.Conv2d(in_channels, out_channels, 3, padding=1))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(out_channels))
                layers.append(nn.ReLU(inplace=True))
                in_channels = out_channels
        self.features = nn.Sequential(*layers)
        fc_channels = scaled(FC_CHANNELS, width)
        pool3_channels = scaled(256, width)
        pool4_channels = scaled(512, width)
        self.fc6 = nn.Conv2d(in_channels, fc_channels, 7, padding=3)
        self.fc7 = nn.Conv2d(fc_channels, fc_channels, 1)
        self.drop6 = nn.Dropout2d(dropout)
        self.drop7 = nn.Dropout2d(dropout)
        add_fcn8s_head(self, num_classes, pool3_channels, pool4_channels, fc_channels)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
        init_fcn8s_head(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return padded_to_stride(self._logits, x)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        pool3_end, pool4_end = self.pool_indices[2], self.pool_indices[3]
        pool3 = self.features[: pool3_end + 1](x)
        pool4 = self.features[pool3_end + 1 : pool4_end + 1](pool3)
        pool5 = self.features[pool4_end + 1 :](pool4)
        fc7 = self.drop7(torch.relu(self.fc7(self.drop6(torch.relu(self.fc6(pool5))))))
        return fcn8s_decode(self, pool3, pool4, fc7)

    def arch(self) -> dict:
        arch = {"name": ARCH_NAME, "width": self.width, "num_classes": self.num_classes}
        if self.batch_norm:  # only when set: plain checkpoints keep the arch they always had
            arch["batch_norm"] = True
        return arch


class FCN8sLite(nn.Module):
    """FCN-8s's decoder on an EfficientNet-Lite encoder: scores on the stride-8, stride-16 and head (stride-32) maps.

    Same padding rule and output as FCN8s. Its BatchNorm layers are folded into the convolutions at export.
    """

    width = 1.0
    batch_norm = True
    freeze_encoder_statistics = False  # set once ImageNet weights are loaded

    def __init__(self, num_classes: int = 2, variant: str = "lite0", dropout: float = 0.2) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.variant = variant
        self.encoder = EfficientNetLite(variant)
        self.drop = nn.Dropout2d(dropout)
        add_fcn8s_head(self, num_classes, self.encoder.stride8_channels, self.encoder.stride16_channels,
                       HEAD_CHANNELS)
        nn.init.normal_(self.score_fr.weight, std=0.01)
        nn.init.zeros_(self.score_fr.bias)
        init_fcn8s_head(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return padded_to_stride(self._logits, x)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        stride8, stride16, head = self.encoder.features(x)
        return fcn8s_decode(self, stride8, stride16, self.drop(head))

    def train(self, mode: bool = True) -> FCN8sLite:
        super().train(mode)
        if mode and self.freeze_encoder_statistics:
            # Batches of 4 estimate BatchNorm statistics badly; ImageNet's stay (affine terms still train).
            for module in self.encoder.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.eval()
        return self

    def arch(self) -> dict:
        return {"name": lite_arch_name(self.variant), "num_classes": self.num_classes}

    def encoder_parameters(self) -> list[nn.Parameter]:
        return list(self.encoder.parameters())


def lite_arch_name(variant: str) -> str:
    return f"fcn8s_efficientnet_{variant}"


LITE_ARCHES = {lite_arch_name(variant): variant for variant in VARIANTS}
ARCH_NAMES = (ARCH_NAME, *LITE_ARCHES)


def build_model(arch: dict) -> FCN8s | FCN8sLite:
    name = arch.get("name")
    if name in LITE_ARCHES:
        return FCN8sLite(num_classes=int(arch["num_classes"]), variant=LITE_ARCHES[name])
    if name != ARCH_NAME:
        raise ValueError(f"unknown architecture {name!r}, expected one of {', '.join(ARCH_NAMES)}")
    return FCN8s(num_classes=int(arch["num_classes"]), width=float(arch["width"]),
                 batch_norm=bool(arch.get("batch_norm", False)))


def preprocess_for(arch_name: str, input_size: tuple[int, int]) -> PreprocessSpec:
    """The contract a model of this architecture is trained and run with: its encoder's input convention."""
    if arch_name in LITE_ARCHES:
        return PreprocessSpec(*input_size, mean=LITE_MEAN_RGB, std=LITE_STD_RGB)
    return PreprocessSpec(*input_size)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def imagenet_weights_path(explicit: str | None) -> Path | None:
    """The VGG16 ImageNet file: an explicit --weights path, else torchvision's cache if it holds one."""
    if explicit:
        return Path(explicit)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_VGG16_FILE
    return cached if cached.is_file() else None


def load_imagenet_vgg16(model: FCN8s, path: Path) -> None:
    """Copy torchvision VGG16 weights into conv1-5 and convolutionalise fc6/fc7 (FCN's 'net surgery')."""
    if model.width != 1.0:
        raise WeightsUnavailable(f"ImageNet VGG16 weights fit only width 1.0, not {model.width}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as error:
        raise WeightsUnavailable(f"{path}: cannot read VGG16 weights ({error})") from error
    try:
        model.features.load_state_dict(
            {key.removeprefix("features."): value for key, value in state.items() if key.startswith("features.")}
        )
        model.fc6.weight.data.copy_(state["classifier.0.weight"].view(FC_CHANNELS, 512, 7, 7))
        model.fc6.bias.data.copy_(state["classifier.0.bias"])
        model.fc7.weight.data.copy_(state["classifier.3.weight"].view(FC_CHANNELS, FC_CHANNELS, 1, 1))
        model.fc7.bias.data.copy_(state["classifier.3.bias"])
    except (KeyError, RuntimeError) as error:
        raise WeightsUnavailable(f"{path}: not torchvision VGG16 ImageNet weights ({error})") from error


def apply_pretrained(model: FCN8s | FCN8sLite, mode: str, weights: str | None) -> str:
    """Apply ImageNet weights per --pretrained (auto|yes|no) and --weights (PATH or none); return what was done."""
    if mode == "no" or weights == NO_WEIGHTS:
        return f"encoder initialised from scratch (--pretrained {mode}, --weights {weights})"
    if isinstance(model, FCN8sLite):
        return apply_lite_weights(model, weights)
    path = imagenet_weights_path(weights)
    reason = None
    if model.width != 1.0:
        reason = f"width {model.width} cannot use ImageNet VGG16 weights (only width 1.0 can)"
    elif path is None:
        reason = (f"no ImageNet VGG16 weights: none in torchvision's cache "
                  f"({Path(torch.hub.get_dir()) / 'checkpoints' / IMAGENET_VGG16_FILE}) and no --weights PATH")
    elif not path.is_file():
        reason = f"--weights {path}: no such file"
    if reason is None:
        try:
            load_imagenet_vgg16(model, path)
            return f"encoder initialised from ImageNet VGG16 weights in {path}"
        except WeightsUnavailable as error:
            reason = str(error)
    if mode == "yes":
        raise WeightsUnavailable(f"--pretrained yes: {reason}")
    if model.width == 1.0:
        warnings.warn(f"{reason}; training from scratch instead", stacklevel=2)
    return f"encoder initialised from scratch ({reason})"


def apply_lite_weights(model: FCN8sLite, weights: str | None) -> str:
    """EfficientNet-Lite is only worth training from its ImageNet weights: missing or damaged ones stop the run
    (one line naming the package) rather than silently training from scratch; --weights none asks for that."""
    try:
        load_imagenet_weights(model.encoder, model.variant, weights)
    except WeightsError as error:
        raise WeightsUnavailable(str(error)) from error
    model.freeze_encoder_statistics = True
    source = weights or f"the package {VARIANTS[model.variant][1]}"  # not its install path: cards travel
    return f"encoder initialised from ImageNet EfficientNet-{model.variant.capitalize()} weights ({source})"
