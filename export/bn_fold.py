"""Fold the encoder's training-time BatchNorm into its convolutions: the exported graph is plain FCN-8s.

In eval mode BatchNorm is a per-channel affine map y = gamma * (x - mean) / sqrt(var + eps) + beta, so the
preceding convolution absorbs it exactly: w' = w * s, b' = (b - mean) * s + beta with s = gamma / sqrt(var + eps).
The ONNX graph then holds the same Conv/Relu/MaxPool ops as a model trained without BatchNorm (no runtime cost,
nothing new for TensorRT or the INT8 calibrator), and the parity gate compares it with the unfolded model.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from train.model import FCN8s, FCN8sLite


def fold_batchnorm(model: FCN8s | FCN8sLite) -> FCN8s | FCN8sLite:
    """A model without BatchNorm computing what `model` computes in eval mode; `model` is not changed."""
    if isinstance(model, FCN8sLite):
        return fold_lite(model)
    if not model.batch_norm:
        return model
    folded = FCN8s(num_classes=model.num_classes, width=model.width, batch_norm=False)
    plain_convs = [m for m in folded.features if isinstance(m, nn.Conv2d)]
    layers = list(model.features)
    pairs = [(layer, layers[i + 1]) for i, layer in enumerate(layers[:-1]) if isinstance(layer, nn.Conv2d)]
    if len(pairs) != len(plain_convs) or not all(isinstance(bn, nn.BatchNorm2d) for _, bn in pairs):
        raise ValueError("encoder layout is not conv -> BatchNorm throughout; cannot fold")
    with torch.no_grad():
        for target, (conv, bn) in zip(plain_convs, pairs, strict=True):
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            target.weight.copy_(conv.weight * scale[:, None, None, None])
            bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            target.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
        head = {k: v for k, v in model.state_dict().items() if not k.startswith("features.")}
        folded.load_state_dict(head | {k: v for k, v in folded.state_dict().items() if k.startswith("features.")})
    folded.eval()
    return folded


def fold_lite(model: FCN8sLite) -> FCN8sLite:
    """EfficientNet-Lite's conv -> BatchNorm pairs as single convolutions (with bias), the BatchNorms as Identity:
    depthwise conv + ReLU6 then reach TensorRT and the INT8 calibrator as the fusable pair they are."""
    folded = copy.deepcopy(model).eval()
    pairs = [(folded.encoder, "conv_stem", "bn0"), (folded.encoder, "conv_head", "bn1")]
    for block in folded.encoder.blocks:
        if hasattr(block, "expand_conv"):
            pairs.append((block, "expand_conv", "bn0"))
        pairs += [(block, "depthwise_conv", "bn1"), (block, "project_conv", "bn2")]
    with torch.no_grad():
        for owner, conv_name, bn_name in pairs:
            setattr(owner, conv_name, fuse_conv_bn_eval(getattr(owner, conv_name), getattr(owner, bn_name)))
            setattr(owner, bn_name, nn.Identity())
    if any(isinstance(module, nn.BatchNorm2d) for module in folded.modules()):
        raise ValueError("EfficientNet-Lite encoder has a BatchNorm outside its conv -> BatchNorm pairs")
    folded.batch_norm = False
    return folded
