"""Frames in, road masks out: the slim streaming runtime, for one camera or many.

    python runtime/stream.py --camera 0
    python runtime/stream.py drive.mp4 --headless --output annotated.mp4 --stats-json stats.json
    python runtime/stream.py 'frames/*.png' --save-masks masks/
    python runtime/stream.py rtsp://camera.local/stream --model build/model.int8.engine
    python runtime/stream.py csi://0                     # Jetson CSI camera (nvarguscamerasrc)
    python runtime/stream.py front.mp4 rear.mp4 --output out/   # two cameras, one batch: out/front.mp4, out/rear.mp4

SOURCE is a video file, an image folder or a quoted glob, a URL (rtsp://, http(s)://, ...), `camera:N` (--camera N
is its short form) or `csi://N`; give several for a multi-camera run. One source: the loop (runtime/pipeline.py) is
source -> preprocess -> backend.infer -> postprocess -> render/write, its stages overlapping on three threads
where that pays (--pipeline). Several: each camera reads on its own thread with the same live policy, and one
inference call takes the freshest frame of every camera (runtime/multicam.py, docs/multi-camera.md).
Preprocessing and class names come from the model file's metadata. Live sources drop only frames older than
--max-age; files are processed frame by frame unless --realtime. Ctrl-C, SIGTERM or SIGHUP stops cleanly: every
output video is finalised. No output may be an input of the run or another output; a write that fails
leaves any earlier file as it was. Exit codes: 0 done (also when stopped by a signal), 2 bad input, 3 a source failed
part-way. OpenCV's own log lines are silenced; set OPENCV_LOG_LEVEL=INFO to see them when debugging a camera.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python runtime/stream.py`: import the package from the repo root
    _ROOT = str(Path(__file__).resolve().parent.parent)
    if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
        sys.path[0] = _ROOT  # and don't let runtime/'s modules shadow top-level names
    else:
        sys.path.insert(0, _ROOT)

from runtime import multicam  # noqa: E402
from runtime.backend_base import Backend  # noqa: E402
from runtime.backend_choice import DEVICES, RUNTIMES, open_requested  # noqa: E402
from runtime.contract import ModelFileError
from runtime.ioutil import fail  # noqa: E402
from runtime.model_select import default_model  # noqa: E402
from runtime.multicam import (  # noqa: E402
    CameraOutputs,
    TiledWindow,
    close_cameras,
    open_camera_outputs,
    open_cameras,
    push_timeout_for,
    run_cameras,
)
from runtime.output_policy import claim_outputs, one_run  # noqa: E402
from runtime.outputs import (  # noqa: E402
    FOURCC_BY_SUFFIX,
    VIEWS,
    MaskWriter,
    OutputError,
    Outputs,
    Renderer,
    VideoFileOutput,
    WindowOutput,
    claim_output_paths,
    display_problem,
)
from runtime.pipeline import StopRequest, pipelining_pays, run_pipeline  # noqa: E402
from runtime.sources import CAMERA_PREFIX, FrameSource, SourceError, SourceOptions, open_path  # noqa: E402
from runtime.stats import StreamStats, format_summary, write_stats_json  # noqa: E402

STATUS_EVERY_S = 5.0
EXIT_SOURCE_FAILED = 3




def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python runtime/stream.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    src = parser.add_argument_group("source")
    src.add_argument("sources", nargs="*", metavar="SOURCE",
                     help="video file, image folder or quoted glob, URL, camera:N or csi://N; several: one batch")
    src.add_argument("--camera", type=int, action="append", default=[], metavar="N",
                     help="camera N (short for camera:N); repeat for several")
    src.add_argument("--max-frames", type=int, default=0, metavar="N", help="stop each source after N frames")
    src.add_argument("--loop", action="store_true", help="restart files and image folders at the end")
    src.add_argument("--realtime", action="store_true", help="play files at their frame rate, like a camera")
    model = parser.add_argument_group("model and backend")
    model.add_argument("--model", metavar="PATH", help=".onnx or TensorRT .engine/.plan (default: the best in "
                       "build/ for this machine, else models/*.onnx)")
    model.add_argument("--backend", default="auto", choices=RUNTIMES,
                       help="the runtime. auto: engines on TensorRT; ONNX on ONNX Runtime, or on a CPU with OpenVINO "
                       "installed the faster of the two (a short cached probe)")
    model.add_argument("--device", default="auto", choices=DEVICES,
                       help="auto: the GPU where the runtime has one, else the CPU")
    model.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                       help="OpenVINO CPU math (bf16 where the gate passed it); other runtimes run the file's own "
                       "precision and refuse another")
    model.add_argument("--threads", type=int, default=0, metavar="N", help="CPU inference threads (0: all)")
    out = parser.add_argument_group("output")
    out.add_argument("--output", metavar="PATH", help="annotated video (.mp4 .avi .mkv .mov); several sources: a "
                     "folder, one PATH/<camera>.mp4 each")
    out.add_argument("--fourcc", help="codec for --output (default: mp4v; MJPG for .avi)")
    out.add_argument("--save-masks", metavar="DIR", help="a PNG mask per frame (255 = road); several: DIR/<camera>/")
    out.add_argument("--view", default="overlay", choices=VIEWS)
    out.add_argument("--alpha", type=float, default=0.5, help="overlay opacity in [0, 1]")
    out.add_argument("--no-hud", action="store_true", help="no heads-up line on the image")
    out.add_argument("--stats-json", metavar="PATH", help="write the run's statistics here")
    out.add_argument("--quiet", action="store_true", help="no periodic status lines")
    live = parser.add_argument_group("live policy")
    live.add_argument("--max-age", type=float, metavar="MS",
                      help="drop a live frame only when older than MS while a newer one waits (default: one frame "
                      "interval of the source)")
    live.add_argument("--stall-timeout", type=float, default=10.0, metavar="S",
                      help="give up on a live source that delivers no frame for S seconds")
    live.add_argument("--reconnect-attempts", type=int, default=5, metavar="N",
                      help="reopen a disconnected network source N times, backoff from 0.5 s")
    live.add_argument("--push-timeout", type=float, metavar="MS",
                      help="several sources: send a partial batch when a camera is MS late (default: the slowest "
                      "live camera's frame interval; files only: wait for all)")
    live.add_argument("--pipeline", default="auto", choices=("auto", "on", "off"),
                      help="one source: overlap read, inference and drawing on threads (auto: off for ONNX Runtime "
                      "on <= 2 CPU cores)")
    display = parser.add_argument_group("display")
    show = display.add_mutually_exclusive_group()
    show.add_argument("--display", action="store_true", help="open a window (fail if there is none); several "
                      "sources: tiled")
    show.add_argument("--headless", action="store_true", help="never open a window")
    return parser.parse_args(argv)


def source_texts(args: argparse.Namespace) -> list[str]:
    """Every source in the one positional syntax, --camera N as camera:N, in the order given."""
    texts = [f"{CAMERA_PREFIX}{index}" for index in args.camera] + list(args.sources)
    if not texts:
        raise SourceError("no source: give one or more SOURCE (file, folder, glob, URL, camera:N, csi://N) or "
                          "--camera N")
    return texts


def source_options(args: argparse.Namespace) -> SourceOptions:
    if args.max_frames < 0:
        raise SourceError(f"--max-frames {args.max_frames}: expected 0 or more")
    if args.max_age is not None and not args.max_age > 0:
        raise SourceError(f"--max-age {args.max_age:g}: expected milliseconds above 0")
    if args.push_timeout is not None and not args.push_timeout > 0:
        raise SourceError(f"--push-timeout {args.push_timeout:g}: expected milliseconds above 0")
    return SourceOptions(loop=args.loop, realtime=args.realtime, max_frames=args.max_frames,
                         stall_timeout=args.stall_timeout, reconnect_attempts=args.reconnect_attempts,
                         max_age=args.max_age / 1000.0 if args.max_age is not None else None)


def open_source(args: argparse.Namespace) -> FrameSource:
    texts = source_texts(args)
    if len(texts) != 1:
        raise SourceError(f"expected one source here, got {len(texts)}")
    return open_path(texts[0], source_options(args))


def open_outputs(args: argparse.Namespace, source: FrameSource, model_path: Path | None = None) -> Outputs:
    renderer = Renderer(args.view, args.alpha)
    window = open_window(f"roadseg: {source.description}", args)
    claim_output_paths(args.output, args.save_masks, args.stats_json, model_path, source.input_paths)
    video = VideoFileOutput(args.output, source.fps, args.fourcc, source.description) if args.output else None
    masks = MaskWriter(args.save_masks) if args.save_masks else None
    return Outputs(renderer, window, video, masks)


def source_problem(source: FrameSource, processed: int) -> str | None:
    """Why the run should end non-zero although it finished: a source that failed or skipped input."""
    if source.error:
        return source.error
    unreadable = source.reader.unreadable
    if unreadable:
        return f"{len(unreadable)} of {len(source.input_paths)} images could not be read (first: {unreadable[0]})"
    if processed == 0:
        return f"{source.description}: no frames could be read"
    return None


def live_policy(source: FrameSource) -> dict:
    """A live source's freshness budget and its drops by cause, for the summary."""
    if not source.live:
        return {}
    return {"max_age_ms": round(source.max_age * 1000.0, 3), "dropped_by_cause": dict(source.drops)}


