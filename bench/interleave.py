"""Speed-ups over PyTorch eager FP32 that hold on a shared machine: each candidate against torch measured
just before it, in alternating blocks, every contender in a process of its own.

    python -m bench.interleave --checkpoint models/fcn8s_vgg16_w0.25_cpu.pt --size 192x640 \\
        --candidate 'onnxruntime int8|onnxruntime|auto|build/model.int8_cpu.onnx' [--rounds 7] [--runs 5] --json OUT

Two models side by side (each candidate at its own input size, against the same torch baseline):
`--other-sizes --candidate 'A|onnxruntime|auto|a.onnx' --candidate 'B|onnxruntime|auto|b.onnx'`; their latency
ratio is the ratio of their block medians, both measured in the same alternating rounds.

A round is, for every candidate in turn: one torch block, then the candidate's block (each block: one
untimed run, then --runs timed ones on the same real frame). The ratio of a pair is torch's block median over
the candidate's; a change in the machine's speed between rows of `make bench` (seconds apart) no longer
moves it, because both halves of a pair are measured within a second of each other.

Each contender (torch, every candidate) is loaded in its own child process that times a block when told to
and otherwise waits on its pipe. So no library's thread pool shares a process with another's: in one process,
ONNX Runtime's or OpenVINO's idle workers and torch's OpenMP threads contend for the same two cores and move
torch's time by more than the ratios being judged (seen: torch 672 ms a block in the shared process against
53 ms as a row of its own). Only the torch child imports torch.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np

from bench.worker import BenchError, load_frames
from runtime.ioutil import atomic_write_text, fail
from runtime.paths import DEFAULT_VIDEO
from runtime.preprocess import FramePreprocessor

WARMUP_RUNS = 3
SETTLE_S = 0.05  # between blocks: lets the last contender's worker threads stop spinning before the next runs
READY = "ready"
CHILD_TIMEOUT_S = 600.0


def block_ms(infer, batch: np.ndarray, runs: int) -> float:
    infer(batch)
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        infer(batch)
        samples.append((time.perf_counter() - start) * 1000.0)
    return float(np.median(samples))


def parse_candidate(text: str) -> tuple[str, str, str, str]:
    parts = text.split("|")
    if len(parts) != 4 or parts[1] not in ("onnxruntime", "openvino"):
        raise BenchError(f"--candidate {text}: expected 'LABEL|onnxruntime or openvino|PRECISION|FILE'")
    return parts[0], parts[1], parts[2], parts[3]


# child side
def open_contender(args: argparse.Namespace):
    """(infer, spec) of the contender this child serves: torch eager FP32, or one candidate."""
    if args.serve == "torch":
        import torch

        from bench.prepare import build_model, parse_size
        from train.torch_predictor import TorchPredictor

        torch.set_num_threads(args.threads)
        model, spec, _, _ = build_model(args.checkpoint, args.random_width, parse_size(args.size))
        return TorchPredictor(model, spec, "cpu").infer, spec
    from runtime.backends import OnnxRuntimeBackend, open_backend

    _, backend, precision, path = parse_candidate(args.serve)
    opened = (OnnxRuntimeBackend(path, provider="cpu", threads=args.threads) if backend == "onnxruntime"
              else open_backend(path, "openvino", threads=args.threads, precision=precision))
    return opened.infer, opened.spec


def serve(args: argparse.Namespace) -> int:
    """Load, warm up, say ready; then one line per block asked for (`block N` -> its median ms), until EOF."""
    infer, spec = open_contender(args)
    batch = FramePreprocessor(spec)(load_frames(args.video, 1)[0]).copy()
    # Every library's first runs in a process are several times slower (primitives, allocations).
    for _ in range(WARMUP_RUNS):
        infer(batch)
    print(f"{READY} {spec.input_height}x{spec.input_width}", flush=True)
    for line in sys.stdin:
        command, _, count = line.partition(" ")
        if command != "block":
            break
        print(f"{block_ms(infer, batch, int(count)):.4f}", flush=True)
    return 0


# coordinator side
class Contender:
    """A child process that times blocks of one contender on request."""

    def __init__(self, label: str, serve_as: str, args: argparse.Namespace) -> None:
        source = (["--checkpoint", args.checkpoint] if args.checkpoint
                  else ["--random-width", str(args.random_width)])
        command = [sys.executable, "-m", __spec__.name, *source, "--size", args.size, "--threads",
                   str(args.threads), "--video", args.video, "--serve", serve_as]
        self.label = label
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
        reply = self._reply()
        if not reply.startswith(READY):
            raise BenchError(f"{label}: could not be loaded ({self._error()})")
        self.size = reply.split()[1]

    def _reply(self) -> str:
        line = self.process.stdout.readline()
        return line.strip()

    def _error(self) -> str:
        self.process.kill()
        lines = self.process.communicate(timeout=CHILD_TIMEOUT_S)[1].strip().splitlines()
        return lines[-1] if lines else f"exit {self.process.returncode}"

    def block(self, runs: int) -> float:
        self.process.stdin.write(f"block {runs}\n")
        self.process.stdin.flush()
        reply = self._reply()
        try:
            return float(reply)
        except ValueError:
            raise BenchError(f"{self.label}: stopped during a block ({self._error()})") from None

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def run(args: argparse.Namespace) -> dict:
    contenders: list[Contender] = []
    try:
        baseline = Contender("torch eager fp32", "torch", args)
        contenders.append(baseline)
        for text in args.candidate:
            label = parse_candidate(text)[0]
            contenders.append(Contender(label, text, args))
            if contenders[-1].size != args.size and not args.other_sizes:
                raise BenchError(f"{label}: input {contenders[-1].size} is not --size {args.size}")
        results = {c.label: {"torch_ms": [], "ms": [], "ratios": []} for c in contenders[1:]}
        for _ in range(args.rounds):
            for candidate in contenders[1:]:
                torch_ms = baseline.block(args.runs)
                time.sleep(SETTLE_S)
                candidate_ms = candidate.block(args.runs)
                time.sleep(SETTLE_S)
                entry = results[candidate.label]
                entry["torch_ms"].append(round(torch_ms, 3))
                entry["ms"].append(round(candidate_ms, 3))
                entry["ratios"].append(round(torch_ms / candidate_ms, 3))
    finally:
        for contender in contenders:
            contender.close()
    sizes = {c.label: c.size for c in contenders}
    return {"size": args.size, "sizes": sizes, "threads": args.threads, "rounds": args.rounds,
            "runs_per_block": args.runs, "processes": "one per contender", "candidates": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.interleave", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint")
    source.add_argument("--random-width", type=float)
    parser.add_argument("--size", required=True)
    parser.add_argument("--candidate", action="append", default=[], help="LABEL|BACKEND|PRECISION|FILE")
    parser.add_argument("--other-sizes", action="store_true",
                        help="candidates may run at their own input size (comparing models, not files of one)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--runs", type=int, default=5, help="timed runs per block")
    parser.add_argument("--video", default=DEFAULT_VIDEO)
    parser.add_argument("--json", help="write the ratios here (required unless --serve)")
    parser.add_argument("--serve", help=argparse.SUPPRESS)  # a child: 'torch' or one --candidate's text
    args = parser.parse_args(argv)
    from runtime.contract import ModelFileError

    try:
        if args.serve:
            return serve(args)
        if not args.json:
            raise BenchError("--json is required")
        if not args.candidate or args.rounds < 1 or args.runs < 1:
            raise BenchError("need at least one --candidate, --rounds >= 1 and --runs >= 1")
        result = run(args)
    except (BenchError, ModelFileError, ValueError, OSError) as error:
        return fail(error)
    atomic_write_text(args.json, json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
