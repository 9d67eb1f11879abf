"""Speed-ups over PyTorch eager FP32 that hold on a shared machine: each candidate against torch measured
just before it, in alternating blocks, all in one process.

    python -m bench.interleave --checkpoint models/fcn8s_vgg16_w0.25_cpu.pt --size 192x640 \\
        --candidate 'onnxruntime int8|onnxruntime|auto|build/model.int8_cpu.onnx' [--rounds 7] [--runs 5] --json OUT

A round is, for every candidate in turn: one torch block, then the candidate's block (each block: one
untimed run, then --runs timed ones on the same real frame). The ratio of a pair is torch's block median over
the candidate's; a change in the machine's speed between rows of `make bench` (seconds apart) no longer
moves it, because both halves of a pair are measured within a second of each other. Lives in train/
because it runs torch; bench/openvino_rows.py launches it and reports the spread of the ratios.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from bench.prepare import build_model, parse_size
from bench.worker import BenchError, load_frames
from runtime.ioutil import atomic_write_text, fail
from runtime.paths import DEFAULT_VIDEO
from runtime.preprocess import FramePreprocessor

WARMUP_RUNS = 3
SETTLE_S = 0.05  # between blocks: lets one library's idle worker threads stop spinning before the next runs


def block_ms(infer, batch: np.ndarray, runs: int) -> float:
    infer(batch)
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        infer(batch)
        samples.append((time.perf_counter() - start) * 1000.0)
    time.sleep(SETTLE_S)
    return float(np.median(samples))


def parse_candidate(text: str) -> tuple[str, str, str, str]:
    parts = text.split("|")
    if len(parts) != 4 or parts[1] not in ("onnxruntime", "openvino"):
        raise BenchError(f"--candidate {text}: expected 'LABEL|onnxruntime or openvino|PRECISION|FILE'")
    return parts[0], parts[1], parts[2], parts[3]


def run(args: argparse.Namespace) -> dict:
    import torch

    from runtime.backends import OnnxRuntimeBackend, open_backend
    from train.torch_predictor import TorchPredictor

    torch.set_num_threads(args.threads)
    model, spec, _, _ = build_model(args.checkpoint, args.random_width, parse_size(args.size))
    baseline = TorchPredictor(model, spec, "cpu")
    opened = {}
    for label, backend, precision, path in map(parse_candidate, args.candidate):
        opened[label] = (OnnxRuntimeBackend(path, provider="cpu", threads=args.threads) if backend == "onnxruntime"
                         else open_backend(path, "openvino", threads=args.threads, precision=precision))
        if opened[label].spec.size_hw != spec.size_hw:
            raise BenchError(f"{path}: input {opened[label].spec.size_hw} is not --size {args.size}")
    batch = FramePreprocessor(spec)(load_frames(args.video, 1)[0]).copy()
    # torch's first runs in a process are several times slower (oneDNN primitives, allocations): warm every
    # contender up before the first timed block, or the first rounds' ratios flatter the candidates.
    for infer in (baseline.infer, *(backend.infer for backend in opened.values())):
        for _ in range(WARMUP_RUNS):
            infer(batch)
    results = {label: {"torch_ms": [], "ms": [], "ratios": []} for label in opened}
    for _ in range(args.rounds):
        for label, candidate in opened.items():
            torch_ms = block_ms(baseline.infer, batch, args.runs)
            candidate_ms = block_ms(candidate.infer, batch, args.runs)
            entry = results[label]
            entry["torch_ms"].append(round(torch_ms, 3))
            entry["ms"].append(round(candidate_ms, 3))
            entry["ratios"].append(round(torch_ms / candidate_ms, 3))
    return {"size": args.size, "threads": args.threads, "rounds": args.rounds, "runs_per_block": args.runs,
            "candidates": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.interleave", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint")
    source.add_argument("--random-width", type=float)
    parser.add_argument("--size", required=True)
    parser.add_argument("--candidate", action="append", default=[], help="LABEL|BACKEND|PRECISION|FILE")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--runs", type=int, default=5, help="timed runs per block")
    parser.add_argument("--video", default=DEFAULT_VIDEO)
    parser.add_argument("--json", required=True)
    args = parser.parse_args(argv)
    from runtime.contract import ModelFileError

    try:
        if not args.candidate or args.rounds < 1 or args.runs < 1:
            raise BenchError("need at least one --candidate, --rounds >= 1 and --runs >= 1")
        result = run(args)
    except (BenchError, ModelFileError, ValueError, OSError) as error:
        return fail(error)
    atomic_write_text(args.json, json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
