"""The artifact table (runtime/artifacts.py) is the only place a build folder's file names, the precision list and
the provenance keys are spelled; its build-folder helper says where a file is and whether it is stale."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from conftest import REPO, run_cli

from runtime import artifacts
from runtime.artifacts import ARTIFACTS, FP32_ONNX, INT8_CPU_ONNX, BuildDir
from runtime.contract import SOURCE_ONNX_SHA256_KEY, TRAINING_KEY

CHECKED_FOLDERS = ("fleet", "bench", "engine", "calibration", "export", "train", "kitti", "runtime", "tests")
TABLE = REPO / "runtime" / "artifacts.py"
# train/ still spells artifact names itself; it is owned elsewhere and listed here until it looks them up too.
NOT_YET_CHECKED = ("train",)


def docstring_nodes(tree: ast.AST) -> set[int]:
    nodes = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                nodes.add(id(first.value))
    return nodes


def artifact_literals(path: Path, names: set[str]) -> list[str]:
    """String literals in code (not docstrings) that spell an artifact's file name, or build one (f"model.{x}...")."""
    tree = ast.parse(path.read_text(), str(path))
    skip = docstring_nodes(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            if node.value in names or any(node.value.endswith(f"/{name}") for name in names):
                found.append(f"{path.relative_to(REPO)}:{node.lineno} {node.value!r}")
        elif isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant) \
                and str(node.values[0].value).startswith("model.") \
                and isinstance(node.values[-1], ast.Constant) \
                and str(node.values[-1].value).endswith((".onnx", ".engine")):
            found.append(f"{path.relative_to(REPO)}:{node.lineno} f-string model.*")
    return found


def product_python() -> list[Path]:
    return [path for folder in CHECKED_FOLDERS for path in sorted((REPO / folder).rglob("*.py")) if path != TABLE]


def test_no_artifact_file_name_outside_the_table():
    names = {artifact.file_name for artifact in ARTIFACTS}
    offenders = [hit for path in product_python() for hit in artifact_literals(path, names)]
    assert not offenders, "\n".join(offenders)


def test_the_literal_check_can_fail(tmp_path: Path):
    spelled = REPO / "tests" / f"_spelled_{tmp_path.name}.py"
    spelled.write_text(f'"""{FP32_ONNX} in a docstring is documentation."""\n'
                       f'a = "{INT8_CPU_ONNX}"\nb = f"model.{{variant}}.onnx"\n')
    try:
        hits = artifact_literals(spelled, {artifact.file_name for artifact in ARTIFACTS})
    finally:
        spelled.unlink()
    assert [hit.split(" ", 1)[1] for hit in hits] == [repr(INT8_CPU_ONNX), "f-string model.*"]


def definitions_of(name: str) -> list[str]:
    pattern = re.compile(rf"^{name}\s*=", re.M)
    return [str(path.relative_to(REPO)) for path in product_python() if pattern.search(path.read_text())]


def test_one_precision_list_one_training_key_and_the_source_hash_key_by_name():
    assert definitions_of("PRECISIONS") == ["runtime/contract.py"]
    assert definitions_of("TRAINING_KEY") == ["runtime/contract.py"]
    spelled = [str(path.relative_to(REPO)) for path in product_python()
               if f'"{SOURCE_ONNX_SHA256_KEY}"' in path.read_text() or f'"{TRAINING_KEY}"' in path.read_text()]
    assert spelled == ["runtime/contract.py"]


def test_the_table_is_complete_and_unambiguous():
    names = [artifact.file_name for artifact in ARTIFACTS]
    assert len(names) == len(set(names)) and len(ARTIFACTS) == len(artifacts.BY_NAME)
    assert {a.precision for a in ARTIFACTS if a.precision} <= set(artifacts.PRECISIONS)
    assert [a.name for a in ARTIFACTS if a.in_graph] == ["fp32_ingraph", "fp16_ingraph", "int8_cpu_ingraph"]
    assert {a.variant for a in ARTIFACTS if a.precision == "int8" and a.stage == "calibration"} == {
        "tensorrt", "strongly_typed", "cpu"}
    assert artifacts.engine_name("int8") == "model.int8" + artifacts.ENGINE_SUFFIX
    assert artifacts.onnx_name("int8_cpu") == INT8_CPU_ONNX


def test_the_table_prints_file_names_for_scripts():
    result = run_cli("-m", "runtime.artifacts", "fp32", "int8_cpu")
    assert result.returncode == 0 and result.stdout.split() == [FP32_ONNX, INT8_CPU_ONNX]
    unknown = run_cli("-m", "runtime.artifacts", "fp64")
    assert unknown.returncode == 2 and unknown.stderr.count("\n") == 1 and "fp64" in unknown.stderr


# make needs its file targets when it reads the Makefile, before any environment (with numpy, which the table's
# keys come from) exists, so these targets keep literal names; they must be the table's.
MAKEFILE_TARGETS = {"export": "fp32", "calibrate": "int8"}


def test_the_makefile_targets_are_the_tables_file_names():
    makefile = (REPO / "Makefile").read_text()
    for target, name in MAKEFILE_TARGETS.items():
        assert f"\n{target}: $(BUILD)/{artifacts.file_name(name)}\n" in makefile, target
    spelled = set(re.findall(r"model\.[a-z0-9_.]+\.(?:onnx|engine)", makefile))
    assert spelled <= {artifact.file_name for artifact in ARTIFACTS}, spelled


def test_build_dir_says_where_what_is_and_what_is_stale(tmp_path: Path):
    build = BuildDir(tmp_path)
    assert build.path("int8_cpu") == tmp_path / INT8_CPU_ONNX
    assert not build.present("fp32") and build.stale("int8", None)
    build.path("fp32").write_bytes(b"fp32 v1")
    build.path("int8").write_bytes(b"int8")
    recorded = artifacts.sha256_file(build.path("fp32"))
    assert build.present("int8") and not build.stale("int8", recorded)
    build.path("fp32").write_bytes(b"fp32 v2")  # same name, new bytes: stale, whatever the timestamps say
    assert build.stale("int8", recorded)
