"""Frame sources: cameras, video files, image folders, network streams, GStreamer pipelines, CSI cameras.

Every source is read on its own thread, so decoding overlaps inference:
- files and image folders (`PrefetchSource`) hand over every frame in order through a small pool of reused
  buffers: nothing is dropped, the reader just runs a few frames ahead;
- live sources (`LiveSource`) hand over their frames in order while they are fresh: a frame is dropped
  (and counted, by cause) only when it is older than the freshness budget (`max_age`, one frame interval of
  the source by default) while a newer one waits, or when the queue is full; so a loop with headroom gets
  every frame, also from a source that delivers in bursts. A live source that stalls or disconnects is
  reopened with exponential backoff; when that fails, `read()` returns None and `error` says why, so the
  caller can exit cleanly.

`open_path(text, options)` turns what the user typed (index, file, folder, glob, URI) into one of them.
"""

from __future__ import annotations

import collections
import glob
import os
import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import cv2
import numpy as np

from runtime.preprocess import as_bgr8

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".webp")
STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt")
# Decoded frames a file source may have out at once: the pipelined loop holds up to four (being prepared,
# inferred, queued for drawing, drawn), the file writer up to four (runtime/writer.py's queue of 3 and the one
# being encoded), and a couple more let decoding run ahead.
PREFETCH_DEPTH = 10
# Frames a live source may hold waiting for the pipeline: enough for a network source's burst (an MPEG-TS
# segment's worth at 10-30 FPS); beyond it the oldest is dropped ("queue_full").
LIVE_QUEUE_DEPTH = 8
DROP_CAUSES = ("stale", "queue_full")
# The freshness budget when the source does not say its frame rate.
DEFAULT_MAX_AGE_S = 1.0 / 30.0
# How long a network stream may block in open()/read() before OpenCV's FFmpeg backend gives up.
NETWORK_TIMEOUT_MS = 5000


class SourceError(RuntimeError):
    """A source that cannot be opened or read; the message names it."""


@dataclass
class Frame:
    image: np.ndarray  # H x W x 3 uint8 BGR
    index: int  # position in the source (0-based), counting dropped frames
    timestamp: float  # time.perf_counter() when the frame was captured
    name: str  # a stable name for per-frame outputs: the image's stem or the frame number


class Reader:
    """The synchronous, single-threaded part of a source: one frame per call."""

    description: str
    fps: float  # nominal frames per second, 0 when unknown
    input_paths: list[Path]  # the files it reads: no output of the run may replace one
    unreadable: list[str]  # inputs it skipped because they would not decode

    def __init__(self, description: str, fps: float = 0.0, input_paths: list[Path] | None = None) -> None:
        self.description = description
        self.fps = fps
        self.input_paths = list(input_paths or [])
        self.unreadable = []

    def read(self, buffer: np.ndarray | None) -> tuple[np.ndarray, str] | None:
        """The next BGR8 frame (written into `buffer` where possible) and its name; None at the end."""
        raise NotImplementedError

    def release(self) -> None:
        pass


ReaderFactory = Callable[[], Reader]  # opens a reader; a live source calls it again to reconnect after a failure

ARRIVAL_WINDOW = 32  # frames over which the arrival interval is measured
MIN_ARRIVALS = 5


def default_max_age(fps: float) -> float:
    """One frame interval of the source, in seconds (DEFAULT_MAX_AGE_S when its rate is unknown)."""
    return 1.0 / fps if fps > 0 else DEFAULT_MAX_AGE_S


# How a file's read-ahead thread yields to the pipeline: "nice" (niceness READ_AHEAD_NICE) or "idle" (Linux
# SCHED_IDLE). bench/decode_priority.py measures the two against each other.
READ_AHEAD_POLICY = "nice"
READ_AHEAD_NICE = 10


