"""Where results go: a window, an annotated video file, PNG masks; and the views drawn for them.

All drawing happens into buffers allocated once per source size. Every file follows runtime/output_policy.py:
the video is written under a unique hidden temporary name, reopened to check it holds the frames written, and
renamed when it is closed, so the path the user asked for only ever holds a finalised, playable file (`close()`
runs on a normal end, on Ctrl-C, SIGTERM and SIGHUP); a write that fails leaves any earlier file as it was.
"""

from __future__ import annotations

import os
import re
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from runtime.output_policy import (
    OutputError,
    atomic_write_bytes,
    check_target,
    claim_outputs,
    make_folder,
    place,
    protected_folder_overlap,
    temporary_name,
)
from runtime.postprocess import ROAD_COLOR_BGR
from runtime.writer import BackgroundWriter

VIEWS = ("overlay", "mask", "side-by-side")
FOURCC_BY_SUFFIX = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".mkv": "mp4v", ".avi": "MJPG"}
HUD_HEIGHT = 22
MIN_FPS, MAX_FPS, DEFAULT_FPS = 1.0, 1000.0, 30.0  # a frame rate outside this range is the source's error
PROBE_SIZE = (640, 480)  # (width, height) every codec we offer encodes
# Fonts for OpenCV's bundled Qt, which ships none (it warns on every window otherwise).
QT_FONT_DIRS = ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/truetype", "/usr/share/fonts")


class Renderer:
    """Mask + frame -> the chosen view, drawn into a reused canvas, with an optional heads-up line."""

    def __init__(self, view: str = "overlay", alpha: float = 0.5, color_bgr: tuple[int, int, int] = ROAD_COLOR_BGR
                 ) -> None:
        if view not in VIEWS:
            raise OutputError(f"--view {view}: expected one of {', '.join(VIEWS)}")
        if not 0.0 <= alpha <= 1.0:
            raise OutputError(f"--alpha {alpha}: expected a value in [0, 1]")
        self.view, self.alpha, self.color_bgr = view, alpha, color_bgr
        self._shape: tuple[int, ...] | None = None
        self.canvas = np.empty((0, 0, 3), np.uint8)

    def _allocate(self, shape: tuple[int, ...]) -> None:
        height, width = shape[:2]
        self._shape = shape
        canvas_width = 2 * width if self.view == "side-by-side" else width
        self.canvas = np.empty((height, canvas_width, 3), np.uint8)
        self._blend = np.empty((height, width, 3), np.uint8)
        self._color = np.empty((height, width, 3), np.uint8)
        self._color[:] = self.color_bgr

    def output_size(self, frame_hw: tuple[int, int]) -> tuple[int, int]:
        """(width, height) of what `render` returns for a frame of this size."""
        height, width = frame_hw
        return (2 * width if self.view == "side-by-side" else width), height

    def render(self, frame: np.ndarray, mask: np.ndarray, hud_text: str | None = None,
               scratch: bool = False) -> np.ndarray:
        """The view of `frame`; `scratch=True` when the caller no longer needs the frame, which the overlay
        view then draws on directly instead of copying it into the canvas first."""
        if frame.shape != self._shape:
            self._allocate(frame.shape)
        width = frame.shape[1]
        if self.view == "overlay" and scratch:
            self._blend_road(frame, mask, frame)
            if hud_text:
                draw_hud(frame, hud_text)
            return frame
        if self.view == "overlay":
            self._overlay(frame, mask, self.canvas)
        elif self.view == "mask":
            self.canvas.fill(0)
            cv2.copyTo(self._color, mask, self.canvas)
        else:
            np.copyto(self.canvas[:, :width], frame)
            self._overlay(frame, mask, self.canvas[:, width:])
        if hud_text:
            draw_hud(self.canvas, hud_text)
        return self.canvas

    def _overlay(self, frame: np.ndarray, mask: np.ndarray, out: np.ndarray) -> None:
        np.copyto(out, frame)
        self._blend_road(frame, mask, out)

    def _blend_road(self, frame: np.ndarray, mask: np.ndarray, out: np.ndarray) -> None:
        # Blend once inside the road's bounding box, then copy the blend only where the mask is set: the road
        # covers the lower part of a driving frame, and nothing is allocated per frame.
        x, y, width, height = cv2.boundingRect(mask)
        if width == 0 or height == 0:
            return
        box = (slice(y, y + height), slice(x, x + width))
        cv2.addWeighted(frame[box], 1.0 - self.alpha, self._color[box], self.alpha, 0.0, dst=self._blend[box])
        cv2.copyTo(self._blend[box], mask[box], out[box])


