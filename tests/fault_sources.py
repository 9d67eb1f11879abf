"""A test-pattern camera that fails on cue, for the stall, reconnect and retirement tests.

`faulty://WxH@FPS?stall_after=N` hangs in read() after N frames (a camera whose driver blocks);
`disconnect_after=N` ends each connection after N frames, and `reconnect=fail` makes every reopen after the first
fail. `register()` makes the scheme known to runtime/sources.py's `open_uri`, in this process.
"""

from __future__ import annotations

import threading

import numpy as np

from runtime.sources import ReaderFactory, SourceError, SyntheticReader, parse_synthetic_uri, register_scheme

SCHEME = "faulty"
OPTIONS = ("stall_after", "disconnect_after", "reconnect")


class FaultyReader(SyntheticReader):
    def __init__(self, width: int, height: int, fps: float, stall_after: int = 0, disconnect_after: int = 0,
                 description: str = SCHEME) -> None:
        super().__init__(width, height, fps, description=description)
        self._stall_after, self._disconnect_after = stall_after, disconnect_after
        self._served = 0

    def read(self, buffer: np.ndarray | None) -> tuple[np.ndarray, str] | None:
        if self._disconnect_after and self._served >= self._disconnect_after:
            return None
        if self._stall_after and self._served >= self._stall_after:
            threading.Event().wait()
        self._served += 1
        return super().read(buffer)


def faulty_factory(uri: str) -> ReaderFactory:
    width, height, fps, options = parse_synthetic_uri(uri)
    unknown = set(options) - set(OPTIONS)
    if unknown:
        raise SourceError(f"{uri}: unknown options {', '.join(sorted(unknown))} (expected {', '.join(OPTIONS)})")
    stall_after = int(options.get("stall_after", 0))
    disconnect_after = int(options.get("disconnect_after", 0))
    reconnect_ok = options.get("reconnect", "ok") == "ok"
    opened = []

    def factory() -> FaultyReader:
        if opened and not reconnect_ok:
            raise SourceError(f"{uri}: cannot be opened")
        opened.append(True)
        return FaultyReader(width, height, fps, stall_after, disconnect_after, description=uri)

    return factory


def register() -> None:
    register_scheme(SCHEME, faulty_factory)
