"""The loop: source -> preprocess -> backend.infer -> postprocess -> render/write.

Two forms of the same loop, with the same statistics (`pipelining_pays` picks one by default):
- `run_serial`: one frame at a time. Lowest latency; the choice when inference alone fills every core.
- `run_pipelined`: three stages overlap, each on its own thread, so that while frame N is
  inferred, frame N+1 is read and preprocessed and frame N-1 is postprocessed and drawn. When inference is
  the bottleneck the frame rate approaches the inference-bound rate instead of 1 / (sum of the stages).
  The output stage stays on the calling thread: HighGUI windows must be driven from the thread that
  created them. ONNX Runtime, TensorRT and OpenCV release the GIL, so the threads really run in parallel.
  The price, with a camera faster than inference: a frame is read while the one before it is inferred,
  so results are up to one inference time older than the serial loop's.

Both take each frame through the same steps (`prepare_frame`, `infer_frame`, `deliver_frame`); they differ only
in which thread runs each step and when.

Frames are not copied between stages: the source holds each frame's buffer until the output stage
releases it, and two input tensors alternate between the preprocess and inference stages.
"""

from __future__ import annotations

import os
import queue
import signal
import sys
import threading
import time
from dataclasses import dataclass
from functools import partial

import cv2
import numpy as np

from runtime.backends import Backend
from runtime.outputs import Outputs
from runtime.postprocess import MaskPostprocessor
from runtime.preprocess import FramePreprocessor
from runtime.sources import Frame, FrameSource
from runtime.stats import StreamStats

HUD_REFRESH_S = 0.5
POLL_S = 0.05  # how often a waiting stage looks at the stop flag


# SIGHUP does not exist on Windows.
STOP_SIGNALS = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None)


class StopRequest:
    """SIGINT/SIGTERM/SIGHUP (a closed terminal) -> finish the current frame and stop. A second signal, or one
    that arrives while the loop waits for a frame, interrupts at once; cleanup (finalising the video) runs either
    way."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name: str | None = None
        self.waiting = False
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)

    def ignore(self) -> None:
        """While finalising outputs: a further Ctrl-C must not cut the video's index in half."""
        for signum in self._previous:
            signal.signal(signum, signal.SIG_IGN)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, _frame) -> None:
        first = not self.requested
        self.requested = True
        self.signal_name = self.signal_name or signal.Signals(signum).name
        if not first or self.waiting:
            raise KeyboardInterrupt


class HudLine:
    """The heads-up text: FPS and per-stage milliseconds, refreshed twice a second so it can be read."""

    def __init__(self, backend: Backend, stats: StreamStats) -> None:
        self._label = f"{backend.name} {backend.precision} {backend.device}"
        self._stats = stats
        self._text = f"warming up | {self._label}"
        self._next = 0.0

    def text(self) -> str:
        now = time.perf_counter()
        # FPS needs one interval between two results: refreshing at the first result would show "0.0 FPS"
        # for the next HUD_REFRESH_S, which is many frames on a fast stream.
        if now >= self._next and self._stats.frame_interval.count:
            self._next = now + HUD_REFRESH_S
            ms = {name: ring.recent_mean(30) for name, ring in self._stats.stages.items()}
            self._text = (f"{self._stats.recent_fps():5.1f} FPS | cap {ms['capture']:.1f} pre {ms['preprocess']:.1f} "
                          f"inf {ms['inference']:.1f} post {ms['postprocess']:.1f} "
                          f"draw {ms['render']:.1f} ms | {self._label}")
        return self._text


class StatusPrinter:
    """A status line on stderr every `every_s` seconds (0: never)."""

    def __init__(self, backend: Backend, stats: StreamStats, every_s: float) -> None:
        self._hud, self._stats, self._every = HudLine(backend, stats), stats, every_s
        self._next = time.perf_counter() + every_s

    def tick(self, now: float) -> None:
        if self._every and now >= self._next:
            self._next = now + self._every
            print(f"[{self._stats.frames_processed} frames] {self._hud.text()}", file=sys.stderr, flush=True)


def frame_preprocessor(backend: Backend, batch: int = 1) -> FramePreprocessor:
    """The preprocessor for this backend's model: the full contract, or only the resize for a model that does
    the rest in its graph; `batch` frames a call."""
    return FramePreprocessor(backend.spec, uint8_input=backend.in_graph, batch=batch)


