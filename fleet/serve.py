"""Serve road masks to many cameras: a Ray Serve deployment that batches frames across cameras.

    python -m fleet.serve                                  # local cluster, HTTP on 127.0.0.1:8000
    python -m fleet.serve --address 10.0.0.5:6379 --replicas 4 --num-gpus 0.5
    curl --data-binary @frame.jpg http://127.0.0.1:8000/segment -o mask.png
    curl --data-binary @frame.bgr -H 'X-Shape: 376,1242,3' http://127.0.0.1:8000/segment -o mask.png

Requests queue in `@serve.batch` until max_batch frames are waiting or batch_wait_ms has passed since the first,
like DeepStream's nvstreammux (batch = number of sources, a timeout flushes a partial batch); where a fuller batch
costs no less a frame (a model fixed at batch 1; a symbolic batch on a CPU) nothing waits: a batch is the frames
that queued while the previous one ran. max_batch is the model's batch limit: a fixed batch N takes N at a time,
a symbolic batch dimension takes --max-batch; a model fixed at batch 1 still batches requests (--max-batch of
them) and runs the frames one after another inside the batch. Every answer carries its camera, sequence number
and the size of the batch it was in; the deployment keeps a histogram of the batch sizes it formed
(`batch_histogram`).
HTTP: POST /segment with a JPEG or PNG body, or raw uint8 BGR pixels with an X-Shape: H,W,3 header; X-Camera and
X-Seq are echoed back; the answer is the mask as a PNG (255 = road), with X-Batch-Size. Python callers use the
deployment handle (`serve.get_app_handle(APP_NAME).segment.remote({...})`), which skips the HTTP proxy.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from ray import serve

from fleet.cluster import LOOPBACK, ClusterError, connect, disconnect
from fleet.frames import FrameError, decode_frame
from fleet.segmenter import DYNAMIC, FrameSegmenter, fuller_batch_pays, resolve_backend
from runtime.backend_choice import DEVICES, RUNTIMES
from runtime.contract import ModelFileError
from runtime.ioutil import fail
from runtime.model_select import default_model
from runtime.outputs import encode_mask_png

APP_NAME = "roadseg"
ROUTE = "/segment"
DEFAULT_PORT = 8000
DEFAULT_MAX_BATCH = 8
DEFAULT_BATCH_WAIT_MS = 5.0


def serving_batch_size(model_limit: int | None, max_batch: int) -> int:
    """How many frames one batch takes: the model's fixed batch when it has one above 1, else max_batch."""
    if model_limit is not DYNAMIC and model_limit > 1:
        return model_limit
    return max_batch


def serving_batch_wait_ms(model_limit: int | None, requested_ms: float | None, device: str) -> float:
    """How long a partial batch waits for more frames: --batch-wait-ms when given; else DEFAULT_BATCH_WAIT_MS where a
    fuller batch costs less a frame (`fuller_batch_pays`), and no wait where it does not: waiting would only add
    latency. Batches still form from the frames that queue while one runs."""
    if requested_ms is not None:
        return requested_ms
    return DEFAULT_BATCH_WAIT_MS if fuller_batch_pays(model_limit, device) else 0.0


class RoadSegmenter:
    """The deployment's body (wrapped by serve.deployment in `build_app`): decode -> batch -> masks."""

    def __init__(self, model: str, backend: str, precision: str, threads: int, max_batch: int,
                 batch_wait_ms: float | None) -> None:
        self.segmenter = FrameSegmenter(model, backend, threads or None, precision)
        self.max_batch = serving_batch_size(self.segmenter.batch_limit, max_batch)
        self.batch_wait_ms = serving_batch_wait_ms(self.segmenter.batch_limit, batch_wait_ms,
                                                   self.segmenter.backend.device)
        self.segment_batch.set_max_batch_size(self.max_batch)
        self.segment_batch.set_batch_wait_timeout_s(self.batch_wait_ms / 1000.0)
        self.batches: Counter[int] = Counter()

    async def segment(self, request: dict) -> dict:
        """{"frame": bytes, "shape": None | [H, W, 3], "camera": any, "seq": int} -> {"mask_png": bytes, ...}.
        A bad frame fails its own request only (FrameError), never the batch it would have joined."""
        if not isinstance(request, dict) or "frame" not in request:
            raise FrameError("request: expected a dict with 'frame' bytes (and 'shape' for raw pixels)")
        arrived = time.perf_counter()
        image = await asyncio.to_thread(decode_frame, request["frame"], request.get("shape"))
        answer = await self.segment_batch(image)
        # Encoded outside the batch: the next batch need not wait for this one's PNGs (measured on 2 cores at 70 % of
        # capacity: the wait for a batch to start fell from 9.1 to 7.4 ms).
        answer["mask_png"] = await asyncio.to_thread(encode_mask_png, answer.pop("mask"))
        # What the replica itself took (decode, batch wait, inference, encode): the rest of a caller's latency is
        # Ray's transport and queueing.
        replica_ms = round((time.perf_counter() - arrived) * 1000.0, 3)
        return {"camera": request.get("camera"), "seq": request.get("seq"), **answer, "replica_ms": replica_ms}

    @serve.batch(max_batch_size=DEFAULT_MAX_BATCH, batch_wait_timeout_s=DEFAULT_BATCH_WAIT_MS / 1000.0)
    async def segment_batch(self, images: list) -> list[dict]:
        self.batches[len(images)] += 1
        # Off the event loop: requests keep arriving (and queue for the next batch) while this one runs.
        result = await asyncio.to_thread(self.segmenter, images)
        return [{"mask": mask, "batch_size": len(images), "inference_ms": round(ms, 3)}
                for mask, ms in zip(result.masks, result.inference_ms, strict=True)]

    async def __call__(self, request):
        from starlette.responses import PlainTextResponse, Response

        body = await request.body()
        try:
            headers = request.headers
            answer = await self.segment({"frame": body, "shape": headers.get("x-shape"),
                                         "camera": headers.get("x-camera"), "seq": headers.get("x-seq")})
        except FrameError as error:
            return PlainTextResponse(f"{error}\n", status_code=400)
        headers = {"X-Batch-Size": str(answer["batch_size"])}
        headers.update({f"X-{key.title()}": str(answer[key]) for key in ("camera", "seq") if answer[key] is not None})
        return Response(answer["mask_png"], media_type="image/png", headers=headers)

    def batch_histogram(self) -> dict[int, int]:
        return dict(sorted(self.batches.items()))

    def reset_histogram(self) -> None:
        self.batches.clear()

    def info(self) -> dict:
        return {"model": str(self.segmenter.model), "backend": self.segmenter.label, "max_batch": self.max_batch,
                "model_batch_limit": self.segmenter.batch_limit or "dynamic", "batch_wait_ms": self.batch_wait_ms}