def quiet_opencv() -> None:
    """OpenCV logs its own WARN/ERROR lines for every backend it tries (V4L2, FFmpeg, Orbbec...) before a
    camera open fails; the runtime reports failures itself in one line. OPENCV_LOG_LEVEL=INFO shows them."""
    if "OPENCV_LOG_LEVEL" not in os.environ:
        import cv2

        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # FFmpeg's own lines ("moov atom not found")


@one_run
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        texts = source_texts(args)
        source_options(args)  # bad options fail before a model is loaded
    except SourceError as error:
        return fail(error)
    quiet_opencv()
    stop = StopRequest()
    stop.install()
    opened = open_model(args, stop)
    if isinstance(opened, int):
        return opened
    model_path, backend = opened
    if len(texts) > 1:
        print(f"model {model_path}: {backend.name} {backend.precision} on {backend.device}, input "
              f"{backend.spec.input_height}x{backend.spec.input_width}, {len(texts)} sources in one batch", flush=True)
        return stream_many(args, texts, backend, model_path, stop)
    return stream_one(args, backend, model_path, stop)


def open_model(args: argparse.Namespace, stop: StopRequest) -> tuple[Path, Backend] | int:
    """The model and the backend that runs it, or the exit code when it cannot be opened or a stop came first
    (loading a model can take seconds: Ctrl-C interrupts it)."""
    stop.waiting = True
    model_path = Path(args.model) if args.model else None
    try:
        model_path = model_path or default_model()
        backend, choice = open_requested(model_path, args.backend, args.device, args.precision, args.threads or None)
    except KeyboardInterrupt:
        stop.restore()
        print(f"stopped by {stop.signal_name or 'SIGINT'}")
        return 0
    except ImportError as error:  # e.g. an engine on a machine without TensorRT
        stop.restore()
        return fail(f"{model_path}: cannot load its backend here ({error})")
    except (ModelFileError, OSError, RuntimeError) as error:
        stop.restore()
        return fail(error)
    stop.waiting = False
    if choice is not None:
        print(choice.line(), flush=True)
    return model_path, backend