def warm_up(backend: Backend, preprocess: FramePreprocessor) -> None:
    """First-run allocations and kernel selection stay out of the statistics."""
    preprocess.input_tensor.fill(0)
    backend.infer(preprocess.input_tensor)


def arrival(requested: float, frame: Frame) -> float:
    """When a frame's latency starts: when the loop asked for it, or when it arrived if the loop had to wait
    for the source. Time spent waiting for a frame is the source's pace, not latency (frame age, measured
    from capture, tells how old a result is)."""
    return max(requested, frame.timestamp)


def pipelining_pays(backend: Backend, cores: int | None = None) -> bool:
    """Overlap the stages unless inference alone keeps every core busy: ONNX Runtime on a CPU with two cores
    or fewer. Measured on 2 cores (shipped INT8 model, camera faster than inference): the same frame rate
    either way (~130-145 FPS), and the serial loop's results are fresher (frame age p50 9 vs 17 ms). On 16
    cores pipelining gave +10 to +25 % frame rate; with a GPU backend the CPU is idle during inference,
    which is what the other stages fill."""
    return backend.device != "cpu" or (cores or os.cpu_count() or 1) > 2


def keep_opencv_off_inference_cores(backend: Backend) -> None:
    """Where inference alone keeps every core busy, OpenCV runs single-threaded.

    Its worker pool (resize, colour conversion, the encoder's input) would otherwise preempt ONNX Runtime's
    threads. Measured on 2 cores (Zen 4, shipped INT8 model, serial loop writing an mp4, 3 alternating runs):
    end-to-end / inference p50 1.116-1.173 with OpenCV's 2 threads, 1.087-1.090 with 1, frame rate unchanged.
    """
    if not pipelining_pays(backend):
        cv2.setNumThreads(1)


def run_pipeline(source: FrameSource, backend: Backend, outputs: Outputs, stats: StreamStats,
                 stop: StopRequest | None = None, hud: bool = True, status_every: float = 0.0,
                 pipelined: bool | None = None) -> None:
    """Stream `source` to `outputs`. Returns at the end of the source, on a stop request, or when the window
    is closed; an error in any stage is raised here. `pipelined=None` picks by `pipelining_pays`."""
    keep_opencv_off_inference_cores(backend)
    if pipelined is None:
        pipelined = pipelining_pays(backend)
    loop = run_pipelined if pipelined else run_serial
    loop(source, backend, outputs, stats, stop or StopRequest(), hud, status_every)


@dataclass
class InFlight:
    """One frame on its way through the stages, with the milliseconds each stage took."""

    frame: Frame
    preprocessor: FramePreprocessor  # holds this frame's input tensor until inference has read it
    start: float
    capture_ms: float
    preprocess_ms: float
    logits: np.ndarray | None = None
    inference_ms: float = 0.0


def prepare_frame(source: FrameSource, preprocessor: FramePreprocessor,
                  stop: StopRequest | None = None) -> InFlight | None:
    """The next frame, read and preprocessed into `preprocessor`'s input tensor; None at the end of the source.
    With `stop`, a signal that comes while the source keeps the loop waiting interrupts at once."""
    t_start = time.perf_counter()
    if stop is not None:
        stop.waiting = True
    frame = source.read()
    if stop is not None:
        stop.waiting = False
    if frame is None:
        return None
    t_captured = time.perf_counter()
    preprocessor(frame.image)
    t_preprocessed = time.perf_counter()
    return InFlight(frame, preprocessor, arrival(t_start, frame), (t_captured - t_start) * 1000.0,
                    (t_preprocessed - t_captured) * 1000.0)


def infer_frame(backend: Backend, item: InFlight) -> None:
    t_start = time.perf_counter()
    item.logits = backend.infer(item.preprocessor.input_tensor)  # a fresh array: ours to keep
    item.inference_ms = (time.perf_counter() - t_start) * 1000.0


def deliver_frame(item: InFlight, postprocess: MaskPostprocessor, outputs: Outputs, source: FrameSource,
                  stats: StreamStats, hud_line: HudLine | None) -> tuple[bool, float]:
    """Postprocess an inferred frame, hand it to the outputs and record its statistics; (whether the outputs want
    more, perf_counter() when they had it)."""
    t_start = time.perf_counter()
    mask = postprocess(item.logits[0], item.frame.image.shape[:2])
    t_postprocessed = time.perf_counter()
    # The source reuses the frame's buffer once released: the overlay may be drawn on it.
    keep_going = outputs.write(item.frame.image, mask, item.frame.name, hud_line.text() if hud_line else None,
                               scratch=True, release=partial(source.release, item.frame))
    t_rendered = time.perf_counter()
    stats.record((item.capture_ms, item.preprocess_ms, item.inference_ms,
                  (t_postprocessed - t_start) * 1000.0, (t_rendered - t_postprocessed) * 1000.0),
                 item.start, t_rendered, item.frame.timestamp)
    return keep_going, t_rendered