def build_app(model: Path, backend: str = "auto", device: str = "auto", precision: str = "auto", threads: int = 0,
              max_batch: int = DEFAULT_MAX_BATCH, batch_wait_ms: float | None = None, replicas: int = 1,
              num_cpus: float = 1.0, num_gpus: float = 0.0):
    """The bound application. max_ongoing_requests is twice the batch so that while one batch runs the next one
    can fill (Serve's default of 5 would cap every batch at 5)."""
    from ray import serve

    backend, precision, _label = resolve_backend(model, backend, device, precision)  # every replica runs the same one
    options = {"num_cpus": num_cpus, **({"num_gpus": num_gpus} if num_gpus else {})}
    deployment = serve.deployment(RoadSegmenter, name=APP_NAME, num_replicas=replicas, ray_actor_options=options,
                                  max_ongoing_requests=2 * max(max_batch, 1))
    return deployment.bind(str(model), backend, precision, threads, max_batch, batch_wait_ms)


def start(model: Path, port: int | None = DEFAULT_PORT, **app_options):
    """serve.start with HTTP on loopback (port None: no HTTP proxy, handles only), then the app; its handle."""
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    quiet = {"log_level": "WARNING"}
    if port is None:
        serve.start(http_options={"host": LOOPBACK, "location": "Disabled"}, logging_config=quiet)
    else:
        serve.start(http_options={"host": LOOPBACK, "port": port}, logging_config=quiet)
    return serve.run(build_app(model, **app_options), name=APP_NAME, route_prefix=ROUTE, logging_config=quiet)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m fleet.serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", metavar="PATH", help=".onnx or engine (default: the best for this machine)")
    parser.add_argument("--backend", default="auto", choices=RUNTIMES)
    parser.add_argument("--device", default="auto", choices=DEVICES)
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    parser.add_argument("--threads", type=int, default=0, metavar="N", help="inference threads per replica (0: all)")
    parser.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH, metavar="N",
                        help="frames per batch for a model without a fixed batch above 1")
    parser.add_argument("--batch-wait-ms", type=float, default=None, metavar="MS",
                        help=f"how long a partial batch waits for more frames (default: {DEFAULT_BATCH_WAIT_MS:g} "
                        "where a fuller batch costs less a frame: a GPU, or a fixed batch above 1; else 0)")
    parser.add_argument("--replicas", type=int, default=1, metavar="N")
    parser.add_argument("--num-gpus", type=float, default=0.0, metavar="F", help="GPUs per replica (0.5: two per GPU)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="HTTP port on 127.0.0.1")
    parser.add_argument("--address", metavar="ADDR", help="join the Ray cluster at HOST:PORT (default: a local one)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wait_ok = args.batch_wait_ms is None or args.batch_wait_ms >= 0
    if args.max_batch < 1 or args.replicas < 1 or not wait_ok or not 0 < args.port < 65536:
        return fail("--max-batch and --replicas must be 1 or more, --batch-wait-ms 0 or more, --port 1..65535")
    stopped = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda *_: stopped.set())
    try:
        model = Path(args.model) if args.model else default_model()
        resolve_backend(model, args.backend, args.device, args.precision)  # a bad model fails here in one line
        print(connect(args.address).line(), flush=True)
        handle = start(model, args.port, backend=args.backend, device=args.device, precision=args.precision,
                       threads=args.threads, max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms,
                       replicas=args.replicas, num_gpus=args.num_gpus)
        info = handle.info.remote().result()
        print(f"serving {info['model']} ({info['backend']}, batches of up to {info['max_batch']}) at "
              f"http://{LOOPBACK}:{args.port}{ROUTE}; Ctrl-C stops", flush=True)
        stopped.wait()
    except (ClusterError, ModelFileError, OSError) as error:
        return fail(error)
    finally:
        stop_serving()
    return 0


def stop_serving() -> None:
    import ray

    if ray.is_initialized():
        serve.shutdown()
    disconnect()


if __name__ == "__main__":
    sys.exit(main())