def stream_one(args: argparse.Namespace, backend: Backend, model_path: Path, stop: StopRequest) -> int:
    """One source through runtime/pipeline.py; its summary, and the exit code."""
    pipelined = pipelining_pays(backend) if args.pipeline == "auto" else args.pipeline == "on"
    print(f"model {model_path}: {backend.name} {backend.precision} on {backend.device}, "
          f"input {backend.spec.input_height}x{backend.spec.input_width}, "
          f"{'pipelined' if pipelined else 'serial'} loop", flush=True)
    source = outputs = stats = None
    failure: Exception | None = None
    started = time.perf_counter()
    try:
        source = open_source(args)
        outputs = open_outputs(args, source, model_path)
        stats = StreamStats(live=source.live)
        run_pipeline(source, backend, outputs, stats, stop, hud=not args.no_hud,
                     status_every=0.0 if args.quiet else STATUS_EVERY_S, pipelined=pipelined)
    except KeyboardInterrupt:
        stop.signal_name = stop.signal_name or "SIGINT"
    except (SourceError, OutputError, ModelFileError, ValueError, OSError) as error:
        failure = error
    finally:
        stop.ignore()
        try:
            if outputs is not None:
                outputs.close()  # writes the queued frames and finalises the video, also after a failure
        except (OutputError, OSError) as error:
            failure = failure or error
        finally:
            if source is not None:
                source.close()
            stop.restore()
    if failure is not None and (stats is None or not stats.frames_processed):
        return fail(failure)
    if stats is None:  # stopped while the source was still opening
        print(f"stopped by {stop.signal_name}")
        return 0
    summary = stats.summary(source.frames_read, source.frames_dropped, backend.name, backend.precision,
                            device=backend.device, model=str(model_path), source=source.description,
                            input_size=list(backend.spec.size_hw), wall_s=round(time.perf_counter() - started, 3),
                            reconnects=source.reconnects, stopped_by=stop.signal_name,
                            **live_policy(source))
    video = outputs.video if failure is None else None
    written = [(args.output, video.frames_written)] if video is not None and video.frames_written else []
    stats_failure = report(format_summary(summary), summary, args, stop, written)  # also after a failed output
    failure = failure or stats_failure
    if failure is not None:
        return fail(failure)
    problem = None if stop.signal_name else source_problem(source, stats.frames_processed)
    return fail(problem, EXIT_SOURCE_FAILED) if problem else 0