def lower_thread_priority() -> None:
    """Lower the calling thread below the pipeline's own threads (Linux; elsewhere a no-op).

    Read-ahead decoding costs a few CPU-ms per frame; at normal priority it lands right when the pipeline
    thread preprocesses (the moment a buffer is handed back) and doubles that stage's time on a small CPU.
    At niceness 10 it gets a tenth of a core's share while the pipeline competes for it, and fills the gaps
    inference leaves. SCHED_IDLE ("idle") yields even more on an idle machine, but starves the decoder
    whenever anything else keeps the cores busy: a file then streams at a fraction of a frame per second.
    Live capture threads keep normal priority: a starved camera thread would deliver stale frames.
    """
    try:
        if READ_AHEAD_POLICY == "idle" and hasattr(os, "SCHED_IDLE"):
            os.sched_setscheduler(threading.get_native_id(), os.SCHED_IDLE, os.sched_param(0))
        elif READ_AHEAD_POLICY == "nice" and hasattr(os, "setpriority"):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), READ_AHEAD_NICE)  # this thread only
    except OSError:
        pass


# --------------------------------------------------------------------------------------------- readers


class CaptureReader(Reader):
    """A cv2.VideoCapture over a camera, file, URL or GStreamer pipeline."""

    def __init__(self, target: int | str, description: str, api: int = cv2.CAP_ANY,
                 params: list[int] | None = None, loop: bool = False, is_file: bool = False) -> None:
        super().__init__(description, input_paths=[Path(target)] if is_file else [])
        self._target, self._api, self._params, self._loop = target, api, params or [], loop
        self._count = self._since_open = 0
        self._capture = self._open()
        # A file's container says how many frames it holds: ending well before that is a decode failure, not the end.
        count = self._capture.get(cv2.CAP_PROP_FRAME_COUNT) if is_file else 0.0
        self.frames_expected = int(count) if 0 < count < 1e9 else 0  # NaN and nonsense: unknown
        self.fps = float(self._capture.get(cv2.CAP_PROP_FPS) or 0.0)
        if not 0 < self.fps < 1000:  # backends report 0, NaN or 90000 when they don't know
            self.fps = 0.0

    def _open(self) -> cv2.VideoCapture:
        capture = cv2.VideoCapture(self._target, self._api, self._params)
        if not capture.isOpened():
            capture.release()
            raise SourceError(f"{self.description}: cannot be opened")
        return capture

    def read(self, buffer: np.ndarray | None) -> tuple[np.ndarray, str] | None:
        ok, image = self._capture.read(buffer)
        if not ok:
            self._check_complete()
        if not ok and self._loop and self._count:
            self._capture.release()
            self._capture = self._open()
            self._since_open = 0
            ok, image = self._capture.read(buffer)
        if not ok or image is None:
            return None
        name = f"{self._count:06d}"
        self._count += 1
        self._since_open += 1
        return as_bgr8(image), name

    def _check_complete(self) -> None:
        """A file that stops decoding well before its container's frame count failed part-way (a frame off is
        allowed: some containers estimate their count from the duration)."""
        if self._since_open < self.frames_expected - 1:
            raise SourceError(f"{self.description}: decoding failed part-way: {self._since_open} of "
                              f"{self.frames_expected} frames read")

    def release(self) -> None:
        self._capture.release()


FFMPEG_OPTIONS_ENV = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
# FFmpeg's default probe reads ~2 s of a network stream before the first frame and then hands that backlog over at
# once: ~20 stale frames at every connect. Two frame intervals of a 10 FPS stream (64 KiB) find the codec of
# every stream tried here (HTTP MPEG-TS from KITTI's H.264, first frame 0.2 s after connect, none in a burst).
LOW_LATENCY_PROBE = "analyzeduration;200000|probesize;65536"


def network_reader(uri: str) -> CaptureReader:
    """An FFmpeg capture of a network stream, opened with a short probe; FFmpeg's full probe if that fails.

    Options the user set in OPENCV_FFMPEG_CAPTURE_OPTIONS are used as they are.
    """
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, NETWORK_TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC, NETWORK_TIMEOUT_MS]
    if FFMPEG_OPTIONS_ENV in os.environ:
        return CaptureReader(uri, uri, cv2.CAP_FFMPEG, params)
    os.environ[FFMPEG_OPTIONS_ENV] = LOW_LATENCY_PROBE  # OpenCV reads it when the capture opens
    try:
        return CaptureReader(uri, uri, cv2.CAP_FFMPEG, params)
    except SourceError:
        pass
    finally:
        os.environ.pop(FFMPEG_OPTIONS_ENV, None)
    return CaptureReader(uri, uri, cv2.CAP_FFMPEG, params)


