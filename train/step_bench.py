"""Training step time on CPU: FP32 vs bf16 autocast vs channels_last vs both, side by side in one run.

    python -m train.step_bench [--checkpoint models/fcn8s_efficientnet_lite0.pt] [--batch 4] [--size 192x640]
                               [--steps 6] [--rounds 3] [--numerics-steps 40 --data KITTI] [--json OUT]

One step = forward + cross-entropy + backward + optimiser step, the shipped model's config. The modes are
timed in interleaved rounds (each round runs every mode) so a neighbour's load hits all of them alike; the
figure per mode is the median step. --numerics-steps trains FP32 and bf16 + channels_last from the same
weights on the same KITTI batches and prints both loss curves: bf16 must track FP32.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from runtime.ioutil import atomic_write_text, fail
from runtime.machine import cpu_flags
from runtime.paths import DEFAULT_KITTI_DIR, SHIPPED_CHECKPOINT
from train.cpu_precision import autocast, native_bf16
from train.train import machine_description

MODES = {"fp32": (False, False), "bf16": (True, False), "fp32+channels_last": (False, True),
         "bf16+channels_last": (True, True)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m train.step_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=SHIPPED_CHECKPOINT)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", default="192x640")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per mode per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--numerics-steps", type=int, default=0)
    parser.add_argument("--data", default=DEFAULT_KITTI_DIR)
    parser.add_argument("--json")
    return parser.parse_args(argv)


def fresh_model(checkpoint: str, channels_last: bool):
    from train.checkpoint import load_model

    model, spec, _ = load_model(checkpoint)
    model.train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
    return model, optimizer, spec


def train_step(model, optimizer, images, labels, bf16: bool, channels_last: bool) -> float:
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with autocast(torch.device("cpu"), bf16):
        loss = torch.nn.functional.cross_entropy(model(images), labels, ignore_index=255)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def time_modes(args: argparse.Namespace, height: int, width: int) -> dict[str, list[float]]:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, 3, height, width, generator=generator)
    labels = torch.randint(0, 2, (args.batch, height, width), generator=generator)
    setups = {name: fresh_model(args.checkpoint, cl)[:2] for name, (_, cl) in MODES.items()}
    times: dict[str, list[float]] = {name: [] for name in MODES}
    for round_index in range(args.rounds + 1):  # round 0 warms oneDNN's kernel caches, untimed
        for name, (bf16, channels_last) in MODES.items():
            model, optimizer = setups[name]
            for _ in range(args.steps if round_index else 2):
                start = time.perf_counter()
                train_step(model, optimizer, images, labels, bf16, channels_last)
                if round_index:
                    times[name].append(time.perf_counter() - start)
    return times


def numerics(args: argparse.Namespace, height: int, width: int) -> dict[str, list[float]]:
    """Loss per step of FP32 and bf16 + channels_last from the same weights on the same augmented batches."""
    from torch.utils.data import DataLoader

    from kitti.data import find_samples, split_samples
    from runtime.contract import PreprocessSpec
    from train.dataset import Augment, RoadDataset, load_kitti_arrays

    samples = split_samples(find_samples(args.data), "train")
    images, labels = load_kitti_arrays(samples)
    dataset = RoadDataset(images, labels, PreprocessSpec(height, width), Augment(), seed=0)
    batches = []
    for batch in DataLoader(dataset, batch_size=args.batch, shuffle=True,
                            generator=torch.Generator().manual_seed(0)):
        batches.append(batch)
        if len(batches) == args.numerics_steps:
            break
    curves = {}
    for name in ("fp32", "bf16+channels_last"):
        bf16, channels_last = MODES[name]
        torch.manual_seed(0)  # the same dropout masks for both
        model, optimizer, _ = fresh_model(args.checkpoint, channels_last)
        for group in optimizer.param_groups:
            group["lr"] = 1e-3  # the cpu config's peak rate: where bf16 rounding would show
        curves[name] = [train_step(model, optimizer, x, y, bf16, channels_last) for x, y in batches]
    return curves


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        height, width = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        return fail(f"--size {args.size}: expected HxW")
    try:
        times = time_modes(args, height, width)
        curves = numerics(args, height, width) if args.numerics_steps else {}
    except (ValueError, OSError) as error:
        return fail(error)
    machine = machine_description(torch.device("cpu"))
    flags = sorted(cpu_flags() & {"amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx512_vnni"})
    print(f"machine: {machine}; flags {' '.join(flags)}; native bf16: {native_bf16()}; "
          f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}")
    print(f"batch {args.batch} at {height}x{width}, {args.checkpoint}, forward + backward + AdamW step, "
          f"median of {args.rounds} x {args.steps} interleaved steps")
    fp32 = statistics.median(times["fp32"])
    result = {"machine": machine, "flags": flags, "batch": args.batch, "size": [height, width], "modes": {}}
    for name, samples in times.items():
        median = statistics.median(samples)
        result["modes"][name] = {"median_s": median, "min_s": min(samples), "speedup": fp32 / median}
        print(f"  {name:20s} {median:.3f} s/step  (min {min(samples):.3f})  {fp32 / median:.2f}x")
    if curves:
        result["numerics"] = curves
        a, b = curves["fp32"], curves["bf16+channels_last"]
        worst = max(abs(x - y) for x, y in zip(a, b, strict=True))
        print(f"numerics over {len(a)} steps (lr 1e-3): loss fp32 {a[0]:.4f} -> {a[-1]:.4f}, bf16+cl "
              f"{b[0]:.4f} -> {b[-1]:.4f}; mean fp32 {statistics.mean(a):.4f} bf16 {statistics.mean(b):.4f}; "
              f"largest per-step gap {worst:.4f}")
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
