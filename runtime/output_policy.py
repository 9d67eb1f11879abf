"""What every writer does, so that nothing a user has is lost.

- An output never resolves to an input of the run (the video being read, the model, an image of the folder) nor
  to another output of the same run: an entry point calls `claim_outputs` once before its work, which registers
  the run's inputs and says in one line what overlaps; from then on every atomic write refuses a target that is
  an input of the run.
- A file is written where a file is meant: an existing device node, FIFO, socket or folder at the path is refused
  (replacing /dev/null by a regular file as root would destroy the device node).
- Writes go to a unique temporary name in the target folder (mkstemp: two runs never share one), are flushed and
  fsync'd, checked (`verify`: a video must reopen with the frames written), renamed into place, and the folder is
  fsync'd. A write that fails or does not verify leaves the old file as it was.
- Failures are one OutputError (an OSError, so every entry point's one-line handler reports it) naming the path
  and the reason: disk full, read-only, permission.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import BinaryIO

_PROTECTED: dict[str, str] = {}  # realpath or "dev:ino" -> the flag that named it (inputs of the current run)
_PROTECTED_FOLDERS: dict[str, str] = {}  # realpath of a folder whose files are inputs (--images) -> its flag


class OutputError(OSError):
    """An output that cannot be created, written or placed; the message names the path and the reason."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "output error"


def _identities(path: str | Path) -> list[str]:
    """Keys under which a path is the same file: its resolved path, and its inode where it exists."""
    keys = [os.path.realpath(path)]
    with contextlib.suppress(OSError):
        info = os.stat(path)
        keys.append(f"{info.st_dev}:{info.st_ino}")
    return keys


def same_file(first: str | Path, second: str | Path) -> bool:
    return bool(set(_identities(first)) & set(_identities(second)))


def inside(path: str | Path, folder: str | Path) -> bool:
    """Whether `path` resolves to `folder` itself or somewhere below it."""
    resolved, base = os.path.realpath(path), os.path.realpath(folder)
    return resolved == base or resolved.startswith(base.rstrip(os.sep) + os.sep)


def protect(flag: str, *paths: str | Path | None) -> None:
    """Register inputs of the current run: every atomic write refuses them as targets from now on."""
    for path in paths:
        if path is not None:
            for key in _identities(path):
                _PROTECTED.setdefault(key, flag)


def protect_folder(flag: str, folder: str | Path) -> None:
    """Register a folder whose files are inputs: no output folder (one the run fills) may be that folder."""
    _PROTECTED_FOLDERS.setdefault(os.path.realpath(folder), flag)


def protected_folder_overlap(folder: str | Path) -> str | None:
    """'FLAG input folder PATH' when `folder` is a registered input folder."""
    flag = _PROTECTED_FOLDERS.get(os.path.realpath(folder))
    return f"{flag} input folder {os.path.realpath(folder)}" if flag else None


def new_run() -> None:
    """Forget the inputs of an earlier run in this process."""
    _PROTECTED.clear()
    _PROTECTED_FOLDERS.clear()


def one_run(main: Callable[..., int]) -> Callable[..., int]:
    """An entry point's `main`: the inputs it claims are protected while it runs and forgotten when it returns, so
    a later call in the same process (a test, a stage run after another) starts clean."""
    @functools.wraps(main)
    def run(*args, **kwargs) -> int:
        new_run()
        try:
            return main(*args, **kwargs)
        finally:
            new_run()

    return run


def protected_by(path: str | Path) -> str | None:
    return next((_PROTECTED[key] for key in _identities(path) if key in _PROTECTED), None)


