"""Camera frames as they travel to a Serve deployment: encoded JPEG/PNG bytes, or raw uint8 pixels with their
shape; and masks on the way back (PNG, 255 = road, as runtime/stream.py's --save-masks writes them).

A frame from a camera on the network is untrusted input: its size, shape and element count are checked against
limits before anything is decoded or allocated.
"""

from __future__ import annotations

import cv2
import numpy as np

MAX_ENCODED_BYTES = 32 * 2**20
MAX_SIDE = 8192
ENCODINGS = ("jpeg", "png", "raw")


class FrameError(ValueError):
    """A frame that cannot be used; the message says why in one line."""


def parse_shape(text: str | list | tuple) -> tuple[int, ...]:
    """'H,W,3' / 'HxWx3' / [H, W, 3] (or H, W for gray) -> a checked shape tuple."""
    parts = text.replace("x", ",").split(",") if isinstance(text, str) else list(text)
    try:
        shape = tuple(int(p) for p in parts)
    except (TypeError, ValueError) as error:
        raise FrameError(f"shape {str(text)[:40]!r}: expected H,W,3 or H,W") from error
    if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] not in (1, 3, 4)):
        raise FrameError(f"shape {list(shape)}: expected H,W,3 (BGR), H,W,4 (BGRA) or H,W (gray)")
    if not all(1 <= side <= MAX_SIDE for side in shape[:2]):
        raise FrameError(f"shape {list(shape)}: sides must be 1..{MAX_SIDE}")
    return shape


def decode_frame(data: bytes, shape: str | list | tuple | None = None) -> np.ndarray:
    """Encoded JPEG/PNG bytes, or raw uint8 pixels when `shape` is given -> an image OpenCV can use."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise FrameError(f"frame: expected bytes, got {type(data).__name__}")
    if len(data) > MAX_ENCODED_BYTES:
        raise FrameError(f"frame: {len(data)} bytes, over the {MAX_ENCODED_BYTES} byte limit")
    if shape is not None:
        dims = parse_shape(shape)
        if int(np.prod(dims)) != len(data):
            raise FrameError(f"frame: {len(data)} bytes do not hold a uint8 image of shape {list(dims)}")
        return np.frombuffer(data, np.uint8).reshape(dims)
    buffer = np.frombuffer(data, np.uint8)
    if buffer.size == 0:
        raise FrameError("frame: empty")
    # A tiny file can claim an enormous image: OpenCV refuses more than OPENCV_IO_MAX_IMAGE_PIXELS (2^30) itself.
    image = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    if image is None:
        raise FrameError("frame: not a JPEG or PNG image OpenCV can decode")
    if max(image.shape[:2]) > MAX_SIDE:
        raise FrameError(f"frame: {image.shape[1]}x{image.shape[0]} is larger than {MAX_SIDE} pixels a side")
    return image


def encode_frame(image: np.ndarray, encoding: str) -> tuple[bytes, tuple[int, ...] | None]:
    """(bytes, shape for raw frames else None), as a camera client sends them."""
    if encoding == "raw":
        return np.ascontiguousarray(image).tobytes(), tuple(image.shape)
    ok, encoded = cv2.imencode(".jpg" if encoding == "jpeg" else ".png", image)
    if not ok:
        raise FrameError(f"cannot encode a {image.shape} frame as {encoding}")
    return encoded.tobytes(), None


def decode_mask(data: bytes) -> np.ndarray:
    """PNG mask bytes -> a 0/1 uint8 mask."""
    mask = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if mask is None or mask.ndim != 2:
        raise FrameError("mask: not a single-channel PNG")
    return (mask > 127).astype(np.uint8)
