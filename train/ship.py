"""Turn a training run's best checkpoint into the shipped model and its model card.

    python -m train.ship --run runs/train/cpu --out models/fcn8s_vgg16_w0.25_cpu.pt

The shipped file holds the weights in fp16 (half the size; widened to fp32 on load) with the architecture,
the preprocessing contract and the training summary. It is re-scored after the cast, so the card states the
metrics of the file that ships, not of the run's fp32 weights.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from kitti.data import DataError, find_samples
from kitti.evaluate import evaluate_samples
from kitti.splits import LAST_EPOCH, provenance
from runtime.artifacts import ACCURACY_MD_FILE
from runtime.contract import IMAGENET_MEAN_RGB, IMAGENET_STD_RGB
from runtime.ioutil import atomic_write_text, fail
from runtime.paths import DEFAULT_KITTI_DIR, SHIPPED_CHECKPOINT
from train.checkpoint import CheckpointError, atomic_torch_save, load_model, model_payload, read_checkpoint
from train.evaluate import add_spread, evaluation_samples
from train.model import LITE_ARCHES
from train.torch_predictor import TorchPredictor
from train.train import machine_description


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.2f}"


def training_stages(run_dir: Path) -> list[dict]:
    """This run and, when it was initialised from another run's best.pt, that run too (oldest first)."""
    stages = []
    while run_dir is not None:
        summary = read_checkpoint(run_dir / "best.pt")["summary"]
        history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
        stages.insert(0, {
            "command": summary.get("command", f"python -m train --config {summary.get('config', '?')}"),
            # --eval-every logs fewer rows than epochs: the recipe records the schedule's length
            "best_epoch": summary.get("epoch"), "epochs": summary.get("recipe", {}).get("epochs", len(history)),
            "minutes": history[-1]["elapsed_s"] / 60 if history else 0.0,
            "best_maxf": summary.get("val", {}).get("maxf"), "init": summary.get("init", "n/a"),
        })
        init = summary.get("init", "")
        parent_run = Path(init.removeprefix("initialised from ").split(" ")[0]).parent
        from_run = init.startswith("initialised from ") and (parent_run / "metrics.jsonl").is_file()
        run_dir = parent_run if from_run else None
    return stages


def spread(metrics: dict) -> str:
    std = metrics.get("spread", {}).get("maxf_std")
    return f" +-{std * 100:.2f}" if std is not None else ""


def chosen_by(summary: dict) -> str:
    if summary.get("selected_on") == LAST_EPOCH:
        epochs = summary.get("recipe", {}).get("epochs", "?")
        return f"the last epoch of a fixed {epochs}-epoch schedule (nothing chose it)"
    return f"best epoch chosen on '{summary.get('selected_on', 'val')}'"


def comparable(key: str, value):
    """A summary value as recipes are compared: a recipe's precision without why it was chosen (the CPU feature
    that allowed bf16, 'CPU has amx_bf16' or 'CPU has avx512_bf16', names the machine, not the recipe)."""
    if key == "recipe" and isinstance(value, dict) and isinstance(value.get("precision"), str):
        return {**value, "precision": value["precision"].split(":", 1)[0]}
    return value