class ImageFolderReader(Reader):
    """Images from a folder or a glob, in name order. Unreadable files are skipped, counted and named."""

    def __init__(self, pattern: str, loop: bool = False) -> None:
        super().__init__(pattern, 0.0, list_images(pattern))
        self.paths = self.input_paths
        self._loop = loop
        self._position = 0
        self._good = 0

    def read(self, buffer: np.ndarray | None) -> tuple[np.ndarray, str] | None:
        while True:
            if self._position == len(self.paths):
                if not (self._loop and self._good):
                    return None
                self._position = 0
            path = self.paths[self._position]
            self._position += 1
            image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)  # keep 16-bit and alpha for as_bgr8
            try:
                image = as_bgr8(image)
            except ValueError as error:
                if str(path) not in self.unreadable:
                    self.unreadable.append(str(path))
                    print(f"warning: {path}: unreadable image ({error}), skipped", flush=True)
                continue
            self._good += 1
            return image, path.stem


class SyntheticReader(Reader):
    """A test-pattern camera (`synthetic://WxH@FPS`), for benchmarks and tests of the live path.

    Frames are a few precomputed patterns copied into the caller's buffer, so producing one costs a memcpy.
    """

    def __init__(self, width: int = 640, height: int = 192, fps: float = 30.0, description: str = "synthetic") -> None:
        super().__init__(description, fps)
        self._period = 1.0 / fps if fps > 0 else 0.0
        self._count = 0
        self._next = time.perf_counter()
        grid_x, grid_y = np.meshgrid(np.linspace(0, 255, width, dtype=np.float32),
                                     np.linspace(0, 255, height, dtype=np.float32))
        self._patterns = [np.dstack([(grid_x + 32 * k) % 256, grid_y, (grid_x + grid_y + 64 * k) % 256])
                          .astype(np.uint8) for k in range(4)]

    def read(self, buffer: np.ndarray | None) -> tuple[np.ndarray, str] | None:
        if self._period:  # pace like a real sensor
            self._next += self._period
            delay = self._next - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            else:
                self._next = time.perf_counter()
        pattern = self._patterns[self._count % len(self._patterns)]
        if buffer is None or buffer.shape != pattern.shape:
            buffer = np.empty_like(pattern)
        np.copyto(buffer, pattern)
        name = f"{self._count:06d}"
        self._count += 1
        return buffer, name


class PacedReader(Reader):
    """Plays a file at its own frame rate (`--realtime`): a file that behaves like a camera."""

    def __init__(self, reader: Reader, fps: float) -> None:
        super().__init__(reader.description, fps, reader.input_paths)
        self._reader = reader
        self._period = 1.0 / fps
        self._next: float | None = None

    def read(self, buffer: np.ndarray | None) -> tuple[np.ndarray, str] | None:
        now = time.perf_counter()
        self._next = now if self._next is None else max(self._next + self._period, now - self._period)
        if self._next > now:
            time.sleep(self._next - now)
        return self._reader.read(buffer)

    def release(self) -> None:
        self._reader.release()


# --------------------------------------------------------------------------------------------- sources


