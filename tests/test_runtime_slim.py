"""The runtime stays slim: numpy, OpenCV and a backend only. Never torch, never train/ (or export/...)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from stream_helpers import KITTI_VIDEO, REPO, read_video, tiny_onnx_model

ALLOWED_THIRD_PARTY = {"numpy", "cv2", "onnxruntime", "openvino", "tensorrt", "cuda", "runtime"}
# Optional backends: imported lazily, only when a model is opened on them.
OPTIONAL_BACKENDS = ("openvino", "tensorrt")
FORBIDDEN = ("torch", "torchvision", "train", "export", "calibration", "engine", "bench", "kitti", "tqdm", "matplotlib",
             "onnx")

# Runs in a fresh interpreter: any import of a forbidden package fails, then the real CLI streams a video.
BLOCKED_RUN = """
import importlib.abc, runpy, sys
FORBIDDEN = {forbidden!r}

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in FORBIDDEN:
            raise ImportError(f"blocked import of {{name}}: the runtime must not need it")
        return None

sys.meta_path.insert(0, Block())
sys.argv = ["runtime/stream.py", *{argv!r}]
try:
    runpy.run_path("runtime/stream.py", run_name="__main__")
finally:
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in FORBIDDEN)
    print("FORBIDDEN-LOADED:", loaded)
"""


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory) -> Path:
    return tiny_onnx_model(tmp_path_factory.getbasetemp())


@pytest.mark.skipif(not KITTI_VIDEO.is_file(), reason=f"KITTI video not found at {KITTI_VIDEO}")
def test_stream_runs_with_torch_and_train_blocked(tiny_onnx: Path, tmp_path: Path):
    out = tmp_path / "slim.mp4"
    argv = [str(KITTI_VIDEO), "--model", str(tiny_onnx), "--headless", "--max-frames", "6",
            "--output", str(out), "--save-masks", str(tmp_path / "m"), "--quiet"]
    code = BLOCKED_RUN.format(forbidden=FORBIDDEN, argv=argv)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FORBIDDEN-LOADED: []" in result.stdout
    assert "6 read, 6 processed" in result.stdout
    assert len(read_video(out)) == 6 and len(list((tmp_path / "m").glob("*.png"))) == 6


@pytest.mark.skipif(not KITTI_VIDEO.is_file(), reason=f"KITTI video not found at {KITTI_VIDEO}")
def test_without_openvino_the_stream_runs_as_before(tiny_onnx: Path, tmp_path: Path):
    """A machine without OpenVINO: `--backend auto` opens ONNX Runtime with no probe and no new line."""
    argv = [str(KITTI_VIDEO), "--model", str(tiny_onnx), "--headless", "--max-frames", "4", "--quiet"]
    code = BLOCKED_RUN.format(forbidden=(*FORBIDDEN, "openvino"), argv=argv)
    env = {**os.environ, "ROADSEG_CACHE_DIR": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120,
                            env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FORBIDDEN-LOADED: []" in result.stdout and "auto picked" not in result.stdout
    assert "onnxruntime fp32 on cpu" in result.stdout and "4 read, 4 processed" in result.stdout
    assert not (tmp_path / "cache").exists()
    blocked = BLOCKED_RUN.format(forbidden=(*FORBIDDEN, "openvino"), argv=[*argv, "--backend", "openvino"])
    asked = subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert asked.returncode == 2 and "OpenVINO is not installed" in asked.stderr
    assert "Traceback" not in asked.stderr


def test_blocker_really_blocks(tmp_path: Path):
    """The guard above must be able to fail: a script that imports torch is stopped by it."""
    code = BLOCKED_RUN.format(forbidden=FORBIDDEN, argv=[]).replace('"runtime/stream.py", run_name',
                                                                    f'"{tmp_path / "uses_torch.py"}", run_name')
    (tmp_path / "uses_torch.py").write_text("import torch\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode != 0 and "blocked import of torch" in result.stderr


def module_level_nodes(tree: ast.Module):
    """Statements that run on import (also inside module-level if/try), not inside functions: an optional
    tool may import a heavier package lazily, but importing any runtime module must never pull one in."""
    pending = list(tree.body)
    while pending:
        node = pending.pop()
        yield node
        if isinstance(node, (ast.If, ast.Try, ast.With)):
            for field in ("body", "orelse", "finalbody", "handlers"):
                pending += getattr(node, field, [])
        elif isinstance(node, ast.ExceptHandler):
            pending += node.body


def test_runtime_modules_import_only_numpy_opencv_and_backends():
    stdlib = set(sys.stdlib_module_names)
    offenders = []
    for path in sorted((REPO / "runtime").glob("*.py")):
        for node in module_level_nodes(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in stdlib and top not in ALLOWED_THIRD_PARTY:
                    offenders.append(f"{path.name}: {name}")
                elif top in OPTIONAL_BACKENDS:
                    offenders.append(f"{path.name}: {name} (an optional backend, imported at module level)")
    assert offenders == []


def test_frame_preprocessor_matches_the_training_normaliser(synthetic_kitti):
    """The runtime's fused resize + normalise and training's dataset path give the same tensor for the same image."""
    from kitti.data import find_samples, read_image
    from runtime.contract import PreprocessSpec
    from runtime.preprocess import FramePreprocessor
    from train.dataset import RoadDataset, load_kitti_arrays

    spec = PreprocessSpec(96, 320)
    sample = find_samples(synthetic_kitti)[0]
    training_tensor = RoadDataset(*load_kitti_arrays([sample]), spec, None)[0][0].numpy()
    runtime_tensor = FramePreprocessor(spec)(read_image(sample.image_path))[0]
    assert runtime_tensor.shape == training_tensor.shape == (3, 96, 320)
    assert np.abs(runtime_tensor - training_tensor).max() < 1e-5


STAGES = ("runtime", "kitti", "train", "export", "calibration", "engine", "bench", "fleet")


def test_fleet_imports_only_the_runtime_of_this_repository():
    """fleet/ runs the runtime's steps on Ray; it needs none of training, export or the benchmarks."""
    offenders = [f"{path.name}: {name}" for path in sorted((REPO / "fleet").glob("*.py"))
                 for name in imported_names(path)
                 if name.split(".")[0] in STAGES and name.split(".")[0] not in ("runtime", "fleet")]
    assert offenders == []


