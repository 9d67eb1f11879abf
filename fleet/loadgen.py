"""Synthetic cameras against the Serve deployment: each camera sends frames at its own rate, and the run reports
what a site would see.

    python -m fleet.loadgen --cameras 8 --fps 5                   # starts a local cluster and the deployment
    python -m fleet.loadgen --cameras 32 --fps 10 --address 10.0.0.5:6379 --seconds 60 --json load.json

Cameras start at random phases within one frame interval (real cameras are not synchronised). Frames come from a
video (default: the KITTI drive), each camera from its own offset, sent as JPEG (--encoding) through the
deployment handle (--http: through the HTTP proxy on loopback). A camera drops a frame, and counts it, when it
already has --max-in-flight frames unanswered (as a live camera would rather send the freshest frame); frames
still unanswered --grace seconds after the last send are counted as lost. Reported: delivered frames/s per
camera, latency p50/p95/p99 (send -> mask back), the batch sizes the deployment formed, drops, and whether every
camera's masks came back in the order they were sent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fleet.cluster import ClusterError, connect
from fleet.frames import ENCODINGS, encode_frame
from runtime.contract import ModelFileError
from runtime.ioutil import atomic_write_text, fail
from runtime.model_select import default_model
from runtime.sources import read_video_frames

DEFAULT_VIDEO = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "kitti_raw" / \
    "2011_09_26_drive_0001_image_02.mp4"
MAX_CAMERAS = 1024
MAX_SECONDS = 3600.0
DEFAULT_MAX_IN_FLIGHT = 4
DEFAULT_GRACE_S = 10.0


@dataclass
class CameraLog:
    sent: int = 0
    dropped: int = 0
    errors: int = 0
    lost: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    replica_ms: list[float] = field(default_factory=list)  # of those, the time inside the replica
    inference_ms: list[float] = field(default_factory=list)  # of that, the frame's share of its inference call
    answered_seqs: list[int] = field(default_factory=list)  # in the order the answers arrived
    batch_sizes: list[int] = field(default_factory=list)
    masks: dict[int, bytes] = field(default_factory=dict)  # kept only when asked (tests compare them)


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50_ms": 0.0, "p95_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
    p50, p95, p99 = np.percentile(values, (50, 95, 99))
    return {"p50_ms": round(float(p50), 3), "p95_ms": round(float(p95), 3), "p99_ms": round(float(p99), 3),
            "max_ms": round(float(max(values)), 3)}


def camera_frames(video: Path, encoding: str, limit: int = 64) -> list[tuple[bytes, tuple | None]]:
    frames = read_video_frames(video, limit)
    if not frames:
        raise ValueError(f"--video {video}: no frames could be read")
    return [encode_frame(frame, encoding) for frame in frames]


def http_sender(port: int):
    """A sender posting to the HTTP ingress on loopback (aiohttp comes with Ray Serve)."""
    import aiohttp

    from fleet.serve import ROUTE

    http_client: aiohttp.ClientSession | None = None
    url = f"http://127.0.0.1:{port}{ROUTE}"

    async def send(request: dict) -> dict:
        nonlocal http_client
        if http_client is None:
            http_client = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        headers = {"X-Camera": str(request["camera"]), "X-Seq": str(request["seq"])}
        if request.get("shape"):
            headers["X-Shape"] = ",".join(map(str, request["shape"]))
        async with http_client.post(url, data=request["frame"], headers=headers) as response:
            body = await response.read()
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {body[:200]!r}")
            return {"camera": request["camera"], "seq": int(response.headers["X-Seq"]), "mask_png": body,
                    "batch_size": int(response.headers["X-Batch-Size"])}

    async def close() -> None:
        if http_client is not None:
            await http_client.close()

    return send, close


async def run_camera(camera: int, send, frames: list, fps: float, count: int, start: float, max_in_flight: int,
                     log: CameraLog, keep_masks: bool) -> list[asyncio.Task]:
    in_flight: set[asyncio.Task] = set()
    tasks: list[asyncio.Task] = []

    async def one(seq: int, request: dict) -> None:
        sent = time.perf_counter()
        try:
            answer = await send(request)
        except Exception:  # noqa: BLE001 - counted; the camera keeps sending
            log.errors += 1
            return
        log.latencies_ms.append((time.perf_counter() - sent) * 1000.0)
        log.answered_seqs.append(int(answer["seq"]))
        log.batch_sizes.append(int(answer["batch_size"]))
        if "replica_ms" in answer:  # the handle's answers (HTTP carries the mask only)
            log.replica_ms.append(float(answer["replica_ms"]))
            log.inference_ms.append(float(answer["inference_ms"]))
        if keep_masks:
            log.masks[seq] = answer["mask_png"]

    for seq in range(count):
        await asyncio.sleep(max(0.0, start + seq / fps - time.perf_counter()))
        in_flight = {task for task in in_flight if not task.done()}
        if len(in_flight) >= max_in_flight:
            log.dropped += 1
            continue
        data, shape = frames[(camera * 13 + seq) % len(frames)]
        task = asyncio.ensure_future(one(seq, {"frame": data, "shape": shape, "camera": camera, "seq": seq}))
        in_flight.add(task)
        tasks.append(task)
        log.sent += 1
    return tasks


async def offer_load(send, frames: list, cameras: int, fps: float, seconds: float, max_in_flight: int,
                     grace_s: float, keep_masks: bool = False, seed: int = 0) -> tuple[list[CameraLog], float]:
    """Every camera's log, and the wall time from the first send to the last answer."""
    rng = random.Random(seed)
    logs = [CameraLog() for _ in range(cameras)]
    count = max(1, int(round(seconds * fps)))
    began = time.perf_counter() + 0.05
    senders = [run_camera(c, send, frames, fps, count, began + rng.uniform(0, 1.0 / fps), max_in_flight, logs[c],
                          keep_masks) for c in range(cameras)]
    pending = [task for tasks in await asyncio.gather(*senders) for task in tasks]
    done, not_done = await asyncio.wait(pending, timeout=grace_s) if pending else (set(), set())
    for task in not_done:
        task.cancel()
    for log in logs:
        log.lost = log.sent - len(log.answered_seqs) - log.errors
    return logs, time.perf_counter() - began


