"""Running an entry point in this process the way its CLI runs it, and the hostile files every reader of a JSON
sidecar must survive."""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable
from pathlib import Path

import pytest

HOSTILE_KINDS = ("fifo", "deep", "huge")


def call_main(main: Callable[[list[str]], int], argv: list[str], case: str) -> tuple[int, str]:
    """(exit code, stderr) of `main(argv)`; anything but an int exit code is a bug, and a non-zero exit must come
    with exactly one short `error:` line and no traceback. `case` names the input in every failure (with the
    seed that made it, where one did)."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            code = main(argv)
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    except BaseException as error:  # noqa: BLE001 - the point of the tests: nothing may escape
        pytest.fail(f"{case}: raised {type(error).__name__}: {str(error)[:300]}")
    text = stderr.getvalue()
    assert "Traceback" not in text, f"{case}: {text[-2000:]}"
    if code != 0:
        errors = [line for line in text.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, f"{case}: exit {code} with stderr {text[-1000:]!r}"
        assert len(errors[0]) < 600, f"{case}: error line too long: {errors[0][:200]}..."
    return code, text


def write_hostile(path: Path, kind: str, depth: int, size: int) -> None:
    """Replace `path` with a FIFO (a reader that opens it blocks), JSON nested `depth` deep, or a sparse file of
    `size` bytes."""
    path.unlink(missing_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "deep":
        path.write_text("[" * depth + "]" * depth)
    else:
        with open(path, "wb") as stream:
            stream.truncate(size)
