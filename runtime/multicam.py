"""The multi-camera loop: cameras -> muxer -> one batch -> preprocess -> one backend call -> per camera: postprocess,
outputs, statistics.

One step takes the freshest frame of every camera (runtime/mux.py), preprocesses each into its slot of one input
tensor, runs one inference call for the batch (split into calls of at most the model's batch size; a batch-1 model
runs one call per frame, said once at the start), then postprocesses and writes each camera's frame to that
camera's own outputs (`DIR/<camera>.mp4`, masks in `DIR/<camera>/`), drawn by the same Outputs/Renderer classes as
one camera's. A window shows all cameras tiled. Statistics are kept per camera (StreamStats, the single-camera
loop's) and for the run (frames/s, frame age, batch sizes formed, batch interval).

Frame age: for a live camera, capture -> result handed to the outputs; for a file (no capture time), the moment
its frame reached the muxer -> result, i.e. how long the loop held it.
"""

from __future__ import annotations

import math
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import cv2
import numpy as np

from runtime.backends import Backend
from runtime.mux import CameraFeed, FrameMuxer, Taken
from runtime.outputs import MaskWriter, OutputError, Outputs, Renderer, VideoFileOutput, WindowOutput
from runtime.pipeline import StopRequest, frame_preprocessor, keep_opencv_off_inference_cores, warm_up
from runtime.postprocess import MaskPostprocessor
from runtime.sources import SourceError, SourceOptions, open_path
from runtime.stats import LatencyRing, StreamStats

TILE_WIDTH = 640  # each camera's tile in the window


def camera_names(descriptions: Sequence[str]) -> list[str]:
    """A short, file-name-safe, unique name per source: a file's or folder's stem (a glob's folder), `camera0` for
    camera 0, the host and path of a URL; a repeated name gets -2, -3, ..."""
    names: list[str] = []
    for text in descriptions:
        if re.fullmatch(r"camera \d+", text):
            base = text.replace(" ", "")
        elif "://" in text:
            base = re.sub(r"^[a-z0-9+]+://", "", text.lower())
        else:
            path = Path(text.rstrip("/"))
            if any(ch in path.name for ch in "*?["):
                path = path.parent
            base = path.stem if path.suffix else path.name
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._") or "camera"
        name, count = base[:48], 2
        while name in names:
            name, count = f"{base[:44]}-{count}", count + 1
        names.append(name)
    return names


def push_timeout_for(sources: Sequence, requested_ms: float | None) -> float | None:
    """The muxer's push timeout in seconds: as asked, else the longest frame interval of the live cameras (a step
    never waits longer for a camera than that camera takes to deliver). Files only: None, every step waits for every
    file (they have no real time to keep, and full batches are the fastest way through them)."""
    if requested_ms is not None:
        return requested_ms / 1000.0
    intervals = [source.max_age for source in sources if source.live and (source.max_age or 0) > 0]
    return max(intervals) if intervals else None


@dataclass
class CameraOutputs:
    """Where one camera's results go, and its statistics."""

    feed: CameraFeed
    outputs: Outputs
    stats: StreamStats
    postprocess: MaskPostprocessor = field(default_factory=MaskPostprocessor)


def open_camera_outputs(feed: CameraFeed, output_dir: str | None, masks_dir: str | None, view: str, alpha: float,
                        fourcc: str | None) -> Outputs:
    """`output_dir/<camera>.mp4` and `masks_dir/<camera>/` through the single-camera writer classes."""
    video = VideoFileOutput(Path(output_dir) / f"{feed.name}.mp4", feed.source.fps, fourcc) if output_dir else None
    masks = MaskWriter(Path(masks_dir) / feed.name) if masks_dir else None
    return Outputs(Renderer(view, alpha), None, video, masks)


class TiledWindow:
    """One window with every camera's view in a grid, each tile TILE_WIDTH wide, in camera order."""

    def __init__(self, names: Sequence[str], view: str, alpha: float, window: WindowOutput) -> None:
        self.window = window
        self.columns = math.ceil(math.sqrt(len(names)))
        self.rows = math.ceil(len(names) / self.columns)
        self.renderers = {name: Renderer(view, alpha) for name in names}
        self.slots = {name: index for index, name in enumerate(names)}
        self._tile_hw: tuple[int, int] | None = None
        self.canvas = np.zeros((0, 0, 3), np.uint8)

    def draw(self, name: str, image: np.ndarray, mask: np.ndarray, hud_text: str | None) -> None:
        view = self.renderers[name].render(image, mask, hud_text)
        if self._tile_hw is None:  # the first camera's aspect ratio sets every tile's
            height = max(1, round(view.shape[0] * TILE_WIDTH / view.shape[1]))
            self._tile_hw = (height, TILE_WIDTH)
            self.canvas = np.zeros((height * self.rows, TILE_WIDTH * self.columns, 3), np.uint8)
        height, width = self._tile_hw
        row, column = divmod(self.slots[name], self.columns)
        cv2.resize(view, (width, height), dst=self.canvas[row * height:(row + 1) * height,
                                                          column * width:(column + 1) * width],
                   interpolation=cv2.INTER_AREA)

    def show(self) -> bool:
        return self.window.show(self.canvas) if self.canvas.size else True

    def close(self) -> None:
        self.window.close()


