"""Frames in, road masks out: the slim streaming runtime.

    python runtime/stream.py --camera 0
    python runtime/stream.py --video drive.mp4 --headless --output annotated.mp4 --stats-json stats.json
    python runtime/stream.py --images 'frames/*.png' --save-masks masks/
    python runtime/stream.py --source rtsp://camera.local/stream --model build/model.int8.engine
    python runtime/stream.py --source csi://0            # Jetson CSI camera (nvarguscamerasrc)
    python runtime/stream.py drive.mp4                   # positional: camera index, file, folder, glob or URI

The loop (runtime/pipeline.py) is source -> preprocess -> backend.infer -> postprocess -> render/write, its
stages overlapping on three threads where that pays (--pipeline). Preprocessing and class names come
from the model file's metadata. Live sources drop only frames older than --max-age; files are processed
frame by frame unless --realtime. Ctrl-C, SIGTERM or SIGHUP stops cleanly: the output video is always finalised.
No output may be an input of the run or another output; a write that fails leaves any earlier file as it was.
Exit codes: 0 done (also when stopped by a signal), 2 bad input, 3 the source failed part-way.
OpenCV's own log lines are silenced; set OPENCV_LOG_LEVEL=INFO to see them when debugging a camera.
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

from runtime.backends import open_backend  # noqa: E402
from runtime.contract import ModelFileError
from runtime.ioutil import fail  # noqa: E402
from runtime.model_select import default_model  # noqa: E402
from runtime.output_policy import one_run  # noqa: E402
from runtime.outputs import (  # noqa: E402
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
from runtime.sources import (  # noqa: E402
    FrameSource,
    SourceError,
    SourceOptions,
    open_camera,
    open_images,
    open_path,
    open_uri,
    open_video,
)
from runtime.stats import StreamStats, format_summary, write_stats_json  # noqa: E402

STATUS_EVERY_S = 5.0
EXIT_SOURCE_FAILED = 3


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python runtime/stream.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    src = parser.add_argument_group("source (exactly one)")
    src.add_argument("input", nargs="?", help="camera index, video file, image folder/glob, or URI")
    src.add_argument("--camera", type=int, metavar="N", help="OpenCV/V4L2 camera index")
    src.add_argument("--video", metavar="PATH", help="a video file")
    src.add_argument("--images", metavar="DIR_OR_GLOB", help="an image folder or a quoted glob")
    src.add_argument("--source", metavar="URI", help="rtsp://, http(s)://, csi://N, synthetic://WxH@FPS, "
                     "or a GStreamer pipeline ending in appsink")
    src.add_argument("--max-frames", type=int, default=0, metavar="N", help="stop after N frames (0: no limit)")
    src.add_argument("--loop", action="store_true", help="restart files and image folders at the end")
    src.add_argument("--realtime", action="store_true",
                     help="play files at their frame rate and drop frames like a live source")
    src.add_argument("--pipeline", default="auto", choices=("auto", "on", "off"),
                     help="on: overlap read+preprocess, inference and drawing on three threads (more frames/s "
                     "when inference leaves cores idle); off: one frame at a time (freshest results). auto: "
                     "off for ONNX Runtime on a CPU with <= 2 cores, else on")
    src.add_argument("--max-age", type=float, metavar="MS",
                     help="live sources: drop a frame only when it is older than MS while a newer one waits "
                     "(default: one frame interval of the source, as reported or as measured if longer)")
    src.add_argument("--stall-timeout", type=float, default=10.0, metavar="S",
                     help="give up on a live source that delivers no frame for S seconds")
    src.add_argument("--reconnect-attempts", type=int, default=5, metavar="N",
                     help="reopen a disconnected live source N times, with backoff from 0.5 s, before exiting")
    model = parser.add_argument_group("model")
    model.add_argument("--model", metavar="PATH", help=".onnx or TensorRT .engine/.plan (default: the best in "
                       "build/ for this machine, else models/*.onnx)")
    model.add_argument("--backend", default="auto", choices=("auto", "onnxruntime", "openvino", "tensorrt", "cpu",
                                                              "cuda"),
                       help="auto: engines on TensorRT; ONNX on ONNX Runtime (GPU provider first), or where "
                       "OpenVINO is installed and the model runs on the CPU, the faster of the two as measured by "
                       "a short cached probe. cpu/cuda: ONNX Runtime with that provider")
    model.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                       help="OpenVINO CPU inference precision (auto: f32 math, or bf16 when the probe measured "
                       "it faster and the gate passed it); INT8 comes from an INT8 --model, whose float rest bf16 "
                       "puts in bf16 (int8+bf16)")
    model.add_argument("--threads", type=int, default=0, metavar="N", help="CPU inference threads (0: all)")
    out = parser.add_argument_group("outputs")
    show = out.add_mutually_exclusive_group()
    show.add_argument("--display", action="store_true", help="open a window (fail if there is no display)")
    show.add_argument("--headless", action="store_true", help="never open a window")
    out.add_argument("--output", metavar="OUT.mp4", help="write the annotated video (.mp4, .avi, .mkv, .mov)")
    out.add_argument("--fourcc", help="codec for --output (default: mp4v; MJPG for .avi)")
    out.add_argument("--save-masks", metavar="DIR", help="write a PNG mask per frame (255 = road)")
    out.add_argument("--view", default="overlay", choices=VIEWS)
    out.add_argument("--alpha", type=float, default=0.5, help="overlay opacity in [0, 1]")
    out.add_argument("--no-hud", action="store_true", help="no heads-up line on the image")
    out.add_argument("--stats-json", metavar="PATH", help="write the run's statistics here")
    out.add_argument("--quiet", action="store_true", help="no periodic status lines")
    return parser.parse_args(argv)


def open_source(args: argparse.Namespace) -> FrameSource:
    given = [(flag, value) for flag, value in (("input", args.input), ("--camera", args.camera),
                                               ("--video", args.video), ("--images", args.images),
                                               ("--source", args.source)) if value is not None]
    if len(given) != 1:
        raise SourceError("give exactly one source: --camera N, --video PATH, --images DIR_OR_GLOB, --source URI "
                          f"or a positional one (got {len(given)})")
    if args.max_frames < 0:
        raise SourceError(f"--max-frames {args.max_frames}: expected 0 or more")
    if args.max_age is not None and not args.max_age > 0:
        raise SourceError(f"--max-age {args.max_age:g}: expected milliseconds above 0")
    options = SourceOptions(loop=args.loop, realtime=args.realtime, max_frames=args.max_frames,
                            stall_timeout=args.stall_timeout, reconnect_attempts=args.reconnect_attempts,
                            max_age=args.max_age / 1000.0 if args.max_age is not None else None)
    flag, value = given[0]
    opener = {"input": lambda: open_path(str(value), options), "--camera": lambda: open_camera(value, options),
              "--video": lambda: open_video(value, options), "--images": lambda: open_images(value, options),
              "--source": lambda: open_uri(value, options)}[flag]
    return opener()


def open_outputs(args: argparse.Namespace, source: FrameSource, model_path: Path | None = None) -> Outputs:
    renderer = Renderer(args.view, args.alpha)
    window = None
    if args.display or (not args.headless and display_problem() is None):
        window = WindowOutput(f"roadseg: {source.description}")
    claim_output_paths(args.output, args.save_masks, args.stats_json, model_path,
                       getattr(getattr(source, "reader", None), "input_paths", []))
    video = VideoFileOutput(args.output, source.fps, args.fourcc, source.description) if args.output else None
    masks = MaskWriter(args.save_masks) if args.save_masks else None
    return Outputs(renderer, window, video, masks)


def source_problem(source: FrameSource, processed: int) -> str | None:
    """Why the run should end non-zero although it finished: a source that failed or skipped input."""
    if source.error:
        return source.error
    unreadable = getattr(getattr(source, "reader", None), "unreadable", [])
    if unreadable:
        total = len(getattr(source.reader, "paths", unreadable))
        return f"{len(unreadable)} of {total} images could not be read (first: {unreadable[0]})"
    if processed == 0:
        return f"{source.description}: no frames could be read"
    return None


def live_policy(source: FrameSource) -> dict:
    """A live source's freshness budget and its drops by cause, for the summary."""
    if not hasattr(source, "drops"):
        return {}
    return {"max_age_ms": round(source.max_age * 1000.0, 3), "dropped_by_cause": dict(source.drops)}


