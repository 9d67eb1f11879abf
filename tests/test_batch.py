"""One inference call on a batch of N frames gives the masks of N single calls, on every backend here: ONNX Runtime
CPU and OpenVINO on every exported ONNX artifact (symbolic batch axis, as `python -m export` writes it, kept by
calibration and by the in-graph wrapper); the shipped
batch-1 files report a batch of 1; a TensorRT engine refuses more frames than its profile's max."""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import KITTI_VIDEO

from runtime.artifacts import INT8_CPU_INGRAPH_ONNX, INT8_CPU_ONNX, ONNX_FILES
from runtime.backends import open_backend
from runtime.contract import MAX_BATCH
from runtime.pipeline import frame_preprocessor
from runtime.sources import read_video_frames

N = 4
ARTIFACTS = tuple(artifact.file_name for artifact in ONNX_FILES)
SHIPPED_INT8 = "models/fcn8s_vgg16_w0.25_cpu.int8_cpu.onnx"
needs_video = pytest.mark.skipif(not KITTI_VIDEO.is_file(), reason=f"KITTI video not found at {KITTI_VIDEO}")


def real_frames(count: int) -> list[np.ndarray]:
    """Frames of the real KITTI drive, spread over it so that each is a different scene."""
    frames = read_video_frames(KITTI_VIDEO)
    return [frames[i] for i in np.linspace(0, len(frames) - 1, count).astype(int)]


def as_masks(results: np.ndarray) -> np.ndarray:
    """N x C x H x W logits -> N x H x W class masks; an in-graph model's N x H x W road masks as they are."""
    return results if results.ndim == 3 else results.argmax(1)


def masks_batched_and_single(backend, frames: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    preprocess = frame_preprocessor(backend, batch=len(frames))
    for slot, frame in enumerate(frames):
        preprocess(frame, slot)
    batched = as_masks(backend.infer(preprocess.input_tensor))
    single = frame_preprocessor(backend)
    alone = np.concatenate([as_masks(backend.infer(single(frame))) for frame in frames])
    return batched, alone


def openvino_or_skip() -> None:
    from runtime.openvino_backend import openvino_installed

    if not openvino_installed():
        if os.environ.get("ROADSEG_REQUIRE_OPENVINO") == "1":
            pytest.fail("ROADSEG_REQUIRE_OPENVINO=1 but OpenVINO is not installed (make setup-openvino)")
        pytest.skip("OpenVINO is not installed (make setup-openvino)")


@needs_video
@pytest.mark.parametrize("backend_name", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("artifact", ARTIFACTS)
def test_one_batch_of_n_real_frames_gives_the_masks_of_n_single_calls(tiny_artifacts, backend_name, artifact):
    if backend_name == "openvino":
        openvino_or_skip()
    backend = open_backend(tiny_artifacts / artifact, backend_name, threads=1)
    assert backend.max_batch == MAX_BATCH  # the symbolic batch axis takes any batch up to the limit
    batched, alone = masks_batched_and_single(backend, real_frames(N))
    assert batched.shape == (N, 64, 192)
    assert np.array_equal(batched, alone), f"{np.mean(batched != alone):.4%} of pixels differ"


@needs_video
@pytest.mark.parametrize("backend_name", ["onnxruntime", "openvino"])
def test_the_shipped_batch_1_file_takes_one_frame_a_call(backend_name):
    if backend_name == "openvino":
        openvino_or_skip()
    backend = open_backend(SHIPPED_INT8, backend_name, threads=1)
    assert backend.max_batch == 1
    single = frame_preprocessor(backend)
    assert backend.infer(single(real_frames(1)[0])).shape[0] == 1


@needs_video
def test_the_in_graph_wrapper_keeps_the_batch_axis_and_batches_to_the_same_masks(tiny_artifacts, tmp_path):
    import onnx

    from export.ingraph import wrap

    wrapped = tmp_path / INT8_CPU_INGRAPH_ONNX
    onnx.save(wrap(onnx.load(str(tiny_artifacts / INT8_CPU_ONNX))), str(wrapped))
    backend = open_backend(wrapped, "onnxruntime", threads=1)
    assert backend.in_graph and backend.max_batch == MAX_BATCH
    batched, alone = masks_batched_and_single(backend, real_frames(N))
    assert batched.shape == (N, 64, 192) and np.array_equal(batched, alone)


@needs_video
def test_batch_axis_makes_the_shipped_batch_1_file_batchable_and_checks_it(tmp_path, capsys):
    from export.batch_axis import main as batch_axis_main

    target = tmp_path / "int8_cpu.batch.onnx"
    assert batch_axis_main([SHIPPED_INT8, str(target)]) == 0
    backend = open_backend(target, "onnxruntime", threads=1)
    assert backend.max_batch == MAX_BATCH
    batched, alone = masks_batched_and_single(backend, real_frames(2))
    assert np.array_equal(batched, alone)
    capsys.readouterr()
    assert batch_axis_main([str(target), str(target)]) == 2  # never over its own input
    assert "would overwrite its input" in capsys.readouterr().err
