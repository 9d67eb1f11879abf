"""Model files are untrusted input: a checkpoint never runs code, and a model's metadata is checked against its graph.

The fuzz cases are generated here from a seeded generator (a fresh seed each run, printed on failure; set
ROADSEG_FUZZ_SEED to replay one): mutations of a real checkpoint, of a real ONNX model's metadata and of an engine
sidecar. Every entry point that takes a model must end in success or one `error:` line with a non-zero exit:
never a traceback, a hang, or the marker file a malicious pickle tries to write.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import random
import subprocess
import zipfile
from collections.abc import Callable
from pathlib import Path

import onnx
import pytest
import torch
from conftest import REPO, run_cli
from entry_points import call_main as call_entry_point
from stream_helpers import assert_one_error_line, run_stream, tiny_onnx_model

from runtime.contract import PRECISION_KEY, PREPROCESS_KEY, SIDECAR_FORMAT

SEED = int(os.environ.get("ROADSEG_FUZZ_SEED", random.SystemRandom().randrange(2**32)))


def call_main(main: Callable[[list[str]], int], argv: list[str], case: str) -> tuple[int, str]:
    return call_entry_point(main, argv, f"[seed {SEED}] {case}")


CASES_PER_KIND = int(os.environ.get("ROADSEG_FUZZ_CASES", "30"))


class MarkerPayload:
    """Unpickling this runs `callable(*arguments)`: here, code that writes a marker file."""

    def __init__(self, callable_: Callable, arguments: tuple) -> None:
        self.callable, self.arguments = callable_, arguments

    def __reduce__(self):
        return self.callable, self.arguments


def marker_payloads(marker: Path) -> list[MarkerPayload]:
    command = f"touch {marker}"
    return [MarkerPayload(os.system, (command,)), MarkerPayload(subprocess.call, (["touch", str(marker)],)),
            MarkerPayload(eval, (f"open({str(marker)!r}, 'w').close()",)),
            MarkerPayload(exec, (f"open({str(marker)!r}, 'w').close()",))]


# ------------------------------------------------------------------------------------------------- mutations

def odd_values(rng: random.Random) -> list:
    return [None, True, -1, 0, 2**63, -(10**9), 1e308, float("nan"), float("inf"), -0.0, "", "road",
            "x" * rng.randint(1, 5000), [], {}, [1], [0.5] * rng.randint(0, 9), {"a": 1},
            rng.uniform(-1e6, 1e6), rng.randint(-10**6, 10**6)]


def nodes(tree, path=()):
    """Every (path, value) in a nested dict/list tree, the root included."""
    yield path, tree
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from nodes(value, (*path, key))
    elif isinstance(tree, (list, tuple)):
        for index, value in enumerate(tree):
            yield from nodes(value, (*path, index))


def set_at(tree, path, value, delete: bool = False):
    parent = tree
    for key in path[:-1]:
        parent = parent[key]
    if isinstance(parent, tuple):  # tuples are immutable: rebuild the parent
        items = list(parent)
        if delete:
            del items[path[-1]]
        else:
            items[path[-1]] = value
        return set_at(tree, path[:-1], tuple(items))
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return tree


def mutate_tree(tree, rng: random.Random, odd_tensor: Callable | None = None):
    """One structural mutation: a field removed, retyped, set to an extreme value, or a tensor reshaped."""
    tree = copy.deepcopy(tree)
    candidates = [path for path, _ in nodes(tree) if path]
    path = rng.choice(candidates)
    value = dict(nodes(tree))[path]
    choice = rng.random()
    if choice < 0.25:
        return set_at(tree, path, None, delete=True)
    if odd_tensor is not None and isinstance(value, torch.Tensor) and choice < 0.6:
        return set_at(tree, path, odd_tensor(value, rng))
    return set_at(tree, path, rng.choice(odd_values(rng)))


def odd_tensor(value: torch.Tensor, rng: random.Random) -> torch.Tensor:
    options = [torch.zeros(0), value.flatten(), value.to(torch.int64), value.double(),
               torch.full_like(value, float("nan")), torch.zeros(tuple(s + 1 for s in value.shape))]
    return rng.choice(options)


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    choice = rng.random()
    if choice < 0.3:
        return data[:rng.randrange(len(data))]
    if choice < 0.8:
        buffer = bytearray(data)
        for _ in range(rng.randint(1, 64)):
            buffer[rng.randrange(len(buffer))] = rng.randrange(256)
        return bytes(buffer)
    return rng.randbytes(rng.choice([0, 1, 100, 5000]))


# ------------------------------------------------------------------------------------------------- running

@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    return tiny_onnx_model(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def still_image(tmp_path_factory) -> Path:
    import cv2
    import numpy as np

    path = tmp_path_factory.mktemp("frame") / "frame.png"
    cv2.imwrite(str(path), np.random.default_rng(0).integers(0, 255, (120, 400, 3), np.uint8))
    return path


def checkpoint_entry_points(data: Path, out: Path) -> dict[str, Callable[[Path], list[str]]]:
    """argv builders for every CLI that reads a .pt checkpoint (train --resume takes a training state)."""
    return {
        "python -m train.evaluate --model": lambda p: ["--model", str(p), "--data", str(data), "--no-progress"],
        "python -m export --checkpoint": lambda p: ["--checkpoint", str(p), "--build", str(out / "export"),
                                                    "--data", str(data), "--no-fp16", "--no-progress",
                                                    "--parity-frames", "2"],
        "python -m train --init-checkpoint": lambda p: ["--config", "smoke", "--data", str(data),
                                                        "--init-checkpoint", str(p), "--epochs", "1",
                                                        "--max-steps-per-epoch", "1", "--no-progress",
                                                        "--output-dir", str(out / "init")],
    }


def resume_argv(data: Path, out: Path, path: Path) -> list[str]:
    return ["--config", "smoke", "--data", str(data), "--resume", str(path), "--epochs", "1",
            "--max-steps-per-epoch", "1", "--no-progress", "--output-dir", str(out / "resume")]


def entry_main(name: str) -> Callable[[list[str]], int]:
    if name.startswith("python -m train.evaluate"):
        from train.evaluate import main
    elif name.startswith("python -m export"):
        from export.__main__ import main
    elif name.startswith("python -m train"):
        from train.train import main
    else:
        from runtime.stream import main
    return main


# ------------------------------------------------------------------------------------------------- checkpoints

def test_crafted_pickle_runs_no_code_in_any_reader(tiny_checkpoint: Path, synthetic_kitti: Path, tmp_path: Path):
    """The known exploit: a tagged checkpoint whose pickle calls os.system, through real processes."""
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "roadseg-checkpoint-v1", "arch": MarkerPayload(os.system, (f"touch {marker}",))}, evil)
    for name, argv in checkpoint_entry_points(synthetic_kitti, tmp_path).items():
        module = name.split()[2]
        result = run_cli("-m", module, *argv(evil), timeout=120)
        line = assert_one_error_line(result.stderr)
        assert result.returncode != 0 and str(evil) in line and "posix.system" in line, (name, line)
        assert not marker.exists(), f"{name} ran the checkpoint's code"
    resume = run_cli("-m", "train", "--config", "smoke", "--data", str(synthetic_kitti), "--resume", str(evil),
                     "--output-dir", str(tmp_path / "resume"), "--no-progress")
    assert resume.returncode != 0 and "loading it could run code" in assert_one_error_line(resume.stderr)
    assert not marker.exists()


def test_old_and_shipped_checkpoints_still_load(tmp_path: Path):
    """The shipped model, and a training state from before RNG states were plain data, load as data."""
    import numpy as np

    from train.checkpoint import load_model, read_checkpoint

    model, spec, payload = load_model(REPO / "models" / "fcn8s_vgg16_w0.25_cpu.pt")
    assert spec.size_hw == (192, 640) and payload["arch"]["width"] == 0.25
    old_state = {**payload, "rng": {"numpy": np.random.get_state()}}
    torch.save(old_state, tmp_path / "old_last.pt")
    restored = read_checkpoint(tmp_path / "old_last.pt")["rng"]["numpy"]
    assert restored[0] == "MT19937" and np.array_equal(restored[1], np.random.get_state()[1])


@pytest.mark.parametrize("optimizer, expected", [
    ({"state": -1000000000, "param_groups": []}, "optimizer.state"),
    ({"state": {}, "param_groups": [{"params": "0"}]}, "optimizer.param_groups.params"),
    ({"state": {0: [1.0]}, "param_groups": []}, "optimizer.state"),
    ({"state": {}}, "optimizer.param_groups"),
])
def test_damaged_optimizer_state_is_refused_in_one_line(tiny_checkpoint: Path, tmp_path: Path, optimizer, expected):
    """torch's own optimizer loader raises AttributeError deep inside on these: the contract is checked first."""
    from train.checkpoint import CheckpointError, validate_training_state

    state = torch.load(tiny_checkpoint.with_name("last.pt"), weights_only=True)
    validate_training_state(state, tmp_path / "last.pt")  # the undamaged training state passes
    with pytest.raises(CheckpointError, match=f"last.pt: field '{expected}'"):
        validate_training_state(state | {"optimizer": optimizer}, tmp_path / "last.pt")