def report(text: str, summary: dict, args: argparse.Namespace, stop: StopRequest,
           written: list[tuple[str | Path, int]]) -> OSError | None:
    """Print the summary, the stop and the videos written; write --stats-json (the run's statistics land even when
    another output failed). The error of that write, if any."""
    print(text)
    if stop.signal_name:
        print(f"stopped by {stop.signal_name}")
    for path, frames in written:
        print(f"wrote {path} ({frames} frames)")
    if args.stats_json:
        try:
            write_stats_json(args.stats_json, summary)
        except OSError as error:
            return error
    return None


def open_window(title: str, args: argparse.Namespace) -> WindowOutput | None:
    if args.display or (not args.headless and display_problem() is None):
        return WindowOutput(title)
    return None


def claim_camera_outputs(args: argparse.Namespace, feeds: list, model_path: Path) -> None:
    """The multi-camera run's files under the same rule as one camera's: no output is an input or another output."""
    videos = {f"--output {feed.name}.mp4": Path(args.output) / f"{feed.name}.mp4" for feed in feeds} \
        if args.output else {}
    sources = [path for feed in feeds for path in feed.source.input_paths]
    claim_outputs({**videos, "--stats-json": args.stats_json}, {"--model": model_path},
                  {"--save-masks": args.save_masks}, {"source": sources})


def stream_many(args: argparse.Namespace, texts: list[str], backend, model_path: Path, stop: StopRequest) -> int:
    """Several sources through one batch (runtime/multicam.py); the same exits and signals as one source."""
    feeds, cameras, failures, window, run = [], [], [], None, None
    failure: Exception | None = None
    try:
        if args.output and (Path(args.output).suffix.lower() in FOURCC_BY_SUFFIX or Path(args.output).is_file()):
            raise OutputError(f"--output {args.output}: several sources write a folder (one <camera>.mp4 each); "
                              "give a folder")
        feeds, failures = open_cameras(texts, source_options(args))
        claim_camera_outputs(args, feeds, model_path)
        for feed in feeds:
            outputs = open_camera_outputs(feed, args.output, args.save_masks, args.view, args.alpha, args.fourcc)
            cameras.append(CameraOutputs(feed, outputs, StreamStats(live=feed.source.live, track_age=True)))
        shown = open_window(f"roadseg: {len(feeds)} cameras", args)
        window = TiledWindow([f.name for f in feeds], args.view, args.alpha, shown) if shown else None
        run = run_cameras(cameras, backend, stop, push_timeout_for([f.source for f in feeds], args.push_timeout),
                          window, hud=not args.no_hud, status_every=0.0 if args.quiet else STATUS_EVERY_S)
    except KeyboardInterrupt:
        stop.signal_name = stop.signal_name or "SIGINT"
    except (SourceError, OutputError, ModelFileError, ValueError, OSError) as error:
        failure = error
    finally:
        stop.ignore()
        try:
            failure = close_cameras(cameras, feeds, window) or failure
        finally:
            stop.restore()
    if failure is not None:
        return fail(failure)
    if run is None:
        print(f"stopped by {stop.signal_name}")
        return 0
    summary = multicam.summary(cameras, run, backend, device=backend.device, model=str(model_path),
                               input_size=list(backend.spec.size_hw), stopped_by=stop.signal_name,
                               sources_not_opened=failures)
    written = [(c.outputs.video.path, c.outputs.video.frames_written) for c in cameras
               if c.outputs.video is not None and c.outputs.video.frames_written]
    failure = report(multicam.format_summary(summary), summary, args, stop, written)
    if failure is not None:
        return fail(failure)
    problems = failures + [f"{c.feed.name}: {c.feed.retired}" for c in cameras if c.feed.retired]
    if not stop.signal_name:
        problems += [f"{c.feed.name}: {p}" for c in cameras if (p := source_problem(c.feed.source,
                                                                                     c.stats.frames_processed))
                     and not c.feed.retired]
    if problems:
        return fail(f"{len(problems)} of {len(texts)} sources failed (first: {problems[0]})", EXIT_SOURCE_FAILED)
    return 0


if __name__ == "__main__":
    sys.exit(main())
