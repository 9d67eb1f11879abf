"""Many cameras, one engine: the freshest frame of each camera, gathered into one batch per step.

Each camera's source (runtime/sources.py) already reads on its own thread with its live policy; a `CameraFeed`
adds one more thread per camera that moves the source's next frame into the camera's single slot. The
`FrameMuxer` takes one frame from every slot that holds one and hands them over as a batch:
- as soon as every camera still running has a frame waiting (batch size = number of cameras), or
- `push_timeout` after the first frame of the batch arrived, with whatever is there (a stalled or slow camera
  delays the others by at most that much; DeepStream's nvstreammux flushes a partial batch the same way). With no
  push timeout (None) a step waits for every camera still running.

A live camera's slot follows the source's own freshness rule: a waiting frame is replaced by the next one only
once it is older than the source's `max_age` (counted per camera as a "stale" drop); a loop with headroom
therefore gets every frame. A file's slot is never replaced: every frame is processed, in order, and is filled
only when the loop asks for a batch: the file source already decodes ahead on its own thread, so a frame parked in
the slot a whole batch early would only make it look a batch older than it is.
A camera whose source ends (end of file, or a live source that failed to reconnect) leaves the batch; the
others go on. Frames are the sources' buffers, handed back with `release`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from runtime.sources import DROP_CAUSES, Frame, FrameSource

POLL_S = 0.05  # how often a waiting thread looks at the stop flag


@dataclass
class Taken:
    """One camera's frame in a batch, with when it reached the muxer (its slot) and when the muxer took it."""

    camera: CameraFeed
    frame: Frame
    arrived: float
    taken: float


@dataclass
class CameraFeed:
    """One camera: its name (used for its output files), its source, and the slot its frames wait in."""

    name: str
    source: FrameSource
    drops: dict[str, int] = field(default_factory=lambda: {cause: 0 for cause in DROP_CAUSES})
    ended: bool = False  # the source has no more frames
    retired: str | None = None  # why the camera left early, when it failed
    _slot: Frame | None = None
    _arrived: float = 0.0

    @property
    def done(self) -> bool:
        """Ended and nothing left waiting: no more frames will come from this camera."""
        return self.ended and self._slot is None

    def all_drops(self) -> dict[str, int]:
        """Drops by cause: the source's own (live queue) and the slot's (freshness rule)."""
        source_drops = self.source.drops
        return {cause: self.drops[cause] + source_drops.get(cause, 0) for cause in DROP_CAUSES}


class FrameMuxer:
    """Batches of the freshest frame of each camera (see the module doc); `next_batch` -> list of Taken, [] when
    stopped, None once every camera has ended."""

    def __init__(self, cameras: Sequence[CameraFeed], push_timeout: float | None) -> None:
        self.cameras = list(cameras)
        self.push_timeout = push_timeout
        self._cond = threading.Condition()
        # When the first frame of the coming batch reached its slot: the push timeout counts from here. A live
        # camera's waiting frame may be replaced by a fresher one meanwhile; that must not restart the clock, or a
        # camera faster than the timeout would hold the batch until a stalled one gives up.
        self._batch_opened: float | None = None
        self._asking = False  # the loop waits in next_batch: file cameras may fill their slots
        self._halt = threading.Event()
        self._threads = []
        for camera in self.cameras:
            camera.source.hold_frames()  # a frame stays valid until its outputs are written
            thread = threading.Thread(target=self._feed, args=(camera,), name=f"feed-{camera.name}", daemon=True)
            self._threads.append(thread)
        for thread in self._threads:
            thread.start()

    # feed threads
    def _feed(self, camera: CameraFeed) -> None:
        source = camera.source
        try:
            while not self._halt.is_set():
                frame = source.read()
                if frame is None:
                    break
                self._put(camera, frame)
        finally:
            with self._cond:
                camera.ended = True
                if source.error and not self._halt.is_set():
                    camera.retired = source.error
                self._cond.notify_all()

    def _put(self, camera: CameraFeed, frame: Frame) -> None:
        """Wait for the slot to empty (a file camera's also for the loop to ask); a live camera's waiting frame is
        replaced once it is older than max_age."""
        live = camera.source.live
        max_age = camera.source.max_age if live else None
        with self._cond:
            while (camera._slot is not None or not (live or self._asking)) and not self._halt.is_set():
                if camera._slot is None:  # a file camera waiting for the loop to ask
                    self._cond.wait(POLL_S)
                    continue
                waited = time.perf_counter() - camera._slot.timestamp
                if max_age is not None and waited > max_age:
                    camera.source.release(camera._slot)
                    camera._slot = None
                    camera.drops["stale"] += 1
                    break
                self._cond.wait(POLL_S if max_age is None else max(0.0, min(POLL_S, max_age - waited)) + 1e-4)
            if self._halt.is_set():
                camera.source.release(frame)
                return
            camera._slot, camera._arrived = frame, time.perf_counter()
            if self._batch_opened is None:
                self._batch_opened = camera._arrived
            self._cond.notify_all()

    # loop thread
    def next_batch(self, stopped=lambda: False) -> list[Taken] | None:
        with self._cond:
            self._asking = True
            self._cond.notify_all()
            try:
                ready = self._wait_for_batch(stopped)
                if not ready:
                    return ready  # [] when stopped, None once every camera has ended
                taken = time.perf_counter()
                batch = [Taken(c, c._slot, c._arrived, taken) for c in ready]
                for camera in ready:
                    camera._slot = None
                self._batch_opened = None
                return batch
            finally:
                self._asking = False
                self._cond.notify_all()

    def _wait_for_batch(self, stopped) -> list[CameraFeed] | None:
        """Under the lock: the cameras whose frames form the next batch, [] when stopped, None when all ended."""
        deadline = None
        while True:
            if stopped():
                return []
            running = [c for c in self.cameras if not c.done]
            if not running:
                return None
            ready = [c for c in running if c._slot is not None]
            if ready and len(ready) == len(running):
                return ready
            now = time.perf_counter()
            if ready and self.push_timeout is not None:
                deadline = (self._batch_opened or now) + self.push_timeout
                if now >= deadline:
                    return ready
            self._cond.wait(min(POLL_S, deadline - now) if deadline is not None else POLL_S)

    def close(self) -> None:
        """Stop the feed threads and hand back the frames still waiting (the sources are closed by their owner)."""
        self._halt.set()
        with self._cond:
            self._cond.notify_all()
            for camera in self.cameras:
                if camera._slot is not None:
                    camera.source.release(camera._slot)
                    camera._slot = None
        for thread in self._threads:
            # A feed blocked in source.read() wakes when its source is closed, then sees the halt.
            thread.join(timeout=0.2)