def imported_names(path: Path) -> list[str]:
    """Every module a file imports, at module level or inside functions."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
    return names


def test_kitti_never_imports_torch():
    """The KITTI home (data, split, metrics, the evaluator) scores any predictor: it must run without torch."""
    offenders = [f"{path.name}: {name}" for path in sorted((REPO / "kitti").glob("*.py"))
                 for name in imported_names(path) if name.split(".")[0] in ("torch", "torchvision")]
    assert offenders == []


def module_strings_after_dash_m(path: Path) -> list[str]:
    """String literals that follow a "-m" literal in a list, tuple or call: a module named in a string."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        items = node.elts if isinstance(node, (ast.List, ast.Tuple)) else getattr(node, "args", None)
        items = items if isinstance(items, list) else []
        for first, second in zip(items, items[1:], strict=False):
            if (isinstance(first, ast.Constant) and first.value == "-m" and isinstance(second, ast.Constant)
                    and isinstance(second.value, str)):
                found.append(f"{path.name}:{second.lineno} -m {second.value}")
    return found


def test_no_stage_names_another_module_in_a_string(tmp_path: Path):
    """Children are started from imported module objects (bench.children.child_command), so a rename fails loudly."""
    offenders = [hit for stage in STAGES for path in sorted((REPO / stage).glob("*.py"))
                 for hit in module_strings_after_dash_m(path)]
    assert offenders == []
    spelled = tmp_path / "spelled.py"  # the check itself can fail
    spelled.write_text('import sys\ncommand = [sys.executable, "-m", "bench.worker", "--json", "x"]\n')
    assert module_strings_after_dash_m(spelled) == ["spelled.py:2 -m bench.worker"]


def test_bench_children_are_named_by_module_objects_and_the_table_imports_no_torch():
    """The table imports its workers for their names only: torch stays inside the torch worker's own process."""
    code = ("import sys, bench.table, bench.children as c, bench.torch_worker, bench.interleave, bench.worker, "
            "train.evaluate\n"
            "assert c.child_command(bench.torch_worker, ['--probe'])[1:] == ['-m', 'bench.torch_worker', '--probe']\n"
            "print('torch loaded:', 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "torch loaded: False" in result.stdout