class FrameSource:
    """What the pipeline sees: `read()` -> Frame or None at the end; counters; `close()`.

    A frame's buffer is recycled for a later frame: by default when the next frame is read, or, once
    `hold_frames()` was called, only when the consumer hands it back with `release(frame)`, so that a
    pipelined loop can keep several frames in flight without copying them.
    """

    live: bool
    reader: Reader
    description: str
    fps: float
    input_paths: list[Path]  # the files it reads: no output of the run may replace one
    frames_read: int
    frames_dropped: int  # frames read but never handed over
    drops: dict[str, int]  # frames_dropped by cause (DROP_CAUSES)
    max_age: float | None  # a live source's freshness budget in seconds; None: no frame goes stale
    reconnects: int  # times the reader was reopened after a failure
    error: str | None  # why the source ended early (None: a normal end of stream)

    _manual_release = False

    def __init__(self, reader: Reader) -> None:
        self.reader = reader
        self.description = reader.description
        self.fps = reader.fps
        self.input_paths = reader.input_paths
        self.frames_read = 0
        self.frames_dropped = 0
        self.drops = {cause: 0 for cause in DROP_CAUSES}
        self.max_age = None
        self.reconnects = 0
        self.error = None

    def read(self) -> Frame | None:
        raise NotImplementedError

    def hold_frames(self) -> None:
        """From now on, frames stay valid until `release(frame)` (call before the first read)."""
        self._manual_release = True

    def release(self, frame: Frame) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()


class PrefetchSource(FrameSource):
    """Every frame, in order, decoded a few frames ahead on a thread into a pool of reused buffers."""

    live = False

    def __init__(self, reader: Reader, max_frames: int = 0, depth: int = PREFETCH_DEPTH) -> None:
        super().__init__(reader)
        self._max_frames = max_frames
        self._free: queue.Queue[np.ndarray | None] = queue.Queue()
        for _ in range(depth):
            self._free.put(None)  # buffers are allocated by the first reads, then recycled
        self._ready: queue.Queue[Frame | None] = queue.Queue()
        self._current: Frame | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="frame-reader", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        lower_thread_priority()
        index = 0
        try:
            while not self._stop.is_set() and not (self._max_frames and index >= self._max_frames):
                buffer = self._free.get()
                if self._stop.is_set():
                    break
                result = self.reader.read(buffer)
                if result is None:
                    break
                image, name = result
                self._ready.put(Frame(image, index, time.perf_counter(), name))
                index += 1
        except SourceError as error:  # surfaced on the main thread as a clean end with a reason
            self.error = str(error)
        except Exception as error:
            self.error = f"{self.description}: read failed ({error})"
        finally:
            self._ready.put(None)

    def read(self) -> Frame | None:
        if self._current is not None:
            self.release(self._current)  # the previous frame's buffer is free again
            self._current = None
        frame = self._ready.get()
        if frame is None:
            self._ready.put(None)  # stay at the end for later calls
            return None
        self.frames_read += 1
        if not self._manual_release:
            self._current = frame
        return frame

    def release(self, frame: Frame) -> None:
        self._free.put(frame.image)

    def close(self) -> None:
        self._stop.set()
        self._free.put(None)  # unblock a reader waiting for a buffer
        self._thread.join(timeout=2.0)
        if not self._thread.is_alive():
            self.reader.release()


