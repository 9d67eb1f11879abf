"""A real bursty network source on loopback: FFmpeg serves the KITTI drive as MPEG-TS over HTTP at its native
10 FPS, the runtime reads it with --source http://127.0.0.1:PORT, and the server is killed and restarted
mid-stream. Only 127.0.0.1; every wait is bounded."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from stream_helpers import KITTI_VIDEO, assert_one_error_line, read_video, start_stream, tiny_onnx_model

pytestmark = [
    pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed (.ci/run installs it)"),
    pytest.mark.skipif(not KITTI_VIDEO.is_file(), reason=f"KITTI video not found at {KITTI_VIDEO}"),
]


def free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def listening(port: int) -> bool:
    """Whether something listens on 127.0.0.1:port, read from /proc: connecting to find out would use up
    the server's one connection (`-listen 1`)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == f"0100007F:{port:04X}" and fields[3] == "0A":
            return True
    return False


def serve(port: int, seconds: float | None = None) -> subprocess.Popen:
    limit = ["-t", str(seconds)] if seconds else []
    server = subprocess.Popen(["ffmpeg", "-nostdin", "-loglevel", "error", "-re", "-i", str(KITTI_VIDEO), *limit,
                               "-c", "copy", "-f", "mpegts", "-listen", "1", f"http://127.0.0.1:{port}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while not listening(port):
        assert server.poll() is None and time.monotonic() < deadline, "ffmpeg did not start listening"
        time.sleep(0.05)
    return server


def frame_numbers(names: list[str], prefix: str) -> list[int]:
    return sorted(int(name[len(prefix):]) for name in names if name.startswith(prefix) and name[len(prefix)].isdigit())


def test_http_stream_keeps_fresh_frames_and_survives_a_server_restart(tmp_path: Path):
    model = tiny_onnx_model(tmp_path)
    port = free_loopback_port()
    out, masks, stats_path = tmp_path / "live.mp4", tmp_path / "masks", tmp_path / "stats.json"
    servers = [serve(port)]
    client = start_stream(f"http://127.0.0.1:{port}", "--model", str(model), "--headless", "--quiet",
                          "--output", str(out), "--save-masks", str(masks), "--stats-json", str(stats_path),
                          "--reconnect-attempts", "3", "--stall-timeout", "8")
    try:
        deadline = time.monotonic() + 30
        while len(list(masks.glob("*.png"))) < 40:  # a few seconds of steady streaming
            assert client.poll() is None, client.communicate()
            assert time.monotonic() < deadline, "the stream did not get going"
            time.sleep(0.1)
        servers[0].send_signal(signal.SIGKILL)
        servers[0].wait(timeout=10)
        servers.append(serve(port, seconds=4))  # restarted: 40 more frames, then the stream ends for good
        stdout, stderr = client.communicate(timeout=60)
    finally:
        for process in (client, *servers):
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)

    # The second server's end is a disconnect that no reconnect can fix: one line, exit 3, files finalised.
    assert client.returncode == 3, (stdout, stderr)
    assert "disconnected; 3 reconnect attempts failed" in assert_one_error_line(stderr)
    stats = json.loads(stats_path.read_text())
    assert stats["live"] and stats["reconnects"] == 1
    # One frame interval of the 10 FPS source, measured from arrivals (the short probe reports 20 FPS).
    assert 80 <= stats["max_age_ms"] <= 120, stats["max_age_ms"]
    assert stats["frames_dropped"] == sum(stats["dropped_by_cause"].values())
    assert stats["frames_read"] == stats["frames_processed"] + stats["frames_dropped"]

    names = [path.stem for path in masks.glob("*.png")]
    assert len(names) == stats["frames_processed"] == len(read_video(out))
    lost = []
    for prefix in ("", "r1_"):  # the first connection, then the one after the restart
        kept = frame_numbers(names, prefix)
        assert len(kept) >= 20, (prefix, kept)
        lost += sorted(set(range(kept[-1] + 1)) - set(kept))
    # The loop has headroom (a few ms a frame against 100 ms) and the short probe leaves FFmpeg no backlog to hand
    # over at connect, so frames are dropped only when a loaded machine stalls the loop for a while; then every
    # missing frame is a counted drop, by the freshness rule, and never most of the stream.
    assert len(lost) <= stats["frames_dropped"] == stats["dropped_by_cause"]["stale"], (lost, stats["dropped_by_cause"])
    assert stats["frames_dropped"] <= stats["frames_processed"] // 4, stats["dropped_by_cause"]

    # Latency starts when a frame arrives: waiting ~100 ms for the source's next frame is not counted.
    assert stats["stages"]["end_to_end"]["p50_ms"] < 50, stats["stages"]
    # Kept frames are fresh: only a frame with nothing newer behind it (the first, after model warm-up) waits longer.
    assert stats["frame_age"]["p90_ms"] <= stats["max_age_ms"], stats["frame_age"]


def test_network_reader_restores_the_ffmpeg_options_it_sets(monkeypatch):
    from runtime.sources import FFMPEG_OPTIONS_ENV, SourceError, network_reader

    monkeypatch.delenv(FFMPEG_OPTIONS_ENV, raising=False)
    closed = f"http://127.0.0.1:{free_loopback_port()}"  # nothing listens: the short probe and the full one fail
    with pytest.raises(SourceError, match="cannot be opened"):
        network_reader(closed)
    assert FFMPEG_OPTIONS_ENV not in os.environ
    monkeypatch.setenv(FFMPEG_OPTIONS_ENV, "rtsp_transport;tcp")  # the user's own options are left alone
    with pytest.raises(SourceError):
        network_reader(closed)
    assert os.environ[FFMPEG_OPTIONS_ENV] == "rtsp_transport;tcp"
