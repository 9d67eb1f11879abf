"""Honest evaluation and CPU training: CPU bf16 selection, the train/select/report split and provenance, error
overlays, recipe parts, BatchNorm folding for export."""

import json

import numpy as np
import pytest
import torch
from conftest import KITTI_DIR, needs_kitti, run_cli

from export.bn_fold import fold_batchnorm
from kitti.data import find_samples, split_samples
from kitti.splits import LAST_EPOCH, provenance, split_record, three_way_split
from runtime.artifacts import FP32_ONNX
from runtime.machine import cpu_flags
from train.cpu_precision import choose_cpu_precision
from train.error_analysis import FALSE_NEGATIVE_BGR, FALSE_POSITIVE_BGR, overlay_errors
from train.model import FCN8s
from train.recipe import WeightEma, lovasz_hinge_loss, make_criterion, soft_dice_loss


def test_cpu_precision_follows_the_cpu_flags():
    assert "avx512_bf16" in cpu_flags("flags\t: fpu sse2 avx512f avx512_bf16\n")
    assert choose_cpu_precision("auto", flags={"avx512f", "avx512_bf16"}).bf16
    assert choose_cpu_precision("auto", flags={"amx_bf16", "amx_tile"}).bf16
    fallback = choose_cpu_precision("auto", flags={"avx2", "avx512f"})
    assert not fallback.bf16 and "neither" in fallback.reason
    assert not choose_cpu_precision("fp32", flags={"avx512_bf16"}).bf16
    assert not choose_cpu_precision("auto", "no", flags=set()).channels_last
    with pytest.raises(ValueError, match="--cpu-precision"):
        choose_cpu_precision("fp8")


@needs_kitti
def test_three_way_split_is_contiguous_disjoint_and_reports_the_old_val_block():
    samples = find_samples(KITTI_DIR)
    parts = three_way_split(samples)
    names = {part: {s.name for s in members} for part, members in parts.items()}
    assert not (names["train"] & names["select"]) and not (names["select"] & names["report"])
    assert sum(len(v) for v in names.values()) == len(samples)
    assert names["report"] == {s.name for s in split_samples(samples, "val")}
    for category in ("um", "umm", "uu"):
        ordered = sorted(s.name for s in samples if s.category == category)
        labels = ["train" if n in names["train"] else "select" if n in names["select"] else "report"
                  for n in ordered]
        # one block each, in the order train | select | report: report never touches a training frame
        assert labels == sorted(labels, key=("train", "select", "report").index)
        assert labels.count("select") >= 10


def test_provenance_flags_trained_selected_and_honest(synthetic_kitti):
    samples = find_samples(synthetic_kitti)
    parts = three_way_split(samples)
    summary = {"split": split_record(parts, "select")}
    assert provenance(summary, parts["report"], samples)["verdict"] == "honest"
    assert provenance(summary, parts["select"], samples)["verdict"] == "selection-biased"
    assert provenance(summary, samples, samples)["verdict"] == "trained-on"
    legacy = provenance({"val_fraction": 0.2}, split_samples(samples, "val"), samples)
    assert legacy["verdict"] == "selection-biased"
    assert provenance(None, samples, samples)["verdict"] == "unknown"


def test_batchnorm_folds_into_the_convolutions_exactly():
    torch.manual_seed(0)
    model = FCN8s(width=0.125, batch_norm=True)
    model.train()
    with torch.no_grad():  # non-trivial running statistics and affine parameters
        for _ in range(3):
            model(torch.randn(2, 3, 64, 96) * 2 + 0.5)
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    model.eval()
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert folded.arch() == FCN8s(width=0.125).arch()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-4)


def test_dice_and_lovasz_prefer_the_right_mask_and_skip_ignored_pixels():
    labels = torch.tensor([[[1, 1, 0, 255]]])
    right = torch.tensor([[[[-3.0, -3, 3, 9]], [[3.0, 3, -3, -9]]]])
    wrong = -right
    for loss in (soft_dice_loss, lovasz_hinge_loss):
        assert float(loss(right, labels)) < float(loss(wrong, labels))
    # the ignored pixel (last) changes nothing
    flipped = right.clone()
    flipped[..., 3] = -flipped[..., 3]
    for name in ("ce+dice", "ce+lovasz"):
        criterion = make_criterion(name)
        assert float(criterion(right, labels)) == pytest.approx(float(criterion(flipped, labels)))
    logits = torch.randn(2, 2, 8, 8, requires_grad=True)
    make_criterion("ce+lovasz")(logits, torch.randint(0, 2, (2, 8, 8))).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_ema_tracks_the_weights():
    model = torch.nn.Linear(2, 1)
    ema = WeightEma(model, decay=0.9)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    for _ in range(50):
        ema.update(model)
    averaged = ema.state["weight"]
    assert torch.all(averaged > start + 0.9) and torch.all(averaged <= model.weight + 1e-6)
    live = ema.swapped_into(model)
    assert torch.equal(model.weight, averaged)
    model.load_state_dict(live)


