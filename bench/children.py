"""Every row, probe and preparation of `make bench` runs in a fresh child process, so its peak memory is its own."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

from bench.worker import BenchError

REPO = Path(__file__).resolve().parents[1]


def child_env(threads: int) -> dict[str, str]:
    """Every child sees the same thread budget, and the repository on its path."""
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    return env


def child_command(module: ModuleType, args: list[str]) -> list[str]:
    """`python -m MODULE ARGS`, the module named by its imported object: a renamed worker fails at import here,
    not as a child that cannot start. Each row still runs in its own process (its own peak memory)."""
    return [sys.executable, "-m", module.__name__, *args]


def run_child(module: ModuleType, args: list[str], env: dict[str, str], timeout: float = 1800) -> dict:
    """Run `python -m MODULE ARGS --json TEMP` and return the JSON it wrote; BenchError with its stderr if not."""
    with tempfile.TemporaryDirectory(prefix="roadseg-bench-") as scratch:
        out = Path(scratch) / "row.json"
        try:
            result = subprocess.run([*child_command(module, args), "--json", str(out)], capture_output=True,
                                    text=True, timeout=timeout, env=env, cwd=REPO)
        except subprocess.TimeoutExpired as error:
            raise BenchError(f"{module.__name__}: timed out after {timeout:.0f} s") from error
        if result.returncode != 0 or not out.is_file():
            lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
            raise BenchError(lines[-1] if lines else f"exit code {result.returncode}")
        return json.loads(out.read_text())


def torch_importable() -> bool:
    return importlib.util.find_spec("torch") is not None