def seed_spread(metrics: dict, summary: dict, run_dir: Path, other_runs: list[Path]) -> str:
    """The report figure of this file beside those of the same recipe trained with other seeds: the spread a
    retrain gives, which the bootstrap over images does not show."""
    rows = [(f"{run_dir.name} (this file)", metrics)]
    for other in other_runs:
        other_summary = read_checkpoint(other / "best.pt")["summary"]
        report = other_summary.get("report")
        if not isinstance(report, dict) or not all(isinstance(report.get(k), float) for k in ("maxf", "ap", "iou")):
            raise CheckpointError(f"{other / 'best.pt'}: no report figure in its summary (did training finish?)")
        for key in ("recipe", "train_images", "selected_on"):
            if comparable(key, other_summary.get(key)) != comparable(key, summary.get(key)):
                raise CheckpointError(f"{other / 'best.pt'}: not the same recipe as {run_dir} ('{key}' differs)")
        rows.append((f"{other.name}: `{other_summary.get('command', '?')}`", report))
    lines = ["| run | report MaxF | um | umm | uu | AP | IoU |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, report in rows:
        per_category = report.get("per_category", {})
        lines.append(f"| {name} | {percent(report['maxf'])} | "
                     + " | ".join(percent(per_category.get(c, {}).get("maxf")) for c in ("um", "umm", "uu"))
                     + f" | {percent(report['ap'])} | {percent(report['iou'])} |")
    values = [report["maxf"] for _, report in rows]
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / max(1, len(values) - 1)) ** 0.5
    lines += ["", f"Mean over {len(values)} seeds: MaxF {mean * 100:.2f}, std {std * 100:.2f} pt "
              "(every row on the same report images, none of which trained or chose any of these models)."]
    return "\n".join(lines)


def describe_architecture(arch: dict) -> str:
    if arch["name"] in LITE_ARCHES:
        variant = LITE_ARCHES[arch["name"]].capitalize()
        return f"FCN-8s on an EfficientNet-{variant} encoder initialised from ImageNet"
    return f"FCN-8s with a VGG16 encoder at width {arch['width']}"


def describe_normalisation(spec: dict) -> str:
    if tuple(spec["mean"]) == IMAGENET_MEAN_RGB and tuple(spec["std"]) == IMAGENET_STD_RGB:
        return "ImageNet mean/std"
    pixel_mean = ", ".join(f"{value * 255:.0f}" for value in spec["mean"])
    pixel_std = ", ".join(f"{value * 255:.0f}" for value in spec["std"])
    return f"(pixel - ({pixel_mean})) / ({pixel_std})"


