"""Shared fixtures: the real KITTI dev data when present, a procedural KITTI-layout folder, tiny models."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ROADSEG_SHARED_DATA", REPO.parent / "shared" / "data"))
KITTI_DIR = SHARED_DATA / "kitti_road"
KITTI_VIDEO = SHARED_DATA / "kitti_raw" / "2011_09_26_drive_0001_image_02.mp4"
VGG_CHECKPOINT = REPO / "models" / "fcn8s_vgg16_w0.25_cpu.pt"  # the smaller shipped model: quick real-model tests

needs_kitti = pytest.mark.skipif(not (KITTI_DIR / "training" / "image_2").is_dir(),
                                 reason=f"KITTI dev data not found at {KITTI_DIR}")


def run_cli(*args: str, timeout: float = 300, env: dict | None = None, cwd: Path = REPO
            ) -> subprocess.CompletedProcess:
    """Run `python <args>` as a real process from the repository root."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, env=full_env)


@pytest.fixture()
def faulty_scheme() -> str:
    """`faulty://WxH@FPS?...` opens tests/fault_sources.py's fault-injecting camera in this process."""
    from fault_sources import SCHEME, register

    register()
    return SCHEME


def random_fcn8s(width: float = 0.125, seed: int = 0):
    """A randomly initialised FCN-8s whose pool3/pool4 skip scores are live: the model's own init zeroes them (training
    starts as FCN-32s), and a fixture left that way would test export, INT8 and parity on an FCN-32s."""
    import torch

    from train.model import FCN8s

    torch.manual_seed(seed)
    model = FCN8s(num_classes=2, width=width).eval()
    for branch in (model.score_pool3, model.score_pool4):
        torch.nn.init.kaiming_normal_(branch.weight, mode="fan_out", nonlinearity="relu")
    return model


@pytest.fixture(scope="session")
def synthetic_kitti(tmp_path_factory) -> Path:
    from kitti.data import write_synthetic_kitti

    return write_synthetic_kitti(tmp_path_factory.mktemp("synthetic_kitti"), per_category=4)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, synthetic_kitti) -> Path:
    """A real checkpoint from a few real training steps of the smoke configuration."""
    out = tmp_path_factory.mktemp("tiny_run")
    result = run_cli("-m", "train", "--config", "smoke", "--data", str(synthetic_kitti), "--output-dir", str(out),
                     "--epochs", "1", "--max-steps-per-epoch", "2", "--no-progress")
    assert result.returncode == 0, result.stderr
    return out / "best.pt"


@pytest.fixture(scope="session")
def tiny_artifacts(tmp_path_factory) -> Path:
    """Every ONNX artifact of a small FCN-8s (tests/rtx_helpers.py), made once; copy it before writing into it."""
    from rtx_helpers import make_tiny_artifacts

    return make_tiny_artifacts(tmp_path_factory.mktemp("tiny_artifacts"))


_skipped: list[str] = []


def _skip_reason(report) -> str:
    return report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr or "")


def pytest_runtest_logreport(report) -> None:
    if report.skipped:
        _skipped.append(f"{report.nodeid}: {_skip_reason(report)}")


def pytest_collectreport(report) -> None:
    """A module that skips itself while being collected (pytest.skip(allow_module_level=True)) skips every test in
    it without any test report: it counts as skipped too."""
    if report.skipped:
        _skipped.append(f"{report.nodeid} (whole module): {_skip_reason(report)}")


def pytest_sessionfinish(session, exitstatus) -> None:
    """CI sets ROADSEG_NO_SKIPS=1: there the data, Xvfb and every optional backend are installed, so a skipped test
    means a missing install step, and the run must fail instead of passing with less tested than it says."""
    if _skipped:  # never silent: what was not tested, and (in each reason) the command that enables it
        reasons = sorted({line.split(": ", 1)[-1] for line in _skipped})
        print(f"\n{len(_skipped)} test(s) skipped; reasons: " + " | ".join(reasons))
    if os.environ.get("ROADSEG_NO_SKIPS") == "1" and _skipped:
        print(f"\nROADSEG_NO_SKIPS=1 but {len(_skipped)} test(s) skipped:", *_skipped, sep="\n  ")
        session.exitstatus = 1