def refuse_overlaps(outputs: Mapping[str, str | Path | None], inputs: Mapping[str, str | Path | None],
                    output_folders: Mapping[str, str | Path | None] | None = None) -> None:
    """OutputError naming the first output that is an input or another output of the same run.

    `outputs` map a flag to a file, `output_folders` a flag to a folder the run fills; `inputs` map a flag to a
    file or folder the run reads (a folder input is overlapped by anything written inside it)."""
    named_inputs = [(flag, path) for flag, path in inputs.items() if path is not None]
    files = [(flag, path) for flag, path in outputs.items() if path is not None]
    folders = [(flag, path) for flag, path in (output_folders or {}).items() if path is not None]
    for index, (flag, path) in enumerate(files):
        for input_flag, source in named_inputs:
            if same_file(path, source) or (os.path.isdir(source) and inside(path, source)):
                raise OutputError(f"{flag} {path}: is the {input_flag} input {source}; refusing to overwrite it")
        for other_flag, other in files[:index]:
            if same_file(path, other):
                raise OutputError(f"{flag} {path}: is also the {other_flag} output; give each output its own path")
        for folder_flag, folder in folders:
            if inside(path, folder):
                raise OutputError(f"{flag} {path}: is inside the {folder_flag} folder {folder}, which this run fills")
    for flag, folder in folders:
        for input_flag, source in named_inputs:
            if inside(folder, source) or inside(source, folder):
                raise OutputError(f"{flag} {folder}: overlaps the {input_flag} input {source}; refusing to write "
                                  "into an input folder")


def claim_outputs(outputs: Mapping[str, str | Path | None], inputs: Mapping[str, str | Path | None] | None = None,
                  output_folders: Mapping[str, str | Path | None] | None = None,
                  input_files: Mapping[str, Iterable[str | Path]] | None = None) -> None:
    """What an entry point calls once before its work: it starts a new run whose inputs are `inputs` (files or
    folders) and `input_files` (e.g. every image of --images, whose folders become input folders), then requires
    every output to be distinct from them and from the others, a file where a file is meant, and its folder
    writable, so a refusal comes in one line before, not after, the run."""
    new_run()
    for flag, path in (inputs or {}).items():
        if path is not None:
            (protect_folder if os.path.isdir(path) else protect)(flag, path)
    for flag, paths in (input_files or {}).items():
        paths = list(paths)
        protect(flag, *paths)
        for folder in {os.path.dirname(os.path.abspath(p)) for p in paths}:
            protect_folder(flag, folder)
    refuse_overlaps(outputs, inputs or {}, output_folders)
    for flag, path in outputs.items():
        if path is not None:
            check_target(path, flag)
            check_writable(path, flag)
    for flag, folder in (output_folders or {}).items():
        if folder is not None:
            overlap = protected_folder_overlap(folder)
            if overlap:
                raise OutputError(f"{flag} {folder}: overlaps the {overlap}; refusing to write into an input folder")


def check_target(path: str | Path, flag: str = "") -> Path:
    """The path, if a regular file may be written there: refused when it is an input of this process or when
    something other than a regular file is in the way."""
    path = Path(path)
    label = f"{flag} {path}" if flag else str(path)
    owner = protected_by(path)
    if owner is not None:
        raise OutputError(f"{label}: is the {owner} input of this run; refusing to overwrite it")
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return path
    except OSError as error:
        raise OutputError(f"{label}: cannot write it ({error.strerror})") from error
    if stat.S_ISDIR(mode):
        raise OutputError(f"{label}: is a folder, expected a file path")
    if not stat.S_ISREG(mode):
        kind = {stat.S_ISCHR(mode): "a character device", stat.S_ISBLK(mode): "a block device",
                stat.S_ISFIFO(mode): "a FIFO", stat.S_ISSOCK(mode): "a socket"}.get(True, "not a regular file")
        raise OutputError(f"{label}: is {kind}, not a regular file; refusing to replace it")
    return path


def check_writable(path: str | Path, flag: str = "") -> None:
    """Before a run: a file can be created in `path`'s folder (a read-only mount or a full disk is said at the
    start, not after the work)."""
    label = f"{flag} {path}" if flag else str(path)
    folder = make_folder(Path(path).parent, flag)
    try:
        temp = temporary_name(folder / Path(path).name)
    except OSError as error:
        raise write_failure(label, error) from error
    temp.unlink(missing_ok=True)


