"""Work off the loop's critical path: one thread that takes jobs from a bounded queue, in order.

Used for the file outputs (overlay drawing, mp4 encoding, PNG masks): the loop hands a frame over and goes
back to inference. Nothing is dropped: when the thread falls behind, `submit` blocks (back-pressure). Each
job's `release` runs once the job is done or skipped, so a frame buffer lent to it returns to the source.
An exception in a job is kept and raised on the caller's thread by the next `submit` or by `close`, once;
later jobs are released unwritten.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

# Jobs queued at once. A few absorb an encoder's jitter (a keyframe costs more); more would hold more source
# buffers and make a stop wait longer for the backlog.
QUEUE_DEPTH = 3
POLL_S = 0.05

Job = TypeVar("Job")


class BackgroundWriter(Generic[Job]):
    def __init__(self, work: Callable[[Job], None], release: Callable[[Job], None],
                 depth: int = QUEUE_DEPTH, name: str = "file-writer") -> None:
        self._work, self._release = work, release
        self._jobs: queue.Queue = queue.Queue(maxsize=depth)
        self._end = object()
        self.error: BaseException | None = None
        self._reported = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is self._end:
                return
            try:
                if self.error is None:
                    self._work(job)
            except BaseException as error:  # noqa: BLE001 - raised on the caller's thread
                self.error = error
            finally:
                self._release(job)

    def raise_error(self) -> None:
        """Raise the thread's error on the calling thread, the first time only."""
        if self.error is not None and not self._reported:
            self._reported = True
            raise self.error

    def submit(self, job: Job) -> None:
        """Queue a job; blocks while the queue is full. Raises the thread's error (the job is then released)."""
        while True:
            if self.error is not None:
                self._release(job)
                self.raise_error()
                return
            try:
                self._jobs.put(job, timeout=POLL_S)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        """Finish every queued job and stop the thread; raise its error if not raised yet."""
        while self._thread.is_alive():
            try:
                self._jobs.put(self._end, timeout=POLL_S)
                break
            except queue.Full:
                continue
        self._thread.join()
        self.raise_error()