def open_chosen_backend(model_path: Path, args: argparse.Namespace):
    """(backend, the auto choice's evidence or None): a measured pick only for `--backend auto --precision
    auto`; any explicit choice opens exactly what was asked for."""
    threads = args.threads or None
    if args.backend == "auto" and args.precision == "auto":
        from runtime.backend_choice import open_auto

        return open_auto(model_path, threads, spinning=False)
    backend = "openvino" if args.backend == "auto" and args.precision == "bf16" else args.backend
    return open_backend(model_path, backend, threads=threads, spinning=False, precision=args.precision), None


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
    quiet_opencv()
    stop = StopRequest()
    stop.install()
    stop.waiting = True  # loading a model can take seconds: let Ctrl-C interrupt it
    model_path = Path(args.model) if args.model else None
    try:
        model_path = model_path or default_model()
        backend, choice = open_chosen_backend(model_path, args)
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
                            reconnects=getattr(source, "reconnects", 0), stopped_by=stop.signal_name,
                            **live_policy(source))
    print(format_summary(summary))
    if stop.signal_name:
        print(f"stopped by {stop.signal_name}")
    if failure is None and args.output and outputs.video is not None and outputs.video.frames_written:
        print(f"wrote {args.output} ({outputs.video.frames_written} frames)")
    if args.stats_json:  # the run's statistics land even when another output failed
        try:
            write_stats_json(args.stats_json, summary)
        except OSError as error:
            failure = failure or error
    if failure is not None:
        return fail(failure)
    problem = None if stop.signal_name else source_problem(source, stats.frames_processed)
    return fail(problem, EXIT_SOURCE_FAILED) if problem else 0


if __name__ == "__main__":
    sys.exit(main())