class LiveSource(FrameSource):
    """Frames from a capture thread, in order, as long as they are fresh; reconnects with backoff when the
    source fails.

    The live policy drops only what is stale: every frame waits in a queue until the pipeline takes it,
    unless it is older than `max_age` (seconds since it arrived) while a newer one is waiting, or the queue
    is full. A loop with headroom therefore gets every frame, also from a network source that delivers them
    in bursts; a loop that falls behind skips to frames within the budget. Drops are counted by cause
    (`drops`). Buffers are recycled through a free list, so nothing is allocated per frame once the queue has
    reached its working depth.
    """

    live = True

    def __init__(self, open_reader: ReaderFactory, max_frames: int = 0, stall_timeout: float = 10.0,
                 reconnect_attempts: int = 5, backoff_start: float = 0.5, backoff_max: float = 8.0,
                 reconnect: bool = True, max_age: float | None = None, depth: int = LIVE_QUEUE_DEPTH) -> None:
        self._open_reader = open_reader
        self._reconnect_enabled = reconnect  # False for a file played in real time: its end is the end
        super().__init__(open_reader())  # the first open is synchronous: a camera that won't open fails here
        # Default freshness budget: one frame interval of the source, so a burst's frames are kept while the
        # loop keeps up, and a frame is never older than the one the source delivers next. The rate a stream
        # reports can be wrong (FFmpeg's short network probe reads a 10 FPS MPEG-TS stream as 20 FPS), so the
        # default follows the measured arrival interval when that is longer.
        self.max_age = max_age if max_age is not None else default_max_age(self.fps)
        self._measure_age = max_age is None
        self._arrivals: collections.deque[float] = collections.deque(maxlen=ARRIVAL_WINDOW)
        self._max_frames = max_frames
        self._stall_timeout = stall_timeout
        self._attempts, self._backoff_start, self._backoff_max = reconnect_attempts, backoff_start, backoff_max
        self._cond = threading.Condition()
        self._queue: collections.deque[Frame] = collections.deque()
        self._depth = max(1, depth)
        self._ended = False
        self._delivered = 0
        self._front: np.ndarray | None = None
        self._spare: list[np.ndarray] = []  # free buffers: dropped frames', released ones
        self._stalled = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="live-capture", daemon=True)
        self._thread.start()

    # capture thread
    def _run(self) -> None:
        index = 0
        try:
            while not self._stop.is_set():
                with self._cond:
                    back = self._spare.pop() if self._spare else None
                result = self.reader.read(back)
                if result is None:
                    if self._stop.is_set() or not self._reconnect_enabled or not self._reconnect():
                        break
                    continue
                image, name = result
                if self.reconnects:  # a reopened reader counts from 0 again: keep per-frame outputs apart
                    name = f"r{self.reconnects}_{name}"
                frame = Frame(image, index, time.perf_counter(), name)
                index += 1
                with self._cond:
                    self._follow_arrival_rate(frame.timestamp)
                    self.frames_read += 1
                    self._queue.append(frame)
                    self._drop_stale(frame.timestamp)
                    if len(self._queue) > self._depth:
                        self._drop_oldest("queue_full")
                    self._cond.notify()
        except Exception as error:
            self.error = f"{self.description}: capture failed ({error})"
        finally:
            with self._cond:
                self._ended = True
                self._cond.notify_all()

    def _follow_arrival_rate(self, now: float) -> None:
        """Under the lock: the default budget becomes the mean arrival interval of the recent frames where that
        is longer than the reported one (a mean, not a median: a stream that delivers in bursts still has its
        frame rate on average)."""
        if not self._measure_age:
            return
        self._arrivals.append(now)
        if len(self._arrivals) >= MIN_ARRIVALS:
            interval = (self._arrivals[-1] - self._arrivals[0]) / (len(self._arrivals) - 1)
            self.max_age = max(default_max_age(self.fps), interval)

    def _drop_oldest(self, cause: str) -> None:
        """Under the lock: the oldest waiting frame is dropped, its buffer freed, its cause counted."""
        self._spare.append(self._queue.popleft().image)
        self.frames_dropped += 1
        self.drops[cause] += 1

    def _drop_stale(self, now: float) -> None:
        """Under the lock: drop frames older than the budget, but never the newest (nothing fresher exists)."""
        while len(self._queue) > 1 and now - self._queue[0].timestamp > self.max_age:
            self._drop_oldest("stale")

    def _reconnect(self) -> bool:
        """Reopen with exponential backoff; False (and `error` set) once every attempt failed."""
        self.reader.release()
        delay, started = self._backoff_start, time.perf_counter()
        for attempt in range(1, self._attempts + 1):
            if self._stop.wait(delay):
                return False
            try:
                self.reader = self._open_reader()
                self.reconnects += 1
                with self._cond:
                    self._arrivals.clear()  # the outage is not a frame interval
                print(f"warning: {self.description}: reconnected (attempt {attempt})", flush=True)
                return True
            except SourceError:
                delay = min(delay * 2, self._backoff_max)
        self.error = (f"{self.description}: disconnected; {self._attempts} reconnect attempts failed over "
                      f"{time.perf_counter() - started:.1f} s")
        return False

    # pipeline thread
    def read(self) -> Frame | None:
        if self._max_frames and self._delivered >= self._max_frames:
            return None
        deadline = time.perf_counter() + self._stall_timeout
        with self._cond:
            while not self._queue and not self._ended:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    self.error = (f"{self.description}: stalled (no frame for {self._stall_timeout:g} s)")
                    self._stalled = True
                    self._stop.set()
                    return None
                self._cond.wait(remaining)
            if not self._queue:
                return None
            self._drop_stale(time.perf_counter())
            frame = self._queue.popleft()
            if self._front is not None:  # the previous frame's buffer is free again
                self._spare.append(self._front)
                self._front = None
        if not self._manual_release:
            self._front = frame.image
        self._delivered += 1
        return frame

    def release(self, frame: Frame) -> None:
        with self._cond:
            self._spare.append(frame.image)

    def close(self) -> None:
        self._stop.set()
        # A capture stuck in a driver call is left to die with the process (the thread is a daemon):
        # releasing a device from another thread while it is blocked in read() is not safe.
        self._thread.join(timeout=0.1 if self._stalled else 2.0)
        if not self._thread.is_alive():
            self.reader.release()


