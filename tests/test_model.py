"""FCN-8s topology, sizes, width multiplier and ImageNet weight handling."""

import warnings

import pytest
import torch

from train.model import (
    FCN8s,
    WeightsUnavailable,
    apply_pretrained,
    bilinear_kernel,
    count_parameters,
    load_imagenet_vgg16,
)


def test_full_model_has_the_papers_parameter_count():
    model = FCN8s(num_classes=2, width=1.0)
    assert count_parameters(model) == pytest.approx(134.3e6, abs=0.05e6)
    assert model.fc6.kernel_size == (7, 7) and model.fc6.out_channels == 4096
    assert model.fc7.kernel_size == (1, 1) and model.fc7.out_channels == 4096
    assert [m.stride[0] for m in (model.upscore2, model.upscore_pool4, model.upscore8)] == [2, 2, 8]


@pytest.mark.parametrize("size", [(64, 96), (70, 101), (33, 47)])
def test_output_matches_any_input_size(size):
    model = FCN8s(width=0.125).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, *size))
    assert out.shape == (2, 2, *size)


def test_padding_only_where_needed_and_output_cropped_back_top_left(monkeypatch):
    """Sides that are not a multiple of 32 are zero-padded bottom/right and the logits cropped back to the input's
    own pixels; a multiple-of-32 input is never padded."""
    import torch.nn.functional as functional

    model = FCN8s(width=0.125).eval()
    real_pad = functional.pad
    pads = []
    monkeypatch.setattr(functional, "pad", lambda x, pad, *a, **k: pads.append(tuple(pad)) or real_pad(x, pad, *a, **k))
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 96))
        assert pads == []
        image = torch.randn(1, 3, 70, 101)
        logits = model(image)
        assert pads == [(0, 27, 0, 26)] and logits.shape == (1, 2, 70, 101)
        padded_logits = model(real_pad(image, (0, 27, 0, 26)))
    assert torch.equal(logits, padded_logits[:, :, :70, :101])


def test_width_multiplier_keeps_topology_with_fewer_channels():
    full, slim = FCN8s(width=1.0), FCN8s(width=0.25)
    assert [type(m) for m in full.modules()] == [type(m) for m in slim.modules()]
    assert slim.fc6.out_channels == 1024 and slim.features[0].out_channels == 16
    assert count_parameters(slim) < count_parameters(full) / 12


def test_upsampling_starts_as_bilinear_interpolation():
    kernel = bilinear_kernel(1, 1, 4)[0, 0]
    assert torch.allclose(kernel[1:3, 1:3], torch.tensor([[0.5625, 0.5625], [0.5625, 0.5625]]))
    up = torch.nn.ConvTranspose2d(1, 1, 4, stride=2, padding=1, bias=False)
    up.weight.data.copy_(bilinear_kernel(1, 1, 4))
    with torch.no_grad():
        out = up(torch.ones(1, 1, 6, 6))
    assert torch.allclose(out[0, 0, 1:-1, 1:-1], torch.ones(10, 10))  # a constant stays constant inside


def test_pretrained_auto_without_weights_warns_once_and_trains_from_scratch(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    model = FCN8s(width=1.0)
    with pytest.warns(UserWarning, match="no ImageNet VGG16 weights.*training from scratch"):
        note = apply_pretrained(model, "auto", None)
    assert "from scratch" in note


def test_pretrained_yes_without_weights_fails_clearly(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(WeightsUnavailable, match="--pretrained yes: no ImageNet VGG16 weights"):
        apply_pretrained(FCN8s(width=1.0), "yes", None)
    with pytest.raises(WeightsUnavailable, match="only width 1.0"):
        apply_pretrained(FCN8s(width=0.25), "yes", None)


def test_narrow_model_with_auto_skips_weights_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "width 0.25" in apply_pretrained(FCN8s(width=0.25), "auto", None)


def test_torchvision_vgg16_weights_are_convolutionalised(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    vgg = torchvision.models.vgg16(weights=None)
    weights = tmp_path / "vgg16-397923af.pth"
    torch.save(vgg.state_dict(), weights)
    model = FCN8s(width=1.0)
    assert "ImageNet VGG16 weights" in apply_pretrained(model, "yes", str(weights))
    assert torch.equal(model.features[0].weight, vgg.features[0].weight)
    assert torch.equal(model.fc6.weight.flatten(1), vgg.classifier[0].weight)
    assert torch.equal(model.fc7.weight.flatten(1), vgg.classifier[3].weight)
    # fc6 as a 7x7 convolution on a 7x7 pool5 map equals VGG's first fully connected layer.
    pool5 = torch.randn(1, 512, 7, 7)
    with torch.no_grad():
        as_conv = torch.nn.functional.conv2d(pool5, model.fc6.weight, model.fc6.bias)
        as_linear = vgg.classifier[0](pool5.flatten(1))
    assert torch.allclose(as_conv.flatten(), as_linear.flatten(), atol=1e-4)


def test_foreign_weights_file_is_rejected(tmp_path):
    bogus = tmp_path / "bogus.pth"
    torch.save({"something": torch.zeros(1)}, bogus)
    with pytest.raises(WeightsUnavailable, match="not torchvision VGG16"):
        load_imagenet_vgg16(FCN8s(width=1.0), bogus)