@pytest.mark.parametrize("field, value, expected", [
    ("arch", {"name": "fcn8s_vgg16", "width": 0.125, "num_classes": 2, "extra": 1}, "unknown field 'arch.extra'"),
    ("arch", {"name": "fcn8s_vgg16", "width": 1e9, "num_classes": 2}, "arch.width"),
    ("arch", {"name": "resnet", "width": 0.125, "num_classes": 2}, "arch.name"),
    ("preprocess", json.dumps({"input_height": 100000, "input_width": 100000, "mean": [0.5] * 3,
                               "std": [0.2] * 3, "class_names": ["not_road", "road"]}), "input_height"),
    ("model", {}, "missing tensor"),
])
def test_structure_errors_name_the_file_and_field(tiny_checkpoint: Path, tmp_path: Path, field, value, expected):
    from train.checkpoint import CheckpointError, read_checkpoint

    payload = torch.load(tiny_checkpoint, weights_only=True)
    payload[field] = value
    path = tmp_path / "broken.pt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError) as error:
        read_checkpoint(path)
    assert str(path) in str(error.value) and expected in str(error.value)


def test_resized_weight_is_named(tiny_checkpoint: Path, tmp_path: Path):
    from train.checkpoint import CheckpointError, read_checkpoint

    payload = torch.load(tiny_checkpoint, weights_only=True)
    name = next(iter(payload["model"]))
    payload["model"][name] = torch.zeros(3)
    torch.save(payload, tmp_path / "resized.pt")
    with pytest.raises(CheckpointError, match=f"'{name}' has shape"):
        read_checkpoint(tmp_path / "resized.pt")