class RunStats:
    """The whole run's numbers: frames/s over every camera, frame age over every frame, the batches formed."""

    def __init__(self, capacity: int = 16384) -> None:
        self.batch_sizes: Counter[int] = Counter()
        self.batch_interval = LatencyRing(capacity)
        self.inference = LatencyRing(capacity)  # per batch
        self.frame_age = LatencyRing(capacity)
        self.frames = 0
        self._first: float | None = None
        self._last: float | None = None

    def record_batch(self, size: int, inference_ms: float, started: float, ended: float) -> None:
        self.batch_sizes[size] += 1
        self.inference.add(inference_ms)
        if self._first is None:
            self._first = started
        else:
            self.batch_interval.add((ended - self._last) * 1000.0)
        self._last = ended
        self.frames += size

    @property
    def fps(self) -> float:
        if self._first is None or self._last is None or self._last <= self._first:
            return 0.0
        return self.frames / (self._last - self._first)


def run_cameras(cameras: Sequence[CameraOutputs], backend: Backend, stop: StopRequest, push_timeout: float | None,
                window: TiledWindow | None = None, hud: bool = True, status_every: float = 0.0,
                say: Callable[[str], None] = print) -> RunStats:
    """Stream every camera until all have ended, a stop request, or the window is closed. Returns the run's
    statistics (each camera's are in its CameraOutputs)."""
    keep_opencv_off_inference_cores(backend)
    by_name = {c.feed.name: c for c in cameras}
    batch_limit = max(1, min(backend.max_batch, len(cameras)))
    if batch_limit < len(cameras):
        say(f"model takes {batch_limit} frame{'s' if batch_limit > 1 else ''} a call: {len(cameras)} cameras run as "
            f"{math.ceil(len(cameras) / batch_limit)} calls a step" + (" (export with a symbolic batch axis, "
                                                                         "the default, to batch them)"
                                                                         if batch_limit == 1 else ""))
    preprocess = frame_preprocessor(backend, batch=batch_limit)
    warm_up(backend, preprocess)
    run = RunStats()
    muxer = FrameMuxer([c.feed for c in cameras], push_timeout)
    announced: set[str] = set()
    next_status = time.perf_counter() + status_every
    try:
        while not stop.requested:
            t_request = time.perf_counter()
            stop.waiting = True
            batch = muxer.next_batch(lambda: stop.requested)
            stop.waiting = False
            announce_retired(cameras, announced, say)
            if not batch:
                break
            t_batch = time.perf_counter()
            keep_going = True
            for start in range(0, len(batch), batch_limit):
                chunk = batch[start:start + batch_limit]
                keep_going = run_chunk(chunk, by_name, backend, preprocess, run, t_request, t_batch, window,
                                       hud) and keep_going
            if window is not None and not window.show():
                keep_going = False
            if not keep_going:
                break
            now = time.perf_counter()
            if status_every and now >= next_status:
                next_status = now + status_every
                print(status_line(cameras, run), file=sys.stderr, flush=True)
    finally:
        muxer.close()
    announce_retired(cameras, announced, say)
    return run


def run_chunk(chunk: list[Taken], by_name: dict[str, CameraOutputs], backend: Backend, preprocess, run: RunStats,
              t_request: float, t_batch: float, window: TiledWindow | None, hud: bool) -> bool:
    """One inference call for up to the model's batch of frames, then each frame to its camera's outputs."""
    preprocess_ms = []
    for slot, item in enumerate(chunk):
        t0 = time.perf_counter()
        preprocess(item.frame.image, slot)
        preprocess_ms.append((time.perf_counter() - t0) * 1000.0)
    t_infer = time.perf_counter()
    results = backend.infer(preprocess.input_tensor[:len(chunk)])
    inference_ms = (time.perf_counter() - t_infer) * 1000.0
    keep_going = True
    for slot, item in enumerate(chunk):
        camera = by_name[item.camera.name]
        t_post = time.perf_counter()
        mask = camera.postprocess(results[slot], item.frame.image.shape[:2])
        t_render = time.perf_counter()
        hud_text = f"{item.camera.name} | {camera.stats.recent_fps():5.1f} FPS | batch {len(chunk)}" if hud else None
        if window is not None:
            window.draw(item.camera.name, item.frame.image, mask, hud_text)
        keep_going = camera.outputs.write(item.frame.image, mask, item.frame.name, hud_text, scratch=True,
                                          release=partial(item.camera.source.release, item.frame)) and keep_going
        t_done = time.perf_counter()
        born = item.frame.timestamp if item.camera.source.live else item.arrived
        camera.stats.record(((t_batch - t_request) * 1000.0, preprocess_ms[slot], inference_ms,
                             (t_render - t_post) * 1000.0, (t_done - t_render) * 1000.0),
                            max(t_request, item.arrived), t_done, born)
        run.frame_age.add((t_done - born) * 1000.0)
    run.record_batch(len(chunk), inference_ms, t_request, time.perf_counter())
    return keep_going


