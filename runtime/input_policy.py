"""What every reader of an artifact does before trusting it (sidecars, manifests, accuracy tables, caches).

- A path an artifact names is resolved inside the artifact's own folder, or refused (`resolve_inside`).
- A file is a regular file and its size is checked before a byte is read (`read_limited`): a FIFO, a device or a
  64 GiB file named where a small one is expected is refused at once, not read.
- JSON is parsed with a size and a nesting-depth limit (`read_json`, `parse_json`); a tree that is already
  parsed is held to the same depth (`check_depth`).
Each refusal is an ArtifactError (a ValueError) whose message names the file.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import numpy as np

MAX_JSON_BYTES = 1 << 20
MAX_JSON_DEPTH = 32
_STRING = re.compile(rb'"(?:\\.|[^"\\])*"')


class ArtifactError(ValueError):
    """An artifact that breaks its contract; the message names the file and what is wrong."""


def resolve_inside(folder: str | Path, name: object, what: str) -> Path:
    """`folder / name` when `name` is a plain relative path that stays inside `folder` (symlinks resolved)."""
    if not isinstance(name, str) or not name or "\0" in name:
        raise ArtifactError(f"{what}: names the file {str(name)[:60]!r}, expected a file name")
    candidate = Path(folder) / name
    base = os.path.realpath(folder)
    resolved = os.path.realpath(candidate)
    if Path(name).is_absolute() or not resolved.startswith(base.rstrip(os.sep) + os.sep):
        raise ArtifactError(f"{what}: names {name[:120]!r}, which is outside its folder {folder}; refused")
    return candidate


def regular_file_size(path: str | Path, what: str = "") -> int:
    """The size of a regular file; ArtifactError for a missing file, a folder, a FIFO, a device."""
    label = what or str(path)
    try:
        info = os.stat(path)
    except FileNotFoundError as error:
        raise ArtifactError(f"{label}: not found") from error
    except OSError as error:
        raise ArtifactError(f"{label}: cannot be read ({error.strerror})") from error
    if not stat.S_ISREG(info.st_mode):
        raise ArtifactError(f"{label}: not a regular file (a folder, FIFO or device); refused")
    return info.st_size


def read_limited(path: str | Path, max_bytes: int, what: str = "") -> bytes:
    """The bytes of a regular file of at most `max_bytes`, checked before reading and while reading."""
    label = what or str(path)
    size = regular_file_size(path, label)
    if size > max_bytes:
        raise ArtifactError(f"{label}: {size} bytes, over the {max_bytes}-byte limit for this file; refused")
    with open(path, "rb") as stream:
        data = stream.read(max_bytes + 1)
    if len(data) > max_bytes:  # it grew between the check and the read
        raise ArtifactError(f"{label}: over the {max_bytes}-byte limit for this file; refused")
    return data


def json_depth(data: bytes) -> int:
    """The deepest nesting of arrays/objects in a JSON text, counted without recursion (strings skipped)."""
    skeleton = np.frombuffer(_STRING.sub(b"", data), np.uint8)
    steps = np.isin(skeleton, (ord("["), ord("{"))).astype(np.int64) - np.isin(skeleton, (ord("]"), ord("}")))
    return int(np.cumsum(steps).max(initial=0))


def parse_json(data: bytes | str, what: str, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH
               ) -> object:
    """JSON from a text of at most `max_bytes` nested at most `max_depth` deep; ArtifactError naming `what`."""
    raw = data.encode() if isinstance(data, str) else data
    if len(raw) > max_bytes:
        raise ArtifactError(f"{what}: {len(raw)} bytes of JSON, over the {max_bytes}-byte limit; refused")
    depth = json_depth(raw)
    if depth > max_depth:
        raise ArtifactError(f"{what}: JSON nested {depth} deep, over the limit of {max_depth}; refused")
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        raise ArtifactError(f"{what}: not valid JSON ({type(error).__name__})") from error


def read_json(path: str | Path, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH,
              what: str = "") -> object:
    label = what or str(path)
    return parse_json(read_limited(path, max_bytes, label), label, max_bytes, max_depth)


def check_depth(tree: object, what: str, max_depth: int = MAX_JSON_DEPTH) -> None:
    """ArtifactError when a parsed tree of dicts/lists nests deeper than `max_depth` (walked without recursion)."""
    pending = [(tree, 0)]
    while pending:
        node, depth = pending.pop()
        if isinstance(node, (dict, list, tuple)):
            if depth >= max_depth:
                raise ArtifactError(f"{what}: nested more than {max_depth} deep; refused")
            children = node.values() if isinstance(node, dict) else node
            pending.extend((child, depth + 1) for child in children)