def card_text(out: Path, payload: dict, metrics: dict, run_dir: Path, accuracy: str | None,
              held_out: str | None = None, seeds: str | None = None, failure_modes: str | None = None) -> str:
    summary = payload["summary"]
    stages = training_stages(run_dir)
    machine = summary.get("machine") or machine_description(torch.device("cpu"))
    spec = json.loads(payload["preprocess"])
    lines = [
        f"# Model card: {out.name}",
        "",
        f"{describe_architecture(payload['arch'])} ({payload['arch']['num_classes']} classes: not_road, road), "
        "trained by this repository's own training code on the KITTI Road dev split. Weights are stored in fp16 "
        "and widened to fp32 on load.",
        "",
        "| field | value |",
        "|---|---|",
        f"| input size | {spec['input_height']}x{spec['input_width']} (HxW), {describe_normalisation(spec)}, "
        f"{spec['color_order']}, {spec['layout']} |",
        f"| initialisation | {stages[0]['init']} |",
        f"| split | KITTI Road dev data: {summary.get('train_images', '?')} train images; {chosen_by(summary)}; "
        f"scored below on {metrics['images']} images "
        f"(the last {summary.get('val_fraction', 0.2):.0%} of each category) |",
        f"| provenance of the figures below | {metrics['provenance']['line']} |",
        f"| wall time | {sum(stage['minutes'] for stage in stages):.1f} min in all on {machine} |",
        "",
        "## Training stages",
        "",
        "| # | command | epochs | kept epoch | its select MaxF (older runs: val) | wall time |",
        "|---|---|---|---|---|---|",
    ]
    for number, stage in enumerate(stages, 1):
        lines.append(f"| {number} | `{stage['command']}` | {stage['epochs']} | {stage['best_epoch']} | "
                     f"{percent(stage['best_maxf'])} | {stage['minutes']:.1f} min |")
    lines += [
        "",
        f"## KITTI {metrics['split']} metrics of this file (perspective, native resolution, devkit definitions)",
        "",
        f"{metrics['provenance']['line']}. +- is the bootstrap std over images.",
        "",
        "| split | images | MaxF | AP | IoU | precision | recall |",
        "|---|---|---|---|---|---|---|",
        f"| {metrics['split']} | {metrics['images']} | {percent(metrics['maxf'])}{spread(metrics)} | "
        f"{percent(metrics['ap'])} | "
        f"{percent(metrics['iou'])} | {percent(metrics['precision'])} | {percent(metrics['recall'])} |",
    ]
    for category, values in metrics["per_category"].items():
        lines.append(f"| {metrics['split']} {category} | {values['images']} | {percent(values['maxf'])}"
                     f"{spread(values)} | "
                     f"{percent(values['ap'])} | {percent(values['iou'])} | {percent(values['precision'])} | "
                     f"{percent(values['recall'])} |")
    if failure_modes:
        lines += ["", "## Failure modes that remain (the worst report images, `make eval`)", "", failure_modes]
    if seeds:
        lines += ["", "## The same recipe with other seeds", "", seeds]
    if held_out:
        lines += ["", "## Held-out estimate (images never in ../shared/data)", "", held_out]
    if accuracy:
        lines += ["", "## Exported artifacts on the same val images (from `make export calibrate`)", "", accuracy]
    lines += ["", "Data: KITTI Road (Fritsch, Kuehnl, Geiger, ITSC 2013), CC BY-NC-SA 3.0: the weights are "
              "derived from it and inherit its non-commercial licence.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.ship", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/train/cpu", help="a training run folder (best.pt, metrics.jsonl)")
    # No default: shipping replaces a model users stream by default, so the file to write is always named.
    parser.add_argument("--out", required=True, help=f"the shipped file, e.g. {SHIPPED_CHECKPOINT}")
    parser.add_argument("--data", default=DEFAULT_KITTI_DIR)
    parser.add_argument("--accuracy", default=str(Path("build") / ACCURACY_MD_FILE),
                        help="the export's per-artifact accuracy table, added to the card when present")
    parser.add_argument("--card-only", action="store_true", help="rewrite the card for an already shipped model")
    parser.add_argument("--held-out", help="a Markdown table of the model scored on images outside --data "
                        "(e.g. by another team on hidden data), added to the card as given")
    parser.add_argument("--failure-modes", help="a Markdown file saying what the worst-images sheet shows, "
                        "added to the card as given")
    parser.add_argument("--other-seeds", nargs="*", default=[], metavar="RUN",
                        help="runs of the same recipe with other seeds: their report figures go on the card")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    run_dir, out = Path(args.run), Path(args.out)
    try:
        if not args.card_only:
            model, spec, payload = load_model(run_dir / "best.pt")
            atomic_torch_save(model_payload(model, spec, payload["summary"], half=True), out)
        model, spec, payload = load_model(out)
        all_samples = find_samples(args.data)
        samples = evaluation_samples(all_samples, "report", payload["summary"])
        scores: list = []
        metrics = evaluate_samples(TorchPredictor(model, spec), samples, progress=not args.no_progress,
                                   per_image=scores)
        add_spread(metrics, scores)
        metrics["split"] = "report"
        metrics["provenance"] = provenance(payload["summary"], samples, all_samples)
        other_runs = [Path(run) for run in args.other_seeds]
        seeds = seed_spread(metrics, payload["summary"], run_dir, other_runs) if other_runs else None
    except (CheckpointError, DataError, OSError) as error:
        return fail(error)
    accuracy_path = Path(args.accuracy)
    accuracy = accuracy_path.read_text().strip() if accuracy_path.is_file() else None
    held_out = Path(args.held_out).read_text().strip() if args.held_out else None
    failure_modes = Path(args.failure_modes).read_text().strip() if args.failure_modes else None
    card = out.with_suffix(".md")
    atomic_write_text(card, card_text(out, payload, metrics, run_dir, accuracy, held_out, seeds, failure_modes))
    print(f"shipped {out} ({out.stat().st_size / 1e6:.1f} MB): {metrics['split']} MaxF {metrics['maxf'] * 100:.2f}, "
          f"IoU {metrics['iou'] * 100:.2f}; card {card}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
