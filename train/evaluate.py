"""KITTI Road evaluation of a checkpoint, an ONNX model or a TensorRT engine.

    python -m train.evaluate --model MODEL --data KITTI_DIR [--split all|train|val] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kitti.data import DataError, KittiSample, find_samples, split_samples
from kitti.evaluate import evaluate_samples
from kitti.metrics import RoadMetricAccumulator
from kitti.splits import checked_summary, provenance, three_way_split
from runtime.contract import TRAINING_KEY
from runtime.ioutil import atomic_write_text, fail, save_figure
from runtime.output_policy import claim_outputs, one_run


def open_predictor(model_path: str | Path, device: str = "cpu", backend: str = "auto", precision: str = "auto"):
    """A checkpoint (.pt) runs in PyTorch; .onnx and TensorRT engines run on the slim runtime's backends."""
    path = Path(model_path)
    if path.suffix == ".pt":
        from train.checkpoint import load_model
        from train.torch_predictor import TorchPredictor

        model, spec, payload = load_model(path)
        return TorchPredictor(model, spec, device, payload["summary"])
    from runtime.backends import open_backend
    from runtime.contract import ModelFileError

    opened = open_backend(path, backend=backend, precision=precision)
    if getattr(opened, "in_graph", False):
        # Its output is the argmax mask: MaxF and AP need the road score at every threshold.
        raise ModelFileError(f"{path}: an in-graph model returns the road mask, not scores; evaluate the "
                             "float-output model it wraps (export.ingraph's mask gate ties the two)")
    return opened


def write_pr_curve(accumulator: RoadMetricAccumulator, title: str, path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    precision, recall, _ = accumulator.pr_curve()
    summary = accumulator.summary()
    figure, axis = plt.subplots(figsize=(5, 4.5), dpi=120)
    axis.plot(recall, precision, lw=2)
    axis.scatter([summary["recall"]], [summary["precision"]], color="red", zorder=3,
                 label=f"MaxF {summary['maxf'] * 100:.2f} (t={summary['threshold']:.2f})")
    axis.set(xlabel="recall", ylabel="precision", xlim=(0, 1.01), ylim=(0, 1.01), title=title)
    axis.grid(alpha=0.3)
    axis.legend(loc="lower left")
    figure.tight_layout()
    save_figure(figure, path)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m train.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help=".pt checkpoint, .onnx model or TensorRT .engine/.plan")
    parser.add_argument("--data", required=True, help="a folder in the KITTI Road layout")
    parser.add_argument("--split", default="report", choices=("report", "select", "all", "train", "val"),
                        help="report/select: the train/select/report protocol's blocks (the model's recorded "
                        "split when it has one); val: the old two-way split's val block (= report)")
    parser.add_argument("--worst", nargs=2, metavar=("N", "DIR"),
                        help="write the N lowest-F1 images as error overlays + a contact sheet into DIR")
    parser.add_argument("--json", help="write the metrics here")
    parser.add_argument("--pr-curve", help="write a precision-recall PNG here")
    parser.add_argument("--device", default="cpu", help="torch device for .pt models")
    parser.add_argument("--backend", default="auto", help="runtime backend for .onnx / engines")
    parser.add_argument("--precision", default="auto", help="OpenVINO CPU precision (fp32, bf16, int8, int8+bf16)")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def parse_worst(worst: list[str] | None) -> int:
    if not worst:
        return 0
    try:
        count = int(worst[0])
    except ValueError:
        count = 0
    if count < 1:
        raise ValueError(f"--worst {worst[0]}: expected a positive number of images")
    return count


def recorded_summary(model_path: str | Path, predictor) -> dict | None:
    """The training summary the model carries (checkpoint summary, or ONNX roadseg.training metadata)."""
    if Path(model_path).suffix == ".pt":  # a TorchPredictor, which kept its checkpoint's summary
        return checked_summary(predictor.summary, str(model_path))
    text = getattr(predictor, "metadata", {}).get(TRAINING_KEY)
    try:
        return checked_summary(json.loads(text), str(model_path)) if text else None
    except (json.JSONDecodeError, RecursionError):
        return None


def evaluation_samples(samples: list[KittiSample], split: str, summary: dict | None) -> list[KittiSample]:
    """The images of `split`; select/report follow the model's recorded split when it has one."""
    if split not in ("select", "report"):
        return split_samples(samples, split)
    record = (summary or {}).get("split")
    if record and record.get(split):
        names = set(record[split])
        chosen = [s for s in samples if s.name in names]
        if len(chosen) != len(names):
            raise DataError(f"--data holds {len(chosen)} of the {len(names)} '{split}' images the model recorded")
        return chosen
    chosen = three_way_split(samples)[split]
    if not chosen:
        raise DataError(f"split {split!r} is empty")
    return chosen


def add_spread(result: dict, scores: list) -> None:
    """Bootstrap std over images, overall and per category, into the result."""
    from train.error_analysis import bootstrap_spread

    result["spread"] = bootstrap_spread(scores)
    for category, metrics in result["per_category"].items():
        metrics["spread"] = bootstrap_spread([s for s in scores if s.sample.category == category])


def spread_text(metrics: dict, key: str) -> str:
    std = metrics.get("spread", {}).get(f"{key}_std")
    return f" +-{std * 100:.2f}" if std is not None else ""


@one_run
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        worst_count = parse_worst(args.worst)
        claim_outputs({"--json": args.json, "--pr-curve": args.pr_curve}, {"--model": args.model, "--data": args.data},
                      {"--worst": args.worst[1] if args.worst else None})
        all_samples = find_samples(args.data)
        predictor = open_predictor(args.model, args.device, args.backend, args.precision)
        summary = recorded_summary(args.model, predictor)
        samples = evaluation_samples(all_samples, args.split, summary)
        scores: list = []
        result = evaluate_samples(predictor, samples, progress=not args.no_progress, per_image=scores)
    except (DataError, ValueError, OSError, RuntimeError) as error:
        return fail(error)
    accumulator = result.pop("_accumulator")
    result.update({"model": str(args.model), "split": args.split, "backend": predictor.name,
                   "precision_mode": getattr(predictor, "precision", "fp32"),
                   "provenance": provenance(summary, samples, all_samples),
                   "image_names": [s.name for s in samples]})
    add_spread(result, scores)
    print(f"provenance: {result['provenance']['line']}")
    print(f"{args.model} on {args.split} ({result['images']} images): MaxF {result['maxf'] * 100:.2f}"
          f"{spread_text(result, 'maxf')}  AP {result['ap'] * 100:.2f}  IoU {result['iou'] * 100:.2f}  "
          f"P {result['precision'] * 100:.2f}  R {result['recall'] * 100:.2f}")
    for category, metrics in result["per_category"].items():
        print(f"  {category:4s} ({metrics['images']:3d}): MaxF {metrics['maxf'] * 100:.2f}"
              f"{spread_text(metrics, 'maxf')}  AP {metrics['ap'] * 100:.2f}  IoU {metrics['iou'] * 100:.2f}")
    try:  # the metrics first: they land even when a later output cannot be written
        if args.json:
            atomic_write_text(args.json, json.dumps(result, indent=2) + "\n", "--json")
        if args.pr_curve:
            write_pr_curve(accumulator, f"{Path(args.model).name} ({args.split})", args.pr_curve)
        if worst_count:
            from train.error_analysis import write_worst

            sheet = write_worst(predictor, scores, worst_count, args.worst[1])
            print(f"worst {min(worst_count, len(scores))} images: overlays and {sheet} "
                  "(green = road found, red = false positive, blue = false negative)")
    except OSError as error:
        return fail(error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