# --------------------------------------------------------------------------------------------- opening


def list_images(pattern: str) -> list[Path]:
    path = Path(pattern)
    if path.is_dir():
        paths = [p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    else:
        paths = [Path(p) for p in glob.glob(pattern) if Path(p).is_file()]
    if not paths:
        raise SourceError(f"{pattern}: no images found ({', '.join(IMAGE_SUFFIXES)})")
    return sorted(paths)


def csi_pipeline(sensor_id: int, width: int = 1280, height: int = 720, fps: int = 30, flip: int = 0) -> str:
    """The Jetson CSI camera pipeline: ISP capture in NVMM memory, converted to BGR for OpenCV's appsink."""
    return (f"nvarguscamerasrc sensor-id={sensor_id} ! "
            f"video/x-raw(memory:NVMM), width={width}, height={height}, framerate={fps}/1, format=NV12 ! "
            f"nvvidconv flip-method={flip} ! video/x-raw, format=BGRx ! videoconvert ! "
            f"video/x-raw, format=BGR ! appsink drop=true max-buffers=1 sync=false")


def read_video_frames(path: str | Path, limit: int | None = None) -> list[np.ndarray]:
    """Every frame of a video file (or the first `limit`), decoded in order; [] when none can be read."""
    capture = cv2.VideoCapture(str(path))
    frames: list[np.ndarray] = []
    try:
        while capture.isOpened() and (limit is None or len(frames) < limit):
            ok, frame = capture.read()
            if not ok:
                break
            frames.append(frame)
    finally:
        capture.release()
    return frames


def count_video_frames(path: str | Path) -> int:
    """Frames that decode in a video file, counted with grab() (decoded, never converted or kept); SourceError
    when decoding stops well before the container's own frame count (a file damaged part-way)."""
    capture = cv2.VideoCapture(str(path))
    count = 0
    try:
        declared = capture.get(cv2.CAP_PROP_FRAME_COUNT) if capture.isOpened() else 0.0
        while capture.isOpened() and capture.grab():
            count += 1
    finally:
        capture.release()
    if 0 < declared < 1e9 and count < int(declared) - 1:
        raise SourceError(f"{path}: decoding failed part-way: {count} of {int(declared)} frames read")
    return count


def read_video_frames_at(path: str | Path, indices: list[int]) -> list[tuple[int, np.ndarray]]:
    """(index, frame) for the wanted frame indices only: the others are grabbed and dropped, so a long, large
    source costs the memory of the frames kept, not of the whole video."""
    wanted = sorted(set(indices))
    capture = cv2.VideoCapture(str(path))
    frames: list[tuple[int, np.ndarray]] = []
    try:
        index = 0
        for target in wanted:
            while index < target and capture.grab():
                index += 1
            if index != target or not capture.grab():
                break
            ok, frame = capture.retrieve()
            index += 1
            if not ok:
                break
            frames.append((target, frame))
    finally:
        capture.release()
    return frames


def has_gstreamer() -> bool:
    return re.search(r"GStreamer:\s+YES", cv2.getBuildInformation()) is not None


def _check_video_file(path: Path) -> None:
    if not path.exists():
        raise SourceError(f"{path}: video file not found")
    if not path.is_file():
        raise SourceError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise SourceError(f"{path}: empty file (0 bytes)")


def decode_threads(cores: int | None = None) -> int:
    """FFmpeg decoding threads for a video file: a quarter of the cores, 1 to 4. FFmpeg's default (one per
    core) competes with inference for every core; on 2 cores, one thread also decodes the KITTI drive with
    a fifth less CPU time (4.0 vs 4.9 CPU-ms a frame) and still at 250 frames/s."""
    return max(1, min(4, (cores or os.cpu_count() or 1) // 4))


def open_video_reader(path: str | Path, loop: bool = False) -> CaptureReader:
    path = Path(path)
    _check_video_file(path)
    threads_property = getattr(cv2, "CAP_PROP_N_THREADS", None)  # OpenCV >= 4.6 (JetPack 5 ships 4.5)
    params = [threads_property, decode_threads()] if threads_property is not None else []
    try:
        reader = CaptureReader(str(path), str(path), cv2.CAP_ANY, params, loop=loop, is_file=True)
    except SourceError as error:
        raise SourceError(f"{path}: cannot be opened as a video (corrupt or unsupported format)") from error
    probe = cv2.VideoCapture(str(path))  # a file that opens but decodes nothing is as bad as a corrupt one
    ok, _ = probe.read()
    probe.release()
    if not ok:
        reader.release()
        raise SourceError(f"{path}: no decodable video frames (corrupt or unsupported format)")
    return reader


def _gstreamer_reader(pipeline: str, description: str) -> CaptureReader:
    if not has_gstreamer():
        raise SourceError(f"{description}: this OpenCV has no GStreamer support; on a Jetson use JetPack's "
                          "system OpenCV (python3-opencv), see docs/jetson.md")
    return CaptureReader(pipeline, description, cv2.CAP_GSTREAMER)


def parse_synthetic_uri(uri: str) -> tuple[int, int, float, dict[str, str]]:
    """`SCHEME://WIDTHxHEIGHT[@FPS][?KEY=VALUE&...]` -> (width, height, fps, options); 30 FPS unless given."""
    parsed = urlparse(uri)
    match = re.fullmatch(r"(\d+)x(\d+)(?:@([\d.]+))?", parsed.netloc + parsed.path.rstrip("/"))
    if not match:
        raise SourceError(f"{uri}: expected {parsed.scheme}://WIDTHxHEIGHT[@FPS]")
    options = {key: values[-1] for key, values in parse_qs(parsed.query).items()}
    return int(match[1]), int(match[2]), float(match[3]) if match[3] else 30.0, options


def synthetic_factory(uri: str) -> ReaderFactory:
    width, height, fps, options = parse_synthetic_uri(uri)
    if options:  # a misspelt URI must not run as a plain test pattern unnoticed
        raise SourceError(f"{uri}: synthetic://WIDTHxHEIGHT[@FPS] takes no options (got {', '.join(options)})")
    return lambda: SyntheticReader(width, height, fps, description=uri)


# Live-source URI schemes besides the network, camera and GStreamer ones: scheme -> the URI's ReaderFactory.
_SCHEMES: dict[str, Callable[[str], ReaderFactory]] = {}


def register_scheme(scheme: str, open_uri_reader: Callable[[str], ReaderFactory]) -> None:
    """Make `SCHEME://...` open as a live source (stall timeout, reconnects, freshness budget like a camera's) whose
    reader `open_uri_reader(uri)()` opens; a later registration of the same scheme replaces the earlier one."""
    _SCHEMES[scheme.lower()] = open_uri_reader


register_scheme("synthetic", synthetic_factory)


@dataclass
class SourceOptions:
    loop: bool = False
    realtime: bool = False
    max_frames: int = 0
    stall_timeout: float = 10.0
    reconnect_attempts: int = 5
    backoff_start: float = 0.5
    max_age: float | None = None  # live sources' freshness budget in seconds (None: one frame interval)


def _live(factory: ReaderFactory, options: SourceOptions, reconnect: bool = True) -> LiveSource:
    return LiveSource(factory, options.max_frames, options.stall_timeout, options.reconnect_attempts,
                      options.backoff_start, reconnect=reconnect, max_age=options.max_age)


def open_camera(index: int, options: SourceOptions) -> LiveSource:
    def factory() -> Reader:
        try:
            return CaptureReader(index, f"camera {index}")
        except SourceError as error:
            raise SourceError(f"camera {index}: cannot be opened (no such device, busy, or no permission "
                              f"for /dev/video{index})") from error

    return _live(factory, options)


def open_video(path: str | Path, options: SourceOptions) -> FrameSource:
    reader = open_video_reader(path, loop=options.loop)
    if not options.realtime:
        return PrefetchSource(reader, options.max_frames)
    fps = reader.fps or 30.0
    reader.release()
    return _live(lambda: PacedReader(open_video_reader(path, loop=options.loop), fps), options, reconnect=False)


def open_images(pattern: str, options: SourceOptions) -> FrameSource:
    reader = ImageFolderReader(pattern, loop=options.loop)
    if not options.realtime:
        return PrefetchSource(reader, options.max_frames)
    return _live(lambda: PacedReader(ImageFolderReader(pattern, loop=options.loop), 30.0), options,
                 reconnect=False)


def open_uri(uri: str, options: SourceOptions) -> FrameSource:
    """rtsp/http/... URLs, `csi://N`, `synthetic://WxH@FPS` (or another scheme given to `register_scheme`),
    `file://`, `v4l2:///dev/videoN`, or a raw GStreamer pipeline (anything with ' ! ' in it)."""
    scheme = urlparse(uri).scheme.lower() if "://" in uri else ""
    if " ! " in uri or uri.rstrip().endswith("appsink"):
        return _live(lambda: _gstreamer_reader(uri, "GStreamer pipeline"), options)
    if scheme == "csi":
        sensor = urlparse(uri).netloc or "0"
        if not sensor.isdigit():
            raise SourceError(f"{uri}: expected csi://N with N the sensor id")
        return _live(lambda: _gstreamer_reader(csi_pipeline(int(sensor)), uri), options)
    if scheme in _SCHEMES:
        return _live(_SCHEMES[scheme](uri), options)
    if scheme == "file":
        return open_path(urlparse(uri).path, options)
    if scheme == "v4l2":
        match = re.search(r"video(\d+)$", uri)
        if not match:
            raise SourceError(f"{uri}: expected v4l2:///dev/videoN")
        return open_camera(int(match[1]), options)
    if scheme in STREAM_SCHEMES:
        return _live(lambda: network_reader(uri), options)
    raise SourceError(f"{uri}: unknown source (expected rtsp://, http(s)://, csi://N, synthetic://WxH@FPS, "
                      "v4l2:///dev/videoN, file://, or a GStreamer pipeline)")


CAMERA_PREFIX = "camera:"


def open_path(text: str, options: SourceOptions) -> FrameSource:
    """What the user typed: `camera:N` (or a bare index), an image folder or glob, an image, a video file, or a URI."""
    if text.startswith(CAMERA_PREFIX):
        index = text[len(CAMERA_PREFIX):]
        if not index.isdigit():
            raise SourceError(f"{text}: expected camera:N with N a camera index (0, 1, ...)")
        return open_camera(int(index), options)
    if text.isdigit():
        return open_camera(int(text), options)
    if "://" in text or " ! " in text:
        return open_uri(text, options)
    path = Path(text)
    if path.is_dir() or any(ch in text for ch in "*?[") or path.suffix.lower() in IMAGE_SUFFIXES:
        return open_images(text, options)
    return open_video(path, options)