def run_serial(source: FrameSource, backend: Backend, outputs: Outputs, stats: StreamStats, stop: StopRequest,
               hud: bool = True, status_every: float = 0.0) -> None:
    preprocess = frame_preprocessor(backend)
    postprocess = MaskPostprocessor(backend.spec.road_index)
    hud_line = HudLine(backend, stats) if hud else None
    status = StatusPrinter(backend, stats, status_every)
    warm_up(backend, preprocess)
    source.hold_frames()  # a frame's buffer stays valid until the file writer is done with it
    while not stop.requested:
        item = prepare_frame(source, preprocess, stop)
        if item is None:
            break
        infer_frame(backend, item)
        keep_going, t_delivered = deliver_frame(item, postprocess, outputs, source, stats, hud_line)
        if not keep_going:
            break
        status.tick(t_delivered)


# ------------------------------------------------------------------------------------------ pipelined


END = None  # put on a queue when the stage before has no more frames


class Stage(threading.Thread):
    """A worker that runs `body` until it returns; an exception halts the pipeline and is kept for the
    calling thread to raise."""

    def __init__(self, name: str, body, halt: threading.Event) -> None:
        super().__init__(name=name, daemon=True)
        self._body, self._halt = body, halt
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._body()
        except BaseException as error:  # noqa: BLE001 - re-raised on the calling thread
            self.error = error
            self._halt.set()


def put(target: queue.Queue, item, halt: threading.Event) -> bool:
    """Put with back-pressure that still notices a halt; False when halted."""
    while not halt.is_set():
        try:
            target.put(item, timeout=POLL_S)
            return True
        except queue.Full:
            continue
    return False


def get(source: queue.Queue, halt: threading.Event):
    """Get that still notices a halt; END when halted."""
    while not halt.is_set():
        try:
            return source.get(timeout=POLL_S)
        except queue.Empty:
            continue
    return END


def run_pipelined(source: FrameSource, backend: Backend, outputs: Outputs, stats: StreamStats, stop: StopRequest,
                  hud: bool = True, status_every: float = 0.0) -> None:
    preprocessors = [frame_preprocessor(backend) for _ in range(2)]  # one filling while one is inferred
    postprocess = MaskPostprocessor(backend.spec.road_index)
    hud_line = HudLine(backend, stats) if hud else None
    status = StatusPrinter(backend, stats, status_every)
    warm_up(backend, preprocessors[0])
    free_inputs: queue.Queue[FramePreprocessor] = queue.Queue()
    for preprocessor in preprocessors:
        free_inputs.put(preprocessor)
    prepared: queue.Queue[InFlight | None] = queue.Queue(maxsize=1)
    inferred: queue.Queue[InFlight | None] = queue.Queue(maxsize=1)  # back-pressure from a slow output
    halt = threading.Event()
    source.hold_frames()

    def prepare() -> None:
        while True:
            preprocessor = get(free_inputs, halt)
            if preprocessor is END:
                return
            item = prepare_frame(source, preprocessor)
            if item is None:
                put(prepared, END, halt)
                return
            if not put(prepared, item, halt):
                return

    def infer() -> None:
        while True:
            item = get(prepared, halt)
            if item is END:
                put(inferred, END, halt)
                return
            infer_frame(backend, item)
            free_inputs.put(item.preprocessor)
            if not put(inferred, item, halt):
                return

    stages = [Stage("prepare", prepare, halt), Stage("infer", infer, halt)]
    for stage in stages:
        stage.start()
    try:
        while not stop.requested:
            stop.waiting = True  # nothing in hand: a signal may interrupt at once
            item = get(inferred, halt)
            stop.waiting = False
            if item is END:
                break
            keep_going, t_delivered = deliver_frame(item, postprocess, outputs, source, stats, hud_line)
            if not keep_going:
                break
            status.tick(t_delivered)
    finally:
        halt.set()
        for stage in stages:
            # A stage blocked in source.read() wakes up when the caller closes the source, then sees the halt.
            stage.join(timeout=0.5)
    for stage in stages:
        if stage.error is not None:
            raise stage.error