def report(logs: list[CameraLog], wall_s: float, fps: float, histogram: dict, info: dict) -> dict:
    latencies = [ms for log in logs for ms in log.latencies_ms]
    return {
        "cameras": len(logs), "offered_fps_per_camera": fps, "wall_s": round(wall_s, 3),
        "delivered_fps_per_camera": [round(len(log.answered_seqs) / wall_s, 3) for log in logs],
        "delivered_fps_total": round(sum(len(log.answered_seqs) for log in logs) / wall_s, 3),
        "sent": sum(log.sent for log in logs), "answered": sum(len(log.answered_seqs) for log in logs),
        "dropped": sum(log.dropped for log in logs), "lost": sum(log.lost for log in logs),
        "errors": sum(log.errors for log in logs),
        "in_order": all(log.answered_seqs == sorted(log.answered_seqs) for log in logs),
        "latency": percentiles(latencies),
        "in_replica": percentiles([ms for log in logs for ms in log.replica_ms]),
        "inference": percentiles([ms for log in logs for ms in log.inference_ms]),
        "batch_histogram": {str(size): count for size, count in sorted(histogram.items())},
        "deployment": info,
    }


def format_report(result: dict) -> str:
    per_camera = result["delivered_fps_per_camera"]
    latency = result["latency"]
    return "\n".join([
        f"{result['cameras']} cameras x {result['offered_fps_per_camera']:g} FPS offered for {result['wall_s']:.1f} s "
        f"({result['deployment'].get('backend', '?')}, batches of up to {result['deployment'].get('max_batch', '?')})",
        f"  delivered FPS per camera: min {min(per_camera):.2f}  mean {np.mean(per_camera):.2f}  max "
        f"{max(per_camera):.2f}  (total {result['delivered_fps_total']:.1f})",
        f"  latency ms: p50 {latency['p50_ms']:.1f}  p95 {latency['p95_ms']:.1f}  p99 {latency['p99_ms']:.1f}  "
        f"max {latency['max_ms']:.1f}",
        f"  of which in the replica (decode, batch wait, inference, encode): p50 {result['in_replica']['p50_ms']:.1f}  "
        f"p95 {result['in_replica']['p95_ms']:.1f}; inference (a frame's share of its call): p50 "
        f"{result['inference']['p50_ms']:.1f}  p95 {result['inference']['p95_ms']:.1f}",
        f"  batch sizes formed (size: batches): {', '.join(f'{k}: {v}' for k, v in result['batch_histogram'].items())}",
        f"  frames: {result['sent']} sent, {result['answered']} answered, {result['dropped']} dropped at the camera, "
        f"{result['lost']} lost, {result['errors']} errors; every camera in order: {result['in_order']}",
    ])


