"""Small I/O helpers shared by every stage: atomic writes and the one-line error exit."""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from pathlib import Path


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        publish(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def publish(temp_name: str | Path, path: str | Path) -> None:
    """Give a mkstemp file (mode 0600) the usual permissions, then rename it into place."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temp_name, 0o666 & ~umask)
    os.replace(temp_name, path)


def save_figure(figure, path: str | Path) -> None:
    """Save a matplotlib figure as PNG atomically and close it (the temporary name keeps the .png suffix,
    which savefig uses to pick the format)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(temp)
    import matplotlib.pyplot as plt  # only callers that already made a figure get here

    plt.close(figure)
    temp.replace(path)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def temporary_sibling(path: str | Path, suffix: str | None = None) -> Path:
    """A hidden temporary name in the same folder (same filesystem, so the final rename is atomic)."""
    path = Path(path)
    return path.with_name(f".{path.stem}.partial{suffix if suffix is not None else path.suffix}")


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