def checkpoint_cases(tiny_checkpoint: Path, training_state: Path, tmp_path: Path, rng: random.Random,
                     marker: Path) -> list[tuple[str, Path]]:
    """(description, file) pairs: structural mutations, byte damage and code-running pickles."""
    payload = torch.load(tiny_checkpoint, weights_only=True)
    raw = tiny_checkpoint.read_bytes()
    cases = []
    for index in range(CASES_PER_KIND):
        path = tmp_path / f"case{index}.pt"
        kind = rng.choice(["tree", "tree", "tree", "bytes", "pickle", "archive"])
        if kind == "tree":
            torch.save(mutate_tree(payload, rng, odd_tensor), path)
        elif kind == "bytes":
            path.write_bytes(mutate_bytes(raw, rng))
        elif kind == "pickle":
            bomb = rng.choice(marker_payloads(marker))
            host = copy.deepcopy(payload)
            where = rng.choice([p for p, _ in nodes(host) if p and not isinstance(dict(nodes(host))[p], torch.Tensor)])
            torch.save(set_at(host, where, bomb), path)
        else:  # a plain pickle file, not torch's zip archive: torch's legacy reader path
            with open(path, "wb") as stream:
                pickle.dump({"format": "roadseg-checkpoint-v1", "arch": rng.choice(marker_payloads(marker))}, stream)
        cases.append((f"{kind} #{index}", path))
    state = torch.load(training_state, weights_only=True)
    for index in range(CASES_PER_KIND // 2):
        path = tmp_path / f"state{index}.pt"
        torch.save(mutate_tree({k: v for k, v in state.items() if k != "model"} | {"model": state["model"]}, rng,
                               odd_tensor), path)
        cases.append((f"training state #{index}", path))
    return cases


@pytest.mark.slow
def test_fuzzed_checkpoints_end_cleanly_in_every_reader(tiny_checkpoint: Path, synthetic_kitti: Path,
                                                         tmp_path: Path):
    rng = random.Random(SEED)
    marker = tmp_path / "MARKER"
    cases = checkpoint_cases(tiny_checkpoint, tiny_checkpoint.with_name("last.pt"), tmp_path, rng, marker)
    entry_points = checkpoint_entry_points(synthetic_kitti, tmp_path)
    outcomes = {name: [0, 0] for name in [*entry_points, "python -m train --resume"]}
    for description, path in cases:
        # A training state (last.pt) is what --resume reads; the weights readers get the damaged model files.
        names = [] if description.startswith("training state") else list(entry_points)
        for name in [*names, "python -m train --resume"]:
            resume = name.endswith("--resume")
            argv = resume_argv(synthetic_kitti, tmp_path, path) if resume else entry_points[name](path)
            code, _ = call_main(entry_main(name), argv, f"{name} {description}")
            outcomes[name][code == 0] += 1
            assert not marker.exists(), f"[seed {SEED}] {name} {description} ran the file's code"
    print(f"seed {SEED}: checkpoint cases per entry point (refused, accepted): {outcomes}")
    assert all(refused > 0 for refused, _ in outcomes.values())


# ------------------------------------------------------------------------------------------------- ONNX metadata

def with_metadata(model: onnx.ModelProto, changes: dict[str, str | None]) -> onnx.ModelProto:
    model = copy.deepcopy(model)
    props = {p.key: p.value for p in model.metadata_props}
    for key, value in changes.items():
        if value is None:
            props.pop(key, None)
        else:
            props[key] = value
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    return model


@pytest.mark.parametrize("change, expected", [
    ({"input_height": 100000, "input_width": 100000}, "'input_height' must be an integer in 1..4096"),
    ({"mean": [0.5]}, "'mean' must hold 3 numbers"),
    ({"class_names": ["background", "sky"]}, "'class_names' has no 'road' class"),
    ({"input_height": 64}, "does not match the metadata's"),
    ({"std": [0.2, 0.0, 0.2]}, "'std' values must be finite"),
    ({"layout": "NHWC"}, "'layout' must be one of"),
])
def test_edited_metadata_gets_one_line_naming_file_and_field(tiny_onnx: Path, still_image: Path, tmp_path: Path,
                                                              change, expected):
    model = onnx.load(str(tiny_onnx))
    spec = json.loads({p.key: p.value for p in model.metadata_props}[PREPROCESS_KEY])
    edited = tmp_path / "edited.onnx"
    onnx.save(with_metadata(model, {PREPROCESS_KEY: json.dumps(spec | change)}), str(edited))
    result = run_stream(str(still_image), "--model", str(edited), "--headless", "--max-frames", "1")
    line = assert_one_error_line(result.stderr)
    assert result.returncode != 0 and str(edited) in line and expected in line, line


def metadata_cases(tiny_onnx: Path, tmp_path: Path, rng: random.Random) -> list[tuple[str, Path]]:
    model = onnx.load(str(tiny_onnx))
    props = {p.key: p.value for p in model.metadata_props}
    spec = json.loads(props[PREPROCESS_KEY])
    raw = tiny_onnx.read_bytes()
    cases = []
    for index in range(CASES_PER_KIND):
        path = tmp_path / f"meta{index}.onnx"
        kind = rng.choice(["spec", "spec", "spec", "text", "precision", "bytes"])
        if kind == "spec":
            model_out = with_metadata(model, {PREPROCESS_KEY: json.dumps(mutate_tree(spec, rng))})
        elif kind == "text":
            text = props[PREPROCESS_KEY]
            model_out = with_metadata(model, {PREPROCESS_KEY: rng.choice([
                text[:rng.randrange(len(text))], "", "null", "[]", "{" * 5000, "1e999", rng.randbytes(50).hex()])})
        elif kind == "precision":
            model_out = with_metadata(model, {PRECISION_KEY: rng.choice(["int4", "", "x" * 999, "fp16"]),
                                              PREPROCESS_KEY: rng.choice([props[PREPROCESS_KEY], None])})
        else:
            path.write_bytes(mutate_bytes(raw, rng))
            cases.append((f"{kind} #{index}", path))
            continue
        onnx.save(model_out, str(path))
        cases.append((f"{kind} #{index}", path))
    return cases


@pytest.mark.slow
def test_fuzzed_onnx_metadata_ends_cleanly(tiny_onnx: Path, still_image: Path, synthetic_kitti: Path,
                                           tmp_path: Path):
    rng = random.Random(SEED + 1)
    stream_main, evaluate_main = entry_main("stream"), entry_main("python -m train.evaluate")
    refused = 0
    for description, path in metadata_cases(tiny_onnx, tmp_path, rng):
        code, _ = call_main(stream_main, [str(still_image), "--model", str(path), "--headless", "--max-frames",
                                          "1", "--quiet"], f"stream {description}")
        refused += code != 0
        call_main(evaluate_main, ["--model", str(path), "--data", str(synthetic_kitti), "--no-progress"],
                  f"evaluate {description}")
    print(f"seed {SEED}: {CASES_PER_KIND} ONNX metadata cases per entry point, {refused} refused by the stream")
    assert refused > 0


# ------------------------------------------------------------------------------------------------- engine sidecars

def valid_sidecar(tiny_onnx: Path) -> dict:
    props = {p.key: p.value for p in onnx.load(str(tiny_onnx)).metadata_props}
    return {"format": SIDECAR_FORMAT, "metadata": props, "rebuild": "python -m engine --precision fp16",
            "cache_key": {"tensorrt": "10.3.0", "precision": "fp16",
                          "gpu": {"name": "Orin", "compute_capability": "8.7"}}}


@pytest.mark.slow
def test_fuzzed_sidecars_end_cleanly(tiny_onnx: Path, still_image: Path, synthetic_kitti: Path, tmp_path: Path):
    """Without a GPU the best a valid sidecar can reach is the one-line 'needs a CUDA GPU' refusal; every damaged
    one must be refused before that, naming the sidecar."""
    from runtime.contract import ModelFileError
    from runtime.tensorrt_backend import read_sidecar

    rng = random.Random(SEED + 2)
    sidecar = valid_sidecar(tiny_onnx)
    stream_main, evaluate_main = entry_main("stream"), entry_main("python -m train.evaluate")
    named_sidecar = 0
    for index in range(CASES_PER_KIND):
        engine = tmp_path / f"case{index}.engine"
        engine.write_bytes(rng.randbytes(256))
        text = json.dumps(sidecar)
        kind = rng.choice(["tree", "tree", "bytes"])
        if kind == "tree":
            text = json.dumps(mutate_tree(sidecar, rng), default=str)
        else:
            text = mutate_bytes(text.encode(), rng).decode("latin-1")
        Path(f"{engine}.json").write_text(text, encoding="latin-1")
        for main, argv in ((stream_main, [str(still_image), "--model", str(engine), "--headless", "--quiet"]),
                           (evaluate_main, ["--model", str(engine), "--data", str(synthetic_kitti), "--no-progress"])):
            case = f"[seed {SEED}] sidecar {kind} #{index}"
            code, stderr = call_main(main, argv, case)
            assert code != 0, case  # no GPU here: an engine never runs
            try:
                read_sidecar(engine)
                damaged = False
            except ModelFileError:
                damaged = True
            if damaged:  # refused at the sidecar, before anything looks for a GPU, and the line names it
                assert f"{engine}.json" in stderr and "needs a CUDA GPU" not in stderr, f"{case}: {stderr[-600:]}"
            else:  # a mutation the schema allows: the best it reaches is the one-line GPU refusal
                assert "needs a CUDA GPU" in stderr, f"{case}: {stderr[-600:]}"
        named_sidecar += damaged
    print(f"seed {SEED}: {CASES_PER_KIND} sidecar cases per entry point, {named_sidecar} refused at the sidecar")


def test_sidecar_checks_are_exact(tiny_onnx: Path, tmp_path: Path):
    from runtime.contract import ModelFileError, validate_sidecar

    sidecar = valid_sidecar(tiny_onnx)
    assert validate_sidecar(sidecar, tmp_path / "x.engine.json") is sidecar
    for broken, field in ((sidecar | {"rebuild": 5}, "'rebuild'"), (sidecar | {"cache_key": []}, "'cache_key'"),
                          (sidecar | {"metadata": {PREPROCESS_KEY: "{}"}}, "missing field 'class_names'"),
                          ({k: v for k, v in sidecar.items() if k != "metadata"}, "no 'metadata'")):
        with pytest.raises(ModelFileError, match=field):
            validate_sidecar(broken, tmp_path / "x.engine.json")


def test_archive_members_cannot_smuggle_code(tiny_checkpoint: Path, tmp_path: Path):
    """torch's zip checkpoints keep the pickle in data.pkl: rewriting that member alone must be caught too."""
    from train.checkpoint import CheckpointError, read_checkpoint

    marker = tmp_path / "MARKER"
    target = tmp_path / "rewritten.pt"
    with zipfile.ZipFile(tiny_checkpoint) as source, zipfile.ZipFile(target, "w") as out:
        for item in source.infolist():
            data = source.read(item)
            if item.filename.endswith("data.pkl"):
                data = pickle.dumps({"format": "roadseg-checkpoint-v1",
                                     "arch": MarkerPayload(os.system, (f"touch {marker}",))}, protocol=2)
            out.writestr(item, data)
    with pytest.raises(CheckpointError, match="loading it could run code"):
        read_checkpoint(target)
    assert not marker.exists()
