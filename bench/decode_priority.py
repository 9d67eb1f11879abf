"""How a file's read-ahead decoder should yield to the pipeline: niceness 10 against SCHED_IDLE, on a quiet machine
and with other processes keeping the cores busy.

    python -m bench.decode_priority [--model M] [--video V] [--frames 108] [--rounds 3] [--busy 2]

Per load (quiet, then --busy processes spinning at normal priority), in alternating rounds: the KITTI drive through
the runtime's default loop (runtime.pipeline.run_pipeline, no outputs) with each read-ahead policy, and inference
alone in a tight loop for scale. Prints frames/s per round; the policy the runtime uses is
runtime.sources.READ_AHEAD_POLICY.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import runtime.sources as sources
from bench.multicam import single_loop_fps
from runtime.backend_choice import open_requested
from runtime.backends import Backend
from runtime.contract import ModelFileError
from runtime.ioutil import fail
from runtime.machine import cpu_model
from runtime.model_select import default_model
from runtime.paths import DEFAULT_VIDEO
from runtime.pipeline import frame_preprocessor

POLICIES = ("nice", "idle")
SPIN = "while True: pass"


def stream_fps(backend: Backend, video: str, frames: int, policy: str) -> float:
    sources.READ_AHEAD_POLICY = policy
    return single_loop_fps(sources.open_video(video, sources.SourceOptions(max_frames=frames)), backend)


def inference_fps(backend: Backend, calls: int = 40) -> float:
    preprocess = frame_preprocessor(backend)
    started = time.perf_counter()
    for _ in range(calls):
        backend.infer(preprocess.input_tensor)
    return calls / (time.perf_counter() - started)


def measure(backend: Backend, args: argparse.Namespace, busy: int) -> dict[str, list[float]]:
    spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(busy)]
    try:
        rows: dict[str, list[float]] = {policy: [] for policy in (*POLICIES, "inference alone")}
        for round_number in range(args.rounds):
            for policy in POLICIES if round_number % 2 == 0 else POLICIES[::-1]:
                rows[policy].append(stream_fps(backend, args.video, args.frames, policy))
            rows["inference alone"].append(inference_fps(backend))
        return rows
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.decode_priority", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", metavar="PATH", help="default: the best model for this machine")
    parser.add_argument("--video", default=DEFAULT_VIDEO)
    parser.add_argument("--frames", type=int, default=108, help="frames per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--busy", type=int, default=2, help="busy processes for the loaded measurement")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        model = Path(args.model) if args.model else default_model()
        backend, choice = open_requested(model, "auto", "auto", "auto")
    except (ModelFileError, OSError) as error:
        return fail(error)
    if choice is not None:
        print(choice.line())
    print(f"{time.strftime('%Y-%m-%d %H:%M')}  {cpu_model()}; model {model}: {backend.name} {backend.precision}; "
          f"{args.frames} frames of {args.video} per run, frames/s per round")
    for busy in (0, args.busy):
        rows = measure(backend, args, busy)
        load = "quiet" if busy == 0 else f"{busy} busy processes"
        print(f"{load}:")
        for name, values in rows.items():
            print(f"  {name:16s} " + "  ".join(f"{value:6.1f}" for value in values))
    return 0


if __name__ == "__main__":
    sys.exit(main())
