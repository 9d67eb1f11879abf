"""Small I/O helpers shared by every stage: the one-line error exit, file hashes, and the writers of
runtime/output_policy.py under the names every stage imports."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from runtime.output_policy import atomic_write_bytes as atomic_write_bytes
from runtime.output_policy import atomic_write_text as atomic_write_text
from runtime.output_policy import publish as publish
from runtime.output_policy import save_figure as save_figure


def fail(error: BaseException | str, code: int = 2) -> int:
    """Print one clear line to stderr and return the exit code: bad input never shows a traceback."""
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    print(f"error: {message}", file=sys.stderr)
    return code


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (models can be hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
