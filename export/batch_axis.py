"""Give an existing batch-1 ONNX file a symbolic batch axis, without PyTorch or a re-export.

    python -m export.batch_axis models/fcn8s_vgg16_w0.25_cpu.int8_cpu.onnx build/model.int8_cpu.batch.onnx

`python -m export` writes the batch axis symbolic already; this is for files made with a fixed batch of 1 (older
exports, `--static-batch`, the files shipped in models/). The graph input and output get the batch dimension
`batch`, every intermediate shape is left to the runtime's shape inference, and the result is written only after
one batch of 3 random frames gave the same road masks as 3 single calls on ONNX Runtime (a graph that folds the
batch into a Reshape would fail here instead of miscounting frames at run time).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx

from export.onnx_export import BATCH_AXIS
from runtime.ioutil import atomic_write_bytes, fail

CHECK_BATCH = 3


def with_symbolic_batch(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose graph inputs and outputs take any batch; ValueError when the batch axis is not 1 or not there."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    for value in [v for v in graph.input if v.name not in initializers] + list(graph.output):
        dims = value.type.tensor_type.shape.dim
        if not dims or not (dims[0].dim_param or dims[0].dim_value == 1):
            raise ValueError(f"'{value.name}' has no batch axis of 1 to make symbolic")
        dims[0].Clear()
        dims[0].dim_param = BATCH_AXIS
    del graph.value_info[:]  # intermediate shapes carried batch 1: inferred again by the runtime
    return model


def masks_agree(data: bytes, batch: int = CHECK_BATCH) -> bool:
    """One call on `batch` random frames gives the argmax of `batch` single calls, on ONNX Runtime CPU."""
    import onnxruntime as ort

    ort_session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    info = ort_session.get_inputs()[0]
    shape = [batch, *[int(d) for d in info.shape[1:]]]
    rng = np.random.default_rng(0)
    frames = (rng.integers(0, 256, shape, dtype=np.uint8) if info.type == "tensor(uint8)"
              else rng.standard_normal(shape).astype(np.float32))
    together = ort_session.run(None, {info.name: frames})[0]
    alone = np.concatenate([ort_session.run(None, {info.name: frames[i:i + 1]})[0] for i in range(batch)])
    if together.ndim == 4:  # logits: compare the masks
        together, alone = together.argmax(1), alone.argmax(1)
    return together.shape[0] == batch and np.array_equal(together, alone)


def convert(source: Path, target: Path) -> None:
    if source.resolve() == target.resolve():
        raise ValueError(f"{target}: would overwrite its input; give another output path")
    try:
        model = onnx.load(str(source))
    except Exception as error:  # noqa: BLE001 - onnx raises its own types for foreign files
        raise ValueError(f"{source}: not a readable ONNX file ({type(error).__name__})") from error
    try:
        converted = with_symbolic_batch(model)
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from error
    data = converted.SerializeToString()
    if not masks_agree(data):
        raise ValueError(f"{source}: a batch of {CHECK_BATCH} does not give the masks of {CHECK_BATCH} single calls "
                         "with a symbolic batch axis; re-export it with `python -m export`")
    atomic_write_bytes(target, data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.batch_axis", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="a roadseg ONNX file with a batch axis of 1")
    parser.add_argument("target", type=Path, help="where to write the symbolic-batch copy")
    args = parser.parse_args(argv)
    try:
        convert(args.source, args.target)
    except (ValueError, OSError) as error:
        return fail(error)
    print(f"wrote {args.target} (batch axis '{BATCH_AXIS}': 1..any; masks of a batch of {CHECK_BATCH} checked)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
