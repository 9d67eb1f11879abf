"""One Markdown row per training run: its recipe, select and report scores, and what it cost.

    python -m train.recipe_table runs/proxy/A_baseline runs/proxy/B_bn_cos_ema ... [--out table.md]

Reads each run's best.pt summary (the recipe, the select score that chose the epoch, the report score taken
once afterwards) and metrics.jsonl (wall time). Rank recipes by the select column: ranking them by report
would make report a selection set too.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from runtime.ioutil import atomic_write_text, fail
from train.checkpoint import CheckpointError, read_checkpoint

RECIPE_KEYS = ("batch_norm", "schedule", "ema", "loss", "augment")


def run_row(run_dir: Path) -> dict:
    summary = read_checkpoint(run_dir / "best.pt")["summary"]
    log = run_dir / "metrics.jsonl"
    history = [json.loads(line) for line in log.read_text().splitlines() if line] if log.is_file() else []
    recipe = summary.get("recipe", {})
    report = summary.get("report")
    return {"run": run_dir.name, "recipe": ", ".join(f"{k}={recipe[k]}" for k in RECIPE_KEYS if k in recipe),
            "precision": recipe.get("precision", "?").split(":")[0], "epochs": recipe.get("epochs"),
            "best_epoch": summary.get("epoch"), "train_images": summary.get("train_images", "?"),
            "kept": "last" if summary.get("keep") == "last" else "best",
            "select_maxf": summary.get("val", {}).get("maxf"),
            "report": report, "minutes": history[-1]["elapsed_s"] / 60 if history else None}


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f}"


def markdown(rows: list[dict]) -> str:
    lines = ["| run | recipe | precision | train images | epochs (kept) | select MaxF | report MaxF | "
             "report um / umm / uu | report AP | report IoU | wall min |",
             "|---|---|---|---:|---|---:|---:|---|---:|---:|---:|"]
    for row in sorted(rows, key=lambda r: -(r["select_maxf"] or 0)):
        report = row["report"] or {}
        per_category = report.get("per_category", {})
        categories = " / ".join(percent(per_category.get(c, {}).get("maxf")) for c in ("um", "umm", "uu"))
        minutes = "-" if row["minutes"] is None else f"{row['minutes']:.1f}"
        lines.append(f"| {row['run']} | {row['recipe']} | {row['precision']} | {row['train_images']} | "
                     f"{row['epochs']} ({row['kept']}: {row['best_epoch']}) | {percent(row['select_maxf'])} | "
                     f"{percent(report.get('maxf'))} | "
                     f"{categories} | {percent(report.get('ap'))} | {percent(report.get('iou'))} | {minutes} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.recipe_table", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="training run folders (each with best.pt)")
    parser.add_argument("--out", help="also write the table here")
    args = parser.parse_args(argv)
    try:
        table = markdown([run_row(Path(run)) for run in args.runs])
    except (CheckpointError, OSError, json.JSONDecodeError) as error:
        return fail(error)
    print(table, end="")
    if args.out:
        atomic_write_text(args.out, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
