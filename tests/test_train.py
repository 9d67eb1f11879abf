"""Training and evaluation as real processes: outputs, exact resume, Ctrl-C, DDP, bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import KITTI_DIR, REPO, needs_kitti, run_cli

SMOKE = ["-m", "train", "--config", "smoke", "--no-progress", "--seed", "1"]


def test_training_writes_checkpoints_log_and_curves(tiny_checkpoint):
    run_dir = tiny_checkpoint.parent
    for name in ("best.pt", "last.pt", "metrics.jsonl", "curves.png"):
        assert (run_dir / name).stat().st_size > 0
    row = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert 0.0 <= row["val_maxf"] <= 1.0 and row["train_loss"] > 0
    assert not list(run_dir.glob(".*.tmp"))


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def test_resume_continues_exactly_as_an_uninterrupted_run(synthetic_kitti, tmp_path):
    common = [*SMOKE, "--data", str(synthetic_kitti), "--epochs", "2", "--max-steps-per-epoch", "3"]
    straight = run_cli(*common, "--output-dir", str(tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr
    # Interrupted mid-epoch (after step 4 of 6), then resumed from last.pt.
    stopped = run_cli(*common, "--output-dir", str(tmp_path / "resumed"), "--stop-after-steps", "4")
    assert stopped.returncode == 130 and "interrupted: saved" in stopped.stdout
    resumed = run_cli(*common, "--output-dir", str(tmp_path / "resumed"), "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout
    a, b = weights(tmp_path / "straight" / "last.pt"), weights(tmp_path / "resumed" / "last.pt")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    log_a = [json.loads(x) for x in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    log_b = [json.loads(x) for x in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["train_loss"] for r in log_a] == pytest.approx([r["train_loss"] for r in log_b])


def test_ctrl_c_saves_and_exits_cleanly(synthetic_kitti, tmp_path):
    out = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, *SMOKE, "--data", str(synthetic_kitti), "--epochs", "500", "--output-dir", str(out)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    deadline = time.time() + 120
    while not (out / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "interrupted: saved" in stdout and "Traceback" not in stderr
    payload = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert {"optimizer", "scheduler", "scaler", "rng", "epoch_state"} <= payload.keys()


def test_torchrun_two_processes_with_gloo(synthetic_kitti, tmp_path):
    out = tmp_path / "ddp"
    result = run_cli("-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
                     *SMOKE, "--data", str(synthetic_kitti), "--epochs", "1", "--max-steps-per-epoch", "2",
                     "--output-dir", str(out), timeout=400)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "world size 2" in result.stdout
    assert (out / "best.pt").is_file() and len((out / "metrics.jsonl").read_text().splitlines()) == 1


def one_line_error(result, *fragments):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_bad_training_input_gives_one_line(tmp_path, tiny_checkpoint, synthetic_kitti):
    one_line_error(run_cli(*SMOKE, "--data", str(tmp_path / "missing")), "missing", "not found")
    one_line_error(run_cli(*SMOKE, "--data", str(synthetic_kitti), "--width", "0.25",
                           "--resume", str(tiny_checkpoint.parent / "last.pt"), "--output-dir", str(tmp_path / "x")),
                   "last.pt", "checkpoint is")
    one_line_error(run_cli(*SMOKE, "--data", str(synthetic_kitti), "--pretrained", "yes", "--width", "1.0",
                           "--weights", str(tmp_path / "none.pth")), "--pretrained yes", "none.pth")


def test_evaluate_cli_json_and_bad_models(tiny_checkpoint, synthetic_kitti, tmp_path):
    out = tmp_path / "m.json"
    result = run_cli("-m", "train.evaluate", "--model", str(tiny_checkpoint), "--data", str(synthetic_kitti),
                     "--split", "all", "--json", str(out), "--pr-curve", str(tmp_path / "pr.png"), "--no-progress")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(out.read_text())
    for key in ("maxf", "ap", "iou", "precision", "recall"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["images"] == 12 and set(metrics["per_category"]) == {"um", "umm", "uu"}
    assert (tmp_path / "pr.png").stat().st_size > 1000
    foreign = tmp_path / "foreign.pt"
    torch.save({"hello": 1}, foreign)
    one_line_error(run_cli("-m", "train.evaluate", "--model", str(foreign), "--data", str(synthetic_kitti)),
                   "foreign.pt", "not a roadseg checkpoint")
    payload = torch.load(tiny_checkpoint, weights_only=True)
    payload["arch"]["width"] = 0.25  # weights of width 0.125 under a width-0.25 label
    wrong = tmp_path / "wrong_width.pt"
    torch.save(payload, wrong)
    one_line_error(run_cli("-m", "train.evaluate", "--model", str(wrong), "--data", str(synthetic_kitti)),
                   "wrong_width.pt", "the architecture needs")
    (tmp_path / "corrupt.pt").write_bytes(b"not a zip")
    one_line_error(run_cli("-m", "train.evaluate", "--model", str(tmp_path / "corrupt.pt"),
                           "--data", str(synthetic_kitti)), "corrupt.pt", "not a readable")


@needs_kitti
def test_evaluate_on_real_kitti_val(tiny_checkpoint, tmp_path):
    out = tmp_path / "val.json"
    result = run_cli("-m", "train.evaluate", "--model", str(tiny_checkpoint), "--data", str(KITTI_DIR),
                     "--split", "val", "--json", str(out), "--no-progress")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(out.read_text())
    assert metrics["images"] == 46
    assert sum(c["images"] for c in metrics["per_category"].values()) == 46


def test_training_lowers_the_loss(synthetic_kitti):
    """The training step itself learns: 30 steps of train_one_epoch on one fixed batch halve the loss."""
    from conftest import random_fcn8s

    from kitti.data import find_samples
    from runtime.contract import PreprocessSpec
    from runtime.pipeline import StopRequest
    from train.dataset import RoadDataset, load_kitti_arrays
    from train.train import EpochOptions, train_one_epoch

    dataset = RoadDataset(*load_kitti_arrays(find_samples(synthetic_kitti)[:2]), PreprocessSpec(64, 192), None)
    images, labels = zip(*(dataset[index] for index in range(len(dataset))), strict=True)
    batch = (torch.stack(images), torch.stack(labels))
    model = random_fcn8s()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)

    def loss_now() -> float:
        model.eval()
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(model(batch[0]), batch[1], ignore_index=255))

    before, state = loss_now(), {"step": 0, "loss_sum": 0.0}
    assert train_one_epoch(model, [batch] * 30, optimizer, scheduler, scaler, 0, state, StopRequest(),
                           EpochOptions(torch.device("cpu"), progress=False))
    after = loss_now()
    assert state["step"] == 30 and after < 0.5 * before, (before, after)