def draw_hud(canvas: np.ndarray, text: str) -> None:
    """A dark strip along the top with one line of text, drawn in place."""
    strip = canvas[:HUD_HEIGHT]
    strip >>= 2  # darken: cheaper than a blend and keeps the frame visible behind the text
    cv2.putText(canvas, text, (6, HUD_HEIGHT - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)


class VideoFileOutput:
    """An annotated video, opened on the first frame (its size is not known before), finalised by close()."""

    def __init__(self, path: str | Path, fps: float, fourcc: str | None = None, source: str = "the source") -> None:
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if fourcc is None:
            if suffix not in FOURCC_BY_SUFFIX:
                raise OutputError(f"--output {self.path}: unsupported container {suffix or '(none)'} "
                                  f"(use {', '.join(FOURCC_BY_SUFFIX)})")
            fourcc = FOURCC_BY_SUFFIX[suffix]
        if len(fourcc) != 4:
            raise OutputError(f"--fourcc {fourcc}: expected four characters, e.g. mp4v or MJPG")
        check_target(self.path, "--output")
        self.fourcc = fourcc
        self.fps = writable_fps(fps, source)
        self.temp_path: Path | None = None
        self.frames_written = 0
        self._writer: cv2.VideoWriter | None = None
        self._size: tuple[int, int] | None = None
        self._resized: np.ndarray | None = None
        make_folder(self.path.parent, "--output")

    def _open(self, size: tuple[int, int]) -> None:
        try:
            self.temp_path = temporary_name(self.path)
        except OSError as error:
            raise OutputError(f"--output {self.path}: cannot write in its folder ({error.strerror})") from error
        self._writer = cv2.VideoWriter(str(self.temp_path), cv2.VideoWriter_fourcc(*self.fourcc), self.fps, size)
        if not self._writer.isOpened():
            self._writer = None
            self.temp_path.unlink(missing_ok=True)
            if self._codec_works():
                raise OutputError(f"--output {self.path}: the {self.fourcc} codec cannot encode {size[0]}x{size[1]} "
                                  f"frames (the frame size was refused; {self.fourcc} works at "
                                  f"{PROBE_SIZE[0]}x{PROBE_SIZE[1]} here)")
            raise OutputError(f"--output {self.path}: OpenCV cannot write {self.fourcc} video here")
        self._size = size

    def _codec_works(self) -> bool:
        """Whether this codec opens at an ordinary size: tells a refused frame size from a missing codec."""
        probe = temporary_name(self.path.with_name(f"probe-{self.path.name}"))
        writer = cv2.VideoWriter(str(probe), cv2.VideoWriter_fourcc(*self.fourcc), self.fps, PROBE_SIZE)
        try:
            return writer.isOpened()
        finally:
            writer.release()
            probe.unlink(missing_ok=True)

    def write(self, image: np.ndarray) -> None:
        size = (image.shape[1], image.shape[0])
        if self._writer is None:
            self._open(size)
        elif size != self._size:  # image folders mix sizes; a video has one
            if self._resized is None:
                self._resized = np.empty((self._size[1], self._size[0], 3), np.uint8)
            cv2.resize(image, self._size, dst=self._resized, interpolation=cv2.INTER_AREA)
            image = self._resized
        self._writer.write(image)
        self.frames_written += 1

    def close(self) -> None:
        """Finalise (the container index is written here), check the file reopens with every frame, and move it
        into place; OutputError, with any earlier file left as it was, when it does not. Safe to call twice."""
        if self._writer is None:
            return
        writer, self._writer = self._writer, None
        writer.release()
        try:
            problem = video_problem(self.temp_path, self.frames_written) if self.frames_written else "no frames"
            if problem:
                raise OutputError(f"--output {self.path}: the finished video {problem} (disk full?); any earlier "
                                  "file there is left as it was")
            place(self.temp_path, self.path, "--output")
        finally:
            self.temp_path.unlink(missing_ok=True)


def video_problem(path: Path, frames_written: int) -> str | None:
    """Why a just-written video is not good (it does not reopen, or holds fewer frames than were written)."""
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened() or not capture.read()[0]:
            return "does not reopen"
        frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    finally:
        capture.release()
    # Containers without an exact count estimate it from the duration, which can be a frame off.
    if frames < frames_written - 1:
        return f"holds {frames} of the {frames_written} frames written"
    return None


def writable_fps(fps: float, source: str) -> float:
    """The source's frame rate for the video file; an unknown one (0) is written at DEFAULT_FPS, an absurd one too,
    with a warning that names the source rather than an encoder error that blames OpenCV."""
    if MIN_FPS <= fps <= MAX_FPS:
        return fps
    if fps:
        print(f"warning: {source} reports {fps:g} frames/s (outside {MIN_FPS:g}..{MAX_FPS:g}); --output is written "
              f"at {DEFAULT_FPS:g} frames/s", file=sys.stderr)
    return DEFAULT_FPS


def encode_mask_png(mask: np.ndarray, scratch: np.ndarray | None = None) -> bytes:
    """A 0/1 mask -> the mask file's bytes: an 8-bit PNG, 255 = road, 0 = not road. `scratch` (uint8, the mask's
    shape) saves an allocation per frame."""
    scaled = scratch if scratch is not None and scratch.shape == mask.shape else np.empty(mask.shape, np.uint8)
    np.multiply(mask, 255, out=scaled, casting="unsafe")
    ok, encoded = cv2.imencode(".png", scaled, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise OutputError(f"a {mask.shape} mask: PNG encoding failed")
    return encoded.tobytes()


class MaskWriter:
    """One 8-bit PNG per frame at the source resolution: 255 = road, 0 = not road."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        overlap = protected_folder_overlap(self.folder)
        if overlap:
            raise OutputError(f"--save-masks {self.folder}: overlaps the {overlap}; refusing to write into an input "
                              "folder")
        make_folder(self.folder, "--save-masks")
        self._scaled: np.ndarray | None = None
        self.written = 0

    def write(self, name: str, mask: np.ndarray) -> None:
        if self._scaled is None or self._scaled.shape != mask.shape:
            self._scaled = np.empty(mask.shape, np.uint8)
        self.write_encoded(name, encode_mask_png(mask, self._scaled))

    def write_encoded(self, name: str, png: bytes) -> None:
        """A mask already encoded by encode_mask_png (elsewhere: a fleet actor)."""
        atomic_write_bytes(self.folder / f"{name}.png", png, "--save-masks")
        self.written += 1


def claim_output_paths(output: str | Path | None, save_masks: str | Path | None, stats_json: str | Path | None,
                       model: str | Path | None, source_files: list[Path]) -> None:
    """Before a stream runs: its files must be files (not the model, a source file, a device node or a folder) and
    distinct, none may land inside the masks folder it fills, and that folder may not be the images' own."""
    claim_outputs({"--output": output, "--stats-json": stats_json}, {"--model": model}, {"--save-masks": save_masks},
                  {"source": source_files})


def gui_backend() -> str:
    """The highgui backend this OpenCV was built with ("NONE" for opencv-python-headless)."""
    match = re.search(r"GUI:\s+(\S+)", cv2.getBuildInformation())
    return match[1] if match else "NONE"


def x11_display_reachable(display: str, timeout_s: float = 1.0) -> bool:
    """Whether an X server answers at DISPLAY. Checked before creating a window because Qt aborts the whole
    process (no exception) when it cannot connect."""
    match = re.fullmatch(r"(?P<host>[^:/]*):(?P<number>\d+)(?:\.\d+)?", display)
    if not match:
        return True  # a form we don't parse (e.g. macOS launchd paths): let the GUI library decide
    host, number = match["host"], int(match["number"])
    if host in ("", "unix"):
        targets = [(socket.AF_UNIX, f"/tmp/.X11-unix/X{number}"), (socket.AF_UNIX, f"\0/tmp/.X11-unix/X{number}")]
    else:
        targets = [(socket.AF_INET, (host, 6000 + number))]
    for family, address in targets:
        try:
            with socket.socket(family, socket.SOCK_STREAM) as connection:
                connection.settimeout(timeout_s)
                connection.connect(address)
                return True
        except OSError:
            continue
    return False


def display_problem() -> str | None:
    """Why a window cannot be shown here, or None when it can."""
    if gui_backend().upper() == "NONE":
        return "this OpenCV has no GUI support (opencv-python-headless?); install opencv-python or use --headless"
    if sys.platform.startswith("linux"):
        display = os.environ.get("DISPLAY")
        if not display:  # the opencv-python wheel's Qt has only the X11 (xcb) plugin; Wayland works via XWayland
            return "no display (DISPLAY is not set); use --headless, or run under X11/XWayland"
        if not x11_display_reachable(display):
            return f"no X server answers at DISPLAY={display}; use --headless"
    return None


class WindowOutput:
    """An OpenCV window; `show()` returns False once the user pressed q/Esc or closed the window."""

    def __init__(self, title: str = "roadseg", max_width: int = 1600) -> None:
        problem = display_problem()
        if problem:
            raise OutputError(f"--display: {problem}")
        if "QT_QPA_FONTDIR" not in os.environ:
            font_dir = next((d for d in QT_FONT_DIRS if Path(d).is_dir()), None)
            if font_dir:
                os.environ["QT_QPA_FONTDIR"] = font_dir
        self.title, self.max_width = title, max_width
        self._sized = False
        try:
            cv2.namedWindow(title, cv2.WINDOW_NORMAL | cv2.WINDOW_KEEPRATIO | cv2.WINDOW_GUI_NORMAL)
        except cv2.error as error:
            raise OutputError(f"--display: cannot open a window ({str(error).strip().splitlines()[-1]})") from error

    def show(self, image: np.ndarray) -> bool:
        if not self._sized:  # 1:1 unless wider than max_width
            height, width = image.shape[:2]
            scale = min(1.0, self.max_width / width)
            cv2.resizeWindow(self.title, int(width * scale), int(height * scale))
            self._sized = True
        cv2.imshow(self.title, image)
        key = cv2.waitKey(1) & 0xFF
        if key in (27, ord("q")):
            return False
        return cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) >= 1

    def close(self) -> None:
        try:
            cv2.destroyWindow(self.title)
            cv2.waitKey(1)
        except cv2.error:
            pass


@dataclass
class FileJob:
    """One frame for the file outputs: the source's buffer (the writer's to draw on until released)."""

    image: np.ndarray
    mask: np.ndarray  # a copy: the postprocessor reuses its buffer for the next frame
    name: str
    hud_text: str | None
    release: Callable[[], None] | None


class Outputs:
    """Every sink of one run behind one call per frame.

    The window is drawn and shown on the calling thread (HighGUI needs the thread that created it); the files
    (annotated video, PNG masks) are written on a writer thread (runtime/writer.py) unless `background=False`,
    so encoding is off the loop's critical path. The overlay is drawn only for a sink that shows or writes it.
    """

    def __init__(self, renderer: Renderer, window: WindowOutput | None = None,
                 video: VideoFileOutput | None = None, masks: MaskWriter | None = None,
                 render_always: bool = False, background: bool = True) -> None:
        self.renderer, self.window, self.video, self.masks = renderer, window, video, masks
        # With no window and no video there is nothing to draw for (benchmarks may ask anyway).
        self.needs_render = render_always or window is not None or video is not None
        self._render_here = render_always or window is not None
        self._writer: BackgroundWriter[FileJob] | None = None
        if background and (video is not None or masks is not None):
            self._file_renderer = Renderer(renderer.view, renderer.alpha, renderer.color_bgr)
            self._writer = BackgroundWriter(self._write_files, _release_job)

    def write(self, image: np.ndarray, mask: np.ndarray, name: str, hud_text: str | None,
              scratch: bool = False, release: Callable[[], None] | None = None) -> bool:
        """False when the user asked to stop (window closed, q or Esc). `scratch`: see Renderer.render.
        `release`: hands `image` back to its source; given, the files are written in the background and
        `release` runs once they are, else everything is written before this returns."""
        if self._writer is None or release is None:
            keep_going = self._write_now(image, mask, name, hud_text, scratch)
            if release is not None:
                release()
            return keep_going
        keep_going = True
        if self._render_here:  # drawn into the canvas (not on the frame), which the writer still needs
            canvas = self.renderer.render(image, mask, hud_text)
            if self.window is not None:
                keep_going = self.window.show(canvas)
        self._submit(FileJob(image, mask.copy(), name, hud_text, release))
        return keep_going

    def _write_now(self, image: np.ndarray, mask: np.ndarray, name: str, hud_text: str | None,
                   scratch: bool) -> bool:
        if self.masks is not None:
            self.masks.write(name, mask)
        if not self.needs_render:
            return True
        canvas = self.renderer.render(image, mask, hud_text, scratch)
        if self.video is not None:
            self.video.write(canvas)
        if self.window is not None:
            return self.window.show(canvas)
        return True

    def _write_files(self, job: FileJob) -> None:
        if self.masks is not None:
            self.masks.write(job.name, job.mask)
        if self.video is not None:
            self.video.write(self._file_renderer.render(job.image, job.mask, job.hud_text, scratch=True))

    def _submit(self, job: FileJob) -> None:
        try:
            self._writer.submit(job)
        except Exception as error:  # noqa: BLE001 - one line for the user, whatever the writer hit
            raise as_output_error(error) from None

    def close(self) -> None:
        """Write what is queued, finalise the video, close the window. Raises OutputError once if the writer
        failed and the loop has not been told yet; the video is finalised either way."""
        try:
            if self._writer is not None:
                writer, self._writer = self._writer, None
                try:
                    writer.close()
                except Exception as error:  # noqa: BLE001
                    raise as_output_error(error) from None
        finally:
            if self.video is not None:
                self.video.close()
            if self.window is not None:
                self.window.close()


def _release_job(job: FileJob) -> None:
    if job.release is not None:
        job.release()


def as_output_error(error: Exception) -> OutputError:
    if isinstance(error, OutputError):
        return error
    return OutputError(f"writing outputs failed ({type(error).__name__}: {error})")
