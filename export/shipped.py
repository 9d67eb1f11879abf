"""The shipped model's deployable ONNX files in models/, so a device needs no PyTorch.

    python -m export.shipped write [--build build] [--checkpoint models/fcn8s_efficientnet_lite0.pt]
    python -m export.shipped check [--build build] [--checkpoint ...]

`write` copies what `make export calibrate` made from the checkpoint into models/ beside it
(STEM.fp16.onnx, STEM.int8.onnx, STEM.int8_fp16.onnx, STEM.int8_cpu.onnx) with STEM.artifacts.json naming
the checkpoint's sha256 and each file's. `check` (CI, after `make engine` regenerated build/ from the .pt)
proves the shipped files are what export and calibration produce from that checkpoint. Byte equality would
be brittle (torch, ONNX Runtime and BLAS versions move float rounding), so it compares what must not move:
  - the graph: the same nodes in the same order (op types, attributes, which tensors each reads), the same
    initializer shapes and types, the same opsets (not the batch axis: a batch-1 file and a symbolic-batch one
    are the same model), the same roadseg metadata (bar the source commit and the FP32 file's hash);
  - the weights: float initializers equal to 1e-3 relative, integer (quantized) ones equal in >= 99.9 %
    of entries and never more than 1 step apart;
  - the outputs on real frames (the calibration tensors, KITTI train images): the road masks agree on
    >= 99.9 % of pixels. FP16 files are run through their CPU emulation (export/fp16.py).
`ensure_from_models` is the torch-free path of `python -m engine`: it copies the shipped files into
build/ after checking the checkpoint and every file against STEM.artifacts.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from runtime.artifacts import onnx_name
from runtime.contract import COMMIT_KEY, SOURCE_ONNX_SHA256_KEY, shorten
from runtime.input_policy import read_json
from runtime.ioutil import atomic_write_bytes, atomic_write_text, fail, sha256_file
from runtime.paths import SHIPPED_CHECKPOINT

VARIANTS = ("fp16", "int8", "int8_fp16", "int8_cpu")
MAX_SHIPPED_BYTES = 25 * 1024 * 1024
VOLATILE_METADATA = {COMMIT_KEY, SOURCE_ONNX_SHA256_KEY}
MASK_AGREEMENT = 0.999
FRAMES = 8


class ShippedError(RuntimeError):
    pass


def shipped_paths(checkpoint: Path) -> dict[str, Path]:
    stem = checkpoint.name.removesuffix(".pt")
    return {variant: checkpoint.with_name(f"{stem}.{variant}.onnx") for variant in VARIANTS}


def manifest_path(checkpoint: Path) -> Path:
    return checkpoint.with_name(checkpoint.name.removesuffix(".pt") + ".artifacts.json")


def write(build: Path, checkpoint: Path) -> list[Path]:
    files = {}
    for variant, target in shipped_paths(checkpoint).items():
        source = build / onnx_name(variant)
        if not source.is_file():
            raise ShippedError(f"{source}: not found; run `make export calibrate` first")
        if source.stat().st_size > MAX_SHIPPED_BYTES:
            raise ShippedError(f"{source}: {source.stat().st_size / 1e6:.1f} MB is over the 25 MB limit for models/")
        atomic_write_bytes(target, source.read_bytes())
        files[target.name] = sha256_file(target)
    manifest = {"checkpoint": checkpoint.name, "checkpoint_sha256": sha256_file(checkpoint), "files": files,
                "made_by": "make export calibrate, then python -m export.shipped write"}
    atomic_write_text(manifest_path(checkpoint), json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return [manifest_path(checkpoint), *shipped_paths(checkpoint).values()]


def read_manifest(checkpoint: Path) -> dict:
    path = manifest_path(checkpoint)
    try:
        manifest = read_json(path)
    except (OSError, ValueError) as error:
        raise ShippedError(f"{path}: no readable list of shipped artifacts ({error})") from error
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict) or \
            not isinstance(manifest.get("checkpoint_sha256"), str):
        raise ShippedError(f"{path}: not a roadseg artifacts list")
    return manifest


def verify(checkpoint: Path) -> dict[str, Path]:
    """The shipped files, after checking that they belong to this checkpoint and are the bytes listed."""
    manifest = read_manifest(checkpoint)
    if checkpoint.is_file() and sha256_file(checkpoint) != manifest["checkpoint_sha256"]:
        raise ShippedError(f"{checkpoint}: changed since its ONNX files in models/ were made; re-export it "
                           "(`make export calibrate`, needs torch)")
    paths = shipped_paths(checkpoint)
    for path in paths.values():
        if not path.is_file() or manifest["files"].get(path.name) != sha256_file(path):
            raise ShippedError(f"{path}: missing or not the file {manifest_path(checkpoint).name} lists")
    return paths


def ensure_from_models(build: Path, checkpoint: Path) -> None:
    """build/model.VARIANT.onnx from models/ (no torch needed); unchanged files are not rewritten."""
    for variant, source in verify(checkpoint).items():
        target = build / onnx_name(variant)
        if not target.is_file() or sha256_file(target) != sha256_file(source):
            atomic_write_bytes(target, source.read_bytes())
    print(f"ONNX from {checkpoint.parent}/ (shipped with {checkpoint.name}, no PyTorch here): "
          f"{', '.join(onnx_name(v) for v in VARIANTS)} in {build}/")


# ---- check --------------------------------------------------------------------------------------------


def canonical_names(graph) -> dict[str, str]:
    """Each tensor named by where it sits: graph inputs by position, node outputs by (node, slot), weights by their
    first reader. The exporter numbers its tensors from a global counter (a symbolic batch axis shifts them: "add"
    becomes "add_255"), so names alone would call two identical graphs different."""
    names = {value.name: f"input{i}" for i, value in enumerate(graph.input)}
    for index, node in enumerate(graph.node):
        for slot, name in enumerate(node.input):
            if name and name not in names:  # nodes are in topological order: an unnamed input is a weight
                names[name] = f"weight{index}.{slot}"
        for slot, name in enumerate(node.output):
            names[name] = f"node{index}.{slot}"
    return names


def graph_signature(model) -> dict:
    from onnx import helper, numpy_helper

    graph = model.graph
    names = canonical_names(graph)
    return {
        "nodes": [(n.op_type, n.domain, tuple(names.get(i, i) for i in n.input),
                   tuple(sorted((a.name, repr(helper.get_attribute_value(a))) for a in n.attribute)))
                  for n in graph.node],
        "initializers": {names.get(i.name, i.name): (tuple(i.dims), i.data_type) for i in graph.initializer},
        "opsets": sorted((o.domain, o.version) for o in model.opset_import),
        "metadata": {p.key: p.value for p in model.metadata_props if p.key not in VOLATILE_METADATA},
        "_arrays": {names.get(i.name, i.name): numpy_helper.to_array(i) for i in graph.initializer},
    }


def compare_weights(shipped: dict, fresh: dict) -> list[str]:
    problems = []
    for name, array in shipped.items():
        other = fresh[name]
        if np.issubdtype(array.dtype, np.floating):
            if not np.allclose(array.astype(np.float64), other.astype(np.float64), rtol=1e-3, atol=1e-6):
                problems.append(f"float initializer {name} differs")
        elif array.size:
            steps = np.abs(array.astype(np.int64) - other.astype(np.int64))
            if steps.max() > 1 or np.mean(steps == 0) < MASK_AGREEMENT:
                problems.append(f"integer initializer {name}: {np.mean(steps != 0):.3%} entries differ, "
                                f"up to {steps.max()} steps")
    return problems


def masks(model_path: Path, frames: np.ndarray) -> np.ndarray:
    import onnx
    import onnxruntime as ort

    from export.fp16 import emulation_graph

    model = onnx.load(str(model_path))
    has_fp16 = any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    data = (emulation_graph(model) if has_fp16 else model).SerializeToString()
    options = ort.SessionOptions()
    if has_fp16:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep the FP16 rounding
    ort_session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    name = ort_session.get_inputs()[0].name
    return np.concatenate([ort_session.run(None, {name: frames[i : i + 1]})[0].argmax(1) for i in range(len(frames))])


def check_pair(shipped: Path, fresh: Path, frames: np.ndarray) -> list[str]:
    """What differs between a shipped file and a fresh export; ShippedError naming them when either cannot be
    read or run (onnx and ONNX Runtime raise their own types for a damaged file)."""
    try:
        return compare_pair(shipped, fresh, frames)
    except ShippedError:
        raise
    except Exception as error:  # noqa: BLE001 - one line naming the files, whatever the library raised
        reason = shorten(str(error).strip().splitlines()[0] if str(error).strip() else "", 160)
        raise ShippedError(f"{shipped} vs {fresh}: cannot be compared ({type(error).__name__}: {reason})") from error


def compare_pair(shipped: Path, fresh: Path, frames: np.ndarray) -> list[str]:
    import onnx

    a, b = graph_signature(onnx.load(str(shipped))), graph_signature(onnx.load(str(fresh)))
    problems = [f"{field} differ" for field in ("nodes", "initializers", "opsets", "metadata") if a[field] != b[field]]
    if problems:
        return problems
    problems += compare_weights(a["_arrays"], b["_arrays"])
    agreement = float(np.mean(masks(shipped, frames) == masks(fresh, frames)))
    if agreement < MASK_AGREEMENT:
        problems.append(f"road masks agree on {agreement:.4%} of pixels (< {MASK_AGREEMENT:.1%})")
    return problems


def check(build: Path, checkpoint: Path) -> list[str]:
    """One line per shipped file; ShippedError naming the first that does not match a fresh export."""
    paths = verify(checkpoint)
    tensors = build / "calibration" / "tensors.npy"
    if not tensors.is_file():
        raise ShippedError(f"{tensors}: not found; run `make calibrate` (it regenerates build/ from the .pt)")
    frames = np.ascontiguousarray(np.load(tensors, mmap_mode="r")[:FRAMES], np.float32)
    lines = []
    for variant, shipped in paths.items():
        fresh = build / onnx_name(variant)
        if not fresh.is_file():
            raise ShippedError(f"{fresh}: not found; run `make calibrate` first")
        problems = check_pair(shipped, fresh, frames)
        if problems:
            raise ShippedError(f"{shipped} does not match {fresh}: {'; '.join(problems)}; if the export or "
                               "calibration changed on purpose, run `python -m export.shipped write`")
        same = "byte-identical" if sha256_file(shipped) == sha256_file(fresh) else "equivalent"
        lines.append(f"{shipped.name}: {same} to {fresh} ({shipped.stat().st_size / 1e6:.1f} MB)")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.shipped", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("write", "check"))
    parser.add_argument("--build", default="build")
    parser.add_argument("--checkpoint", default=SHIPPED_CHECKPOINT)
    args = parser.parse_args(argv)
    build, checkpoint = Path(args.build), Path(args.checkpoint)
    try:
        if args.action == "write":
            for path in write(build, checkpoint):
                print(f"wrote {path}")
        else:
            for line in check(build, checkpoint):
                print(line)
    except (ShippedError, OSError, ValueError) as error:
        return fail(error, 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
