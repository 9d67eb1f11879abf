"""`python -m engine`: ONNX (+ calibration) -> TensorRT / TensorRT-RTX engine and its sidecar (engine/build.py)."""

import sys

from engine.build import main

sys.exit(main())
