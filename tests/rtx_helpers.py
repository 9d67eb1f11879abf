"""The real TensorRT-RTX module for tests: skipped where it is not installed, a failure where CI said it must be."""

from __future__ import annotations

import importlib
import os

import pytest

REQUIRE_ENV = "ROADSEG_REQUIRE_TENSORRT_RTX"


def real_tensorrt_rtx():
    """`tensorrt_rtx`, or a skip; with ROADSEG_REQUIRE_TENSORRT_RTX=1 (set by .ci/run) a missing module fails."""
    try:
        return importlib.import_module("tensorrt_rtx")
    except ImportError as error:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{REQUIRE_ENV}=1 but tensorrt_rtx does not import ({error}); run `make setup-rtx`")
        pytest.skip("TensorRT-RTX is not installed (make setup-rtx)")