def write_failure(label: str, error: OSError) -> OutputError:
    reason = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded", errno.EROFS: "read-only file system",
              errno.EACCES: "permission denied", errno.EISDIR: "is a folder"}.get(error.errno, error.strerror)
    return OutputError(f"{label}: cannot write it ({reason or type(error).__name__}); any earlier file there is "
                       "left as it was")


def fsync_path(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_folder(folder: str | Path) -> None:
    with contextlib.suppress(OSError):  # some file systems cannot fsync a directory; the rename is still atomic
        fsync_path(folder)


def publish(temp_name: str | Path, path: str | Path) -> None:
    """Give a mkstemp file (mode 0600) the usual permissions, rename it into place and make the rename durable."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temp_name, 0o666 & ~umask)
    os.replace(temp_name, path)
    fsync_folder(Path(path).parent)


def make_folder(folder: str | Path, flag: str = "") -> Path:
    folder = Path(folder)
    label = f"{flag} {folder}" if flag else str(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{label}: exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"{label}: cannot create it ({error.strerror})") from error
    return folder


def temporary_name(path: str | Path, suffix: str | None = None) -> Path:
    """A new, unique, hidden file beside `path` (same file system, so the rename is atomic), keeping its suffix
    (writers such as OpenCV and matplotlib pick the format from it)."""
    path = Path(path)
    ending = path.suffix if suffix is None else suffix
    handle, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".partial{ending}", dir=path.parent)
    os.close(handle)
    return Path(name)


def place(temp: str | Path, path: str | Path, flag: str = "") -> None:
    """Move a finished, checked temporary file (from `temporary_name`) onto `path`, durably."""
    path = check_target(path, flag)
    try:
        fsync_path(temp)
        publish(temp, path)
    except OSError as error:
        raise write_failure(f"{flag} {path}" if flag else str(path), error) from error


@contextlib.contextmanager
def atomic_path(path: str | Path, flag: str = "", verify: Callable[[Path], str | None] | None = None,
                suffix: str | None = None) -> Iterator[Path]:
    """Yield a unique temporary path beside `path` for a writer that wants a file name; on a clean exit it is
    fsync'd, verified (`verify` returns why the file is not good, or None) and renamed onto `path`. On any
    failure the temporary file is removed and whatever was at `path` stays."""
    path = check_target(path, flag)
    label = f"{flag} {path}" if flag else str(path)
    make_folder(path.parent, flag)
    try:
        temp = temporary_name(path, suffix)
    except OSError as error:
        raise write_failure(label, error) from error
    try:
        yield temp
        fsync_path(temp)
        problem = verify(temp) if verify is not None else None
        if problem:
            raise OutputError(f"{label}: {problem}; any earlier file there is left as it was")
        check_target(path, flag)  # it may have changed while the run wrote
        publish(temp, path)
    except OSError as error:
        temp.unlink(missing_ok=True)
        if isinstance(error, OutputError):
            raise
        raise write_failure(label, error) from error
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object], flag: str = "",
                 verify: Callable[[Path], str | None] | None = None) -> None:
    """`write(stream)` into a temporary file beside `path`, then fsync, verify and rename (see atomic_path)."""
    with atomic_path(path, flag, verify) as temp, open(temp, "wb") as stream:
        write(stream)
        stream.flush()


def not_empty(temp: Path) -> str | None:
    return "nothing was written (0 bytes)" if temp.stat().st_size == 0 else None


def atomic_write_bytes(path: str | Path, data: bytes, flag: str = "") -> None:
    atomic_write(path, lambda stream: stream.write(data), flag)


def atomic_write_text(path: str | Path, text: str, flag: str = "") -> None:
    atomic_write_bytes(path, text.encode(), flag)


def save_figure(figure, path: str | Path, flag: str = "") -> None:
    """Save a matplotlib figure as PNG atomically and close it."""
    try:
        with atomic_path(path, flag, verify=not_empty, suffix=".png") as temp:
            figure.savefig(temp, format="png")
    finally:
        import matplotlib.pyplot as plt  # only callers that already made a figure get here

        plt.close(figure)
