"""Fold the encoder's training-time BatchNorm into its convolutions: the exported graph is plain FCN-8s.

In eval mode BatchNorm is a per-channel affine map y = gamma * (x - mean) / sqrt(var + eps) + beta, so the
preceding convolution absorbs it exactly: w' = w * s, b' = (b - mean) * s + beta with s = gamma / sqrt(var + eps).
The ONNX graph then holds the same Conv/Relu/MaxPool ops as a model trained without BatchNorm (no runtime cost,
nothing new for TensorRT or the INT8 calibrator), and the parity gate compares it with the unfolded model.
"""

from __future__ import annotations

import torch
from torch import nn

from train.model import FCN8s


def fold_batchnorm(model: FCN8s) -> FCN8s:
    """A plain FCN8s (batch_norm False) computing what `model` computes in eval mode; `model` is not changed."""
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