def announce_retired(cameras: Sequence[CameraOutputs], announced: set[str], say: Callable[[str], None]) -> None:
    """One line per camera that failed for good (its source could not reconnect, or stalled), once."""
    for camera in cameras:
        feed = camera.feed
        if feed.retired and feed.name not in announced:
            announced.add(feed.name)
            going = sum(1 for c in cameras if not c.feed.done)
            say(f"warning: camera {feed.name} retired: {feed.retired}; {going} other camera"
                f"{'s' if going != 1 else ''} go on")


def status_line(cameras: Sequence[CameraOutputs], run: RunStats) -> str:
    per_camera = " ".join(f"{c.feed.name} {c.stats.recent_fps():.1f}" for c in cameras)
    return f"[{run.frames} frames] total {run.fps:.1f} FPS | {per_camera}"


def summary(cameras: Sequence[CameraOutputs], run: RunStats, backend: Backend, **extra) -> dict:
    """Per-camera summaries (the single-camera loop's form, with drops by cause) and the run's totals."""
    per_camera = {}
    for camera in cameras:
        source, drops = camera.feed.source, camera.feed.all_drops()
        per_camera[camera.feed.name] = camera.stats.summary(
            source.frames_read, sum(drops.values()), backend.name, backend.precision, source=source.description,
            dropped_by_cause=drops, retired=camera.feed.retired)
    return {
        "cameras": per_camera,
        "total": {
            "cameras": len(cameras),
            "frames_processed": run.frames,
            "frames_dropped": sum(c["frames_dropped"] for c in per_camera.values()),
            "fps": round(run.fps, 3),
            "frame_age": run.frame_age.summary(),
            "batch_sizes": {str(size): count for size, count in sorted(run.batch_sizes.items())},
            "batch_interval": run.batch_interval.summary(),
            "inference_per_batch": run.inference.summary(),
        },
        "backend": backend.name,
        "precision": backend.precision,
        **extra,
    }


def format_summary(result: dict) -> str:
    total = result["total"]
    sizes = ", ".join(f"{size}: {count}" for size, count in total["batch_sizes"].items())
    lines = [f"{total['cameras']} cameras: {total['frames_processed']} frames processed, {total['frames_dropped']} "
             f"dropped | {total['fps']:.1f} FPS total | frame age p50 {total['frame_age']['p50_ms']:.1f} / p99 "
             f"{total['frame_age']['p99_ms']:.1f} ms | batches (size: count) {sizes} | "
             f"{result['backend']} {result['precision']}",
             f"  {'camera':24s} {'frames':>7s} {'FPS':>7s} {'age p50':>8s} {'age p99':>8s}  drops"]
    for name, camera in result["cameras"].items():
        drops = ", ".join(f"{n} {cause}" for cause, n in camera["dropped_by_cause"].items() if n) or "0"
        state = f"  (retired: {camera['retired']})" if camera.get("retired") else ""
        lines.append(f"  {name:24s} {camera['frames_processed']:7d} {camera['fps']:7.1f} "
                     f"{camera['frame_age']['p50_ms']:8.1f} {camera['frame_age']['p99_ms']:8.1f}  {drops}{state}")
    return "\n".join(lines)


def open_cameras(texts: Sequence[str], options: SourceOptions, say: Callable[[str], None] = print
                 ) -> tuple[list[CameraFeed], list[str]]:
    """Every source that opens, named (camera_names); one line for each that does not, naming it. Returns the
    feeds and the failures; SourceError when none opens."""
    sources, failures = [], []
    for text in texts:
        try:
            sources.append(open_path(text, options))
        except SourceError as error:
            failures.append(str(error))
            say(f"warning: {error}; the other sources go on")
    if not sources:
        raise SourceError(f"none of the {len(texts)} sources could be opened")
    names = camera_names([source.description for source in sources])
    return [CameraFeed(name, source) for name, source in zip(names, sources, strict=True)], failures


def close_cameras(cameras: Sequence[CameraOutputs], feeds: Sequence[CameraFeed], window: TiledWindow | None
                  ) -> Exception | None:
    """Finalise every camera's outputs (also after a failure or a signal), then close the sources; the first
    error, if any."""
    failure = None
    for camera in cameras:
        try:
            camera.outputs.close()
        except (OutputError, OSError) as error:
            failure = failure or error
    if window is not None:
        window.close()
    for feed in feeds:
        feed.source.close()
    return failure
