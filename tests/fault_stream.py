"""`python tests/fault_stream.py ARGS`: runtime/stream.py as a user runs it, with the `faulty://` test camera
(tests/fault_sources.py) among the sources it can open."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # the repository, after tests/ (sys.path[0])

from fault_sources import register  # noqa: E402

from runtime import stream  # noqa: E402

if __name__ == "__main__":
    register()
    sys.exit(stream.main())