def run_load(handle, frames: list, cameras: int, fps: float, seconds: float,
             max_in_flight: int = DEFAULT_MAX_IN_FLIGHT, grace_s: float = DEFAULT_GRACE_S, http_port: int = 0,
             keep_masks: bool = False) -> tuple[dict, list[CameraLog]]:
    """Offer the load through `handle` (or HTTP on loopback when http_port), return the report and the logs. One
    frame goes through first, unmeasured: the first call sets up the handle's router and the replica's loop."""
    data, shape = frames[0]
    handle.segment.remote({"frame": data, "shape": shape, "camera": -1, "seq": 0}).result()
    handle.reset_histogram.remote().result()

    async def main() -> tuple[list[CameraLog], float]:
        if http_port:
            send, close = http_sender(http_port)
        else:
            async def send(request: dict) -> dict:
                return await handle.segment.remote(request)

            async def close() -> None:
                return None
        try:
            return await offer_load(send, frames, cameras, fps, seconds, max_in_flight, grace_s, keep_masks)
        finally:
            await close()

    logs, wall_s = asyncio.run(main())
    histogram = handle.batch_histogram.remote().result()
    return report(logs, wall_s, fps, histogram, handle.info.remote().result()), logs


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m fleet.loadgen", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cameras", type=int, required=True, metavar="N")
    parser.add_argument("--fps", type=float, required=True, metavar="F", help="frames per second per camera")
    parser.add_argument("--seconds", type=float, default=10.0, metavar="S", help="how long each camera sends")
    parser.add_argument("--video", default=str(DEFAULT_VIDEO), help="where the cameras' frames come from")
    parser.add_argument("--encoding", default="jpeg", choices=ENCODINGS)
    parser.add_argument("--http", action="store_true", help="through the HTTP ingress instead of the handle")
    parser.add_argument("--max-in-flight", type=int, default=DEFAULT_MAX_IN_FLIGHT, metavar="N")
    parser.add_argument("--grace", type=float, default=DEFAULT_GRACE_S, metavar="S")
    parser.add_argument("--address", metavar="ADDR", help="a cluster where `python -m fleet.serve` runs (default: "
                        "start a local cluster and the deployment here)")
    parser.add_argument("--port", type=int, default=0, help="HTTP port of the deployment (default: a free one)")
    parser.add_argument("--model", metavar="PATH", help="for the deployment started here")
    parser.add_argument("--max-batch", type=int, default=8, metavar="N", help="for the deployment started here")
    parser.add_argument("--json", metavar="PATH", help="also write the report here")
    return parser.parse_args(argv)


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not 1 <= args.cameras <= MAX_CAMERAS or not 0 < args.fps <= 1000 or not 0 < args.seconds <= MAX_SECONDS:
        return fail(f"--cameras 1..{MAX_CAMERAS}, --fps in (0, 1000] and --seconds in (0, {MAX_SECONDS:g}] please")
    if args.http and args.address and not args.port:
        return fail("--http with --address needs the deployment's --port")
    if args.max_in_flight < 1 or args.grace < 0:
        return fail("--max-in-flight must be 1 or more and --grace 0 or more")
    from fleet import serve as fleet_serve

    try:
        frames = camera_frames(Path(args.video), args.encoding)
        connect(args.address)
        if args.address:
            from ray import serve

            handle = serve.get_app_handle(fleet_serve.APP_NAME)
        else:
            port = (args.port or free_port()) if args.http else None  # no HTTP proxy unless it is measured
            args.port = port or 0
            handle = fleet_serve.start(Path(args.model) if args.model else default_model(), port,
                                       max_batch=args.max_batch)
        result, _logs = run_load(handle, frames, args.cameras, args.fps, args.seconds, args.max_in_flight,
                                 args.grace, args.port if args.http else 0)
    except (ClusterError, ModelFileError, ValueError, OSError) as error:
        return fail(error)
    finally:
        if not args.address:
            fleet_serve.stop_serving()
    print(format_report(result))
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