def test_overlay_colours_false_positives_and_negatives_apart():
    image = np.full((4, 4, 3), 100, np.uint8)
    gt = np.zeros((4, 4), bool)
    gt[:, :2] = True
    predicted = np.zeros((4, 4), bool)
    predicted[:, 1:3] = True
    valid = np.ones((4, 4), bool)
    valid[3] = False
    out = overlay_errors(image, predicted, gt, valid, alpha=1.0)
    assert tuple(out[0, 0]) == FALSE_NEGATIVE_BGR and tuple(out[0, 2]) == FALSE_POSITIVE_BGR
    assert tuple(out[3, 0]) == (100, 100, 100)  # outside the valid area: untouched


def test_training_records_its_split_and_evaluate_reports_provenance_and_worst(synthetic_kitti, tmp_path):
    run = tmp_path / "run"
    result = run_cli("-m", "train", "--config", "smoke", "--data", str(synthetic_kitti), "--output-dir", str(run),
                     "--epochs", "1", "--max-steps-per-epoch", "2", "--no-progress", "--batch-norm",
                     "--ema", "0.9", "--loss", "ce+dice", "--augment", "strong", "--schedule", "cosine",
                     "--cpu-precision", "fp32")
    assert result.returncode == 0, result.stderr
    assert "report (" in result.stdout and "never used to choose" in result.stdout
    summary = torch.load(run / "best.pt", weights_only=False)["summary"]
    assert summary["selected_on"] == "select" and summary["split"]["report"]
    assert "maxf" in summary["report"] and summary["recipe"]["batch_norm"]
    out = tmp_path / "eval.json"
    worst = tmp_path / "worst"
    result = run_cli("-m", "train.evaluate", "--model", str(run / "best.pt"), "--data", str(synthetic_kitti),
                     "--split", "report", "--json", str(out), "--worst", "2", str(worst), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "provenance: honest" in result.stdout
    metrics = json.loads(out.read_text())
    assert metrics["provenance"]["verdict"] == "honest"
    assert sorted(metrics["image_names"]) == sorted(summary["split"]["report"])
    assert set(metrics["per_category"]) == {"um", "umm", "uu"}
    assert "maxf_std" in metrics["spread"]
    assert (worst / "contact_sheet.png").stat().st_size > 1000
    assert len(json.loads((worst / "worst.json").read_text())) == 2
    from train.recipe_table import main as recipe_table

    assert recipe_table([str(run), "--out", str(tmp_path / "table.md")]) == 0
    row = (tmp_path / "table.md").read_text().splitlines()[-1]
    assert "batch_norm=True" in row and "loss=ce+dice" in row and f"{summary['report']['maxf'] * 100:.2f}" in row
    result = run_cli("-m", "train.evaluate", "--model", str(run / "best.pt"), "--data", str(synthetic_kitti),
                     "--split", "all", "--no-progress")
    assert "NOT an honest estimate" in result.stdout
    bad = run_cli("-m", "train.evaluate", "--model", str(run / "best.pt"), "--data", str(synthetic_kitti),
                  "--worst", "zero", str(worst))
    assert bad.returncode != 0 and "--worst zero" in bad.stderr and "Traceback" not in bad.stderr


def test_batchnorm_checkpoint_exports_without_batchnorm_ops(synthetic_kitti, tmp_path):
    """The real export path (dynamo ONNX export + parity gate) on a BatchNorm checkpoint."""
    import onnx

    run = tmp_path / "run"
    result = run_cli("-m", "train", "--config", "smoke", "--data", str(synthetic_kitti), "--output-dir", str(run),
                     "--epochs", "1", "--max-steps-per-epoch", "2", "--no-progress", "--batch-norm")
    assert result.returncode == 0, result.stderr
    build = tmp_path / "build"
    result = run_cli("-m", "export", "--checkpoint", str(run / "best.pt"), "--build", str(build),
                     "--data", str(synthetic_kitti), "--parity-frames", "3", "--no-fp16", "--no-slim",
                     "--no-progress", timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    graph = onnx.load(str(build / FP32_ONNX)).graph
    ops = {node.op_type for node in graph.node}
    assert "Conv" in ops and "BatchNormalization" not in ops


def test_a_recorded_split_without_its_scheme_is_refused_naming_the_field():
    """Found by the checkpoint fuzzer (seed 133708593): a split record missing 'scheme' passed the check and
    then failed inside the provenance line with a KeyError."""
    from kitti.data import DataError
    from kitti.splits import checked_summary

    with pytest.raises(DataError, match=r"model\.pt: .*'summary\.split\.scheme'"):
        checked_summary({"split": {"train": ["um_000000"], "selected_on": "val"}}, "model.pt")
    record = {"scheme": "train/select/report", "train": ["um_000000"]}
    assert checked_summary({"split": record}, "model.pt")["split"] is record


def test_keep_last_trains_on_the_select_block_and_its_report_figure_stays_honest(synthetic_kitti, tmp_path):
    """--keep last --select-fraction 0: the select block trains too, nothing chooses the epoch, so report is
    still honest; with a select block, --keep last saves the last epoch even when an earlier one scored more."""
    run = tmp_path / "run"
    result = run_cli("-m", "train", "--config", "smoke", "--data", str(synthetic_kitti), "--output-dir", str(run),
                     "--epochs", "2", "--max-steps-per-epoch", "2", "--no-progress", "--keep", "last",
                     "--select-fraction", "0", "--ema", "0.5")
    assert result.returncode == 0, result.stderr
    payload = torch.load(run / "best.pt", weights_only=False)
    summary = payload["summary"]
    assert summary["selected_on"] == LAST_EPOCH and summary["epoch"] == 2 and "val" not in summary
    assert not summary["split"]["select"] and "maxf" in summary["report"]
    ema_weights = torch.load(run / "last.pt", weights_only=False)["ema"]["state"]
    first = next(iter(payload["model"]))
    assert torch.equal(payload["model"][first], ema_weights[first].to(payload["model"][first].dtype))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2] and "val_maxf" not in rows[0]
    samples = find_samples(synthetic_kitti)
    report = [s for s in samples if s.name in set(summary["split"]["report"])]
    verdict = provenance(summary, report, samples)
    assert verdict["verdict"] == "honest" and "fixed schedule" in verdict["line"]

    watched = tmp_path / "watched"
    result = run_cli("-m", "train", "--config", "smoke", "--data", str(synthetic_kitti), "--output-dir",
                     str(watched), "--epochs", "3", "--max-steps-per-epoch", "1", "--no-progress", "--keep", "last")
    assert result.returncode == 0, result.stderr
    summary = torch.load(watched / "best.pt", weights_only=False)["summary"]
    assert summary["epoch"] == 3 and summary["selected_on"] == LAST_EPOCH and summary["split"]["select"]
    assert "maxf" in summary["val"]  # the select block was watched, not used to choose

    seed1 = tmp_path / "seed1"
    result = run_cli("-m", "train", "--config", "smoke", "--data", str(synthetic_kitti), "--output-dir", str(seed1),
                     "--epochs", "2", "--max-steps-per-epoch", "2", "--no-progress", "--keep", "last",
                     "--select-fraction", "0", "--ema", "0.5", "--seed", "1")
    assert result.returncode == 0, result.stderr
    shipped = tmp_path / "models" / "m.pt"
    shipped.parent.mkdir()
    ship = ["-m", "train.ship", "--run", str(run), "--out", str(shipped), "--data", str(synthetic_kitti),
            "--accuracy", str(tmp_path / "none.md"), "--no-progress", "--other-seeds"]
    result = run_cli(*ship, str(seed1))
    assert result.returncode == 0, result.stderr
    card = shipped.with_suffix(".md").read_text()
    assert "the last epoch of a fixed 2-epoch schedule (nothing chose it)" in card
    assert "| provenance of the figures below | honest:" in card and "Mean over 2 seeds" in card
    refused = run_cli(*ship, str(watched))  # another recipe is no seed spread
    assert refused.returncode != 0 and "not the same recipe" in refused.stderr and "Traceback" not in refused.stderr
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    payload = torch.load(seed1 / "best.pt", weights_only=False)
    payload["summary"]["report"] = {"maxf": "high"}
    torch.save(payload, unfinished / "best.pt")
    refused = run_cli(*ship, str(unfinished))
    assert refused.returncode != 0 and "no report figure" in refused.stderr and "Traceback" not in refused.stderr


def test_seeds_trained_on_different_cpus_are_the_same_recipe():
    """Why bf16 was allowed names the machine (amx_bf16 on a Xeon, avx512_bf16 on a Zen 4), not the recipe; the
    precision itself still does."""
    from train.ship import comparable

    def recipe(precision: str) -> dict:
        return {"epochs": 40, "input_size": [288, 960], "precision": precision}

    xeon = recipe("bf16 autocast (FP32 master weights) + channels_last: CPU has amx_bf16")
    zen4 = recipe("bf16 autocast (FP32 master weights) + channels_last: CPU has avx512_bf16")
    assert comparable("recipe", xeon) == comparable("recipe", zen4)
    assert comparable("recipe", xeon) != comparable("recipe", recipe("fp32: CPU has no bf16"))
    assert comparable("recipe", {**xeon, "epochs": 20}) != comparable("recipe", zen4)
