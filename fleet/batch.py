"""Re-process recorded drives on a Ray cluster: videos -> frame segments -> masks, per video, resumable.

    python -m fleet.batch drives/ --out runs/fleet                       # a local cluster on this machine
    python -m fleet.batch a.mp4 b.mp4 --out runs/fleet --overlay
    python -m fleet.batch /data/drives --out /data/masks --address 10.0.0.5:6379 --num-gpus 0.5

Ray Data plan: the segments (ray.data.from_items) -> map_batches through an actor pool, each actor holding one of
the runtime's backends and taking one segment a call: decoded with OpenCV on a reader thread, preprocess -> infer
-> postprocess, each mask PNG-encoded on a writer thread -> the encoded masks stream back here in order and are
written to OUT/<video stem>/masks/NNNNNN.png (the files `runtime/stream.py --save-masks` writes), with
OUT/<video stem>/stats.json once a video is complete and OUT/summary.json for the run. A video whose complete
stats.json carries the same fingerprint (video bytes, model bytes, settings) is skipped, so an interrupted run
picks up where it stopped. Actors that die are restarted and their blocks retried (Ray Data's actor pools restart
actors and retry their calls without limit by default); a mask already written is not written again.
Exit codes: 0 every video done, 2 bad input (nothing to do, bad model, no cluster), 3 some videos failed
(each named with its reason in the summary).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fleet.cluster import DEFAULT_OBJECT_STORE_MB, ClusterError, connect, disconnect
from fleet.outputs import VideoOutputs, finished_fingerprint
from fleet.segmenter import DYNAMIC, FrameSegmenter, fuller_batch_pays, resolve_backend
from fleet.videos import (
    DEFAULT_SEGMENT_FRAMES,
    SegmentReader,
    Unreadable,
    VideoPlan,
    find_videos,
    plan_video,
    segments,
)
from runtime.backend_choice import DEVICES, RUNTIMES
from runtime.contract import ModelFileError
from runtime.ioutil import atomic_write_text, fail, sha256_file
from runtime.model_select import default_model
from runtime.outputs import OutputError, encode_mask_png
from runtime.sources import PrefetchSource, SourceError
from runtime.stream import quiet_opencv

SUMMARY_NAME = "summary.json"
EXIT_SOME_FAILED = 3
GPU_FRAMES_PER_CALL = 8  # frames per inference call for a symbolic-batch model on a GPU
OUTPUT_BLOCK_FRAMES = 32  # frames per block an actor sends on: the overlay's frames travel too, keep blocks small


class MaskActor:
    """A Ray Data actor: one segment row in, the mask files of its frames out, encoded here (PNG bytes) so that the
    driver only writes bytes, however many actors feed it; for an overlay, the masks and frames too.

    The segment runs as the runtime's own loop does: decoded a few frames ahead on a reader thread
    (runtime/sources.py's PrefetchSource), preprocess -> infer -> postprocess on this thread, each mask encoded
    on a writer thread while the next frame is inferred, so decoding, inference and encoding use the cores
    side by side."""

    def __init__(self, model: str, backend: str, threads: int, precision: str, keep_frames: bool) -> None:
        self.segmenter = FrameSegmenter(model, backend, threads or None, precision)
        self.keep_frames = keep_frames
        self.frames_per_call = frames_per_call(self.segmenter.batch_limit, self.segmenter.backend.device)
        # The reader recycles a frame's buffer on the next read: keep a copy only when a frame must outlive that.
        self.copy_frames = self.frames_per_call > 1 or keep_frames
        self.encoder = ThreadPoolExecutor(1, thread_name_prefix="mask-png")

    def __call__(self, batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        """The segment's results in blocks of OUTPUT_BLOCK_FRAMES frames, as they are made (a generator: Ray Data
        streams each block on while the rest of the segment runs)."""
        if len(batch["path"]) != 1:
            raise ValueError(f"MaskActor takes one segment per call, got {len(batch['path'])}")
        row = {key: values[0] for key, values in batch.items()}
        reader = SegmentReader(str(row["path"]), int(row["start"]), int(row["end"]))
        block = SegmentBlock(int(row["video_id"]), int(row["segment"]), reader.start, self.keep_frames)
        full: SegmentBlock | None = None  # a full block, sent once a later frame shows the file goes on
        pending: list[np.ndarray] = []
        with PrefetchSource(reader) as source:
            while (frame := source.read()) is not None:
                if full is not None:
                    yield full.columns(file_ended=False)
                    full = None
                pending.append(frame.image.copy() if self.copy_frames else frame.image)
                if len(pending) == self.frames_per_call:
                    self._segment(pending, block)
                    pending = []
                if len(block.encoded) >= OUTPUT_BLOCK_FRAMES:
                    full, block = block, block.next()
            if pending:
                self._segment(pending, block)
        if full is not None and not block.encoded:
            block = full  # the segment's last frame closed a block: that block carries where the file ended
        elif full is not None:
            yield full.columns(file_ended=False)
        yield block.columns(reader.file_ended)

    def _segment(self, images: list[np.ndarray], block: SegmentBlock) -> None:
        result = self.segmenter(images)
        block.encoded.extend(self.encoder.submit(encode_mask_png, mask) for mask in result.masks)
        block.inference_ms.extend(result.inference_ms)
        if self.keep_frames:
            block.kept.extend(zip(result.masks, images, strict=True))


def frames_per_call(model_limit: int | None, device: str) -> int:
    """Frames an actor hands the backend at once: a fixed batch N takes N; a symbolic batch takes
    GPU_FRAMES_PER_CALL where a fuller batch pays (a GPU), else one frame, as the runtime's own loop: on a CPU a
    batch would only hold the reader and the encoder idle while it runs."""
    if model_limit is not DYNAMIC:
        return model_limit
    return GPU_FRAMES_PER_CALL if fuller_batch_pays(model_limit, device) else 1


@dataclass
class SegmentBlock:
    """One output block of a segment: frames first_index.. of one video, their mask files (being encoded), their
    inference times and, for an overlay, their masks and frames."""

    video_id: int
    segment: int
    first_index: int
    keep_frames: bool
    made_from: float = field(default_factory=time.time)  # wall clock: comparable across the actors of a node
    encoded: list[Future] = field(default_factory=list)
    inference_ms: list[float] = field(default_factory=list)
    kept: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)

    def next(self) -> SegmentBlock:
        return SegmentBlock(self.video_id, self.segment, self.first_index + len(self.encoded), self.keep_frames)

    def columns(self, file_ended: bool) -> dict[str, np.ndarray]:
        """The block as Ray Data columns; `file_ended` only on a segment's last block, where the file may end."""
        count = len(self.encoded)
        columns = {
            "video_id": np.full(count, self.video_id, np.int32),
            "segment": np.full(count, self.segment, np.int32),
            "index": np.arange(self.first_index, self.first_index + count, dtype=np.int64),
            "file_ended": np.full(count, file_ended, bool),
            "mask_png": object_column([future.result() for future in self.encoded]),
            "inference_ms": np.asarray(self.inference_ms, np.float64),
            "made_from": np.full(count, self.made_from, np.float64),
            "made_until": np.full(count, time.time(), np.float64),
        }
        if self.keep_frames:
            columns["mask"] = stack([mask for mask, _ in self.kept])
            columns["frame"] = stack([image for _, image in self.kept])
        return columns


def object_column(values: list) -> np.ndarray:
    """A 1-D object array (np.asarray would try to make bytes of different lengths one fixed-width column)."""
    column = np.empty(len(values), object)
    column[:] = values
    return column


def stack(images: list[np.ndarray]) -> np.ndarray:
    """One array when the images share a shape (one video's frames do), else an object array."""
    if not images:
        return np.zeros((0, 1, 1), np.uint8)
    if all(image.shape == images[0].shape for image in images):
        return np.stack(images)
    return object_column(images)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m fleet.batch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", metavar="VIDEO_OR_DIR", help="video files, or folders searched for them")
    parser.add_argument("--out", required=True, metavar="DIR", help="one folder per video, and summary.json")
    parser.add_argument("--address", metavar="ADDR", help="join the Ray cluster at HOST:PORT ('auto': the one "
                        "`ray start` began on this machine); default: start a local cluster")
    parser.add_argument("--model", metavar="PATH", help=".onnx or engine (default: the best for this machine)")
    parser.add_argument("--backend", default="auto", choices=RUNTIMES,
                        help="the runtime each actor runs the model on. auto: what runtime/stream.py picks on this "
                        "machine (measured once here, then used by every actor)")
    parser.add_argument("--device", default="auto", choices=DEVICES, help="cpu or cuda (auto: the runtime's choice)")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                        help="OpenVINO CPU precision hint")
    parser.add_argument("--actors", type=int, default=0, metavar="N",
                        help="actors in the pool (default: one per two CPUs, at least 1; with GPUs: 1 / --num-gpus "
                        "per GPU)")
    parser.add_argument("--threads", type=int, default=0, metavar="N",
                        help="inference threads per actor (default: the cluster's CPUs / actors, at least 1)")
    parser.add_argument("--num-gpus", type=float, default=0.0, metavar="F",
                        help="GPUs per actor: 1, or a fraction to share a GPU (0.5: two actors per GPU)")
    parser.add_argument("--num-cpus", type=int, default=0, metavar="N",
                        help="CPUs of the local cluster (default: every core; ignored with --address)")
    parser.add_argument("--object-store-mb", type=int, default=DEFAULT_OBJECT_STORE_MB, metavar="MB",
                        help="the local cluster's object store")
    parser.add_argument("--segment-frames", type=int, default=DEFAULT_SEGMENT_FRAMES, metavar="N",
                        help="frames per decode task and per actor call")
    parser.add_argument("--overlay", action="store_true", help="also write OUT/<video>/overlay.mp4")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def output_settings(args: argparse.Namespace) -> str:
    """The settings a video's outputs depend on (part of its fingerprint)."""
    return json.dumps({"overlay": args.overlay, "backend": args.backend, "precision": args.precision},
                      sort_keys=True)


def plan_videos(args: argparse.Namespace, model: Path, out: Path
                ) -> tuple[list[VideoPlan], list[str], list[Unreadable]]:
    """(videos to process, stems skipped as finished, videos that cannot be processed with their reasons)."""
    paths, unreadable = find_videos(args.inputs)
    model_sha256 = sha256_file(model)
    settings = output_settings(args)
    todo: list[VideoPlan] = []
    skipped: list[str] = []
    stems: dict[str, str] = {}
    out_folder = out.resolve()
    for path in paths:
        if path.is_relative_to(out_folder):  # our own overlay videos, when --out lies inside an input folder
            continue
        if path.stem in stems:
            unreadable.append(Unreadable(str(path), f"{path}: same name as {stems[path.stem]} (both would write "
                                         f"{out / path.stem}); rename one"))
            continue
        stems[path.stem] = str(path)
        try:
            plan = plan_video(path, model_sha256, settings)
        except SourceError as error:
            unreadable.append(Unreadable(str(path), str(error).splitlines()[0]))
            continue
        if finished_fingerprint(out / plan.stem) == plan.fingerprint:
            skipped.append(plan.stem)
        else:
            todo.append(plan)
    return todo, skipped, unreadable


def pool_size(args: argparse.Namespace, cpus: float, gpus: float) -> tuple[int, float, int]:
    """(actors, logical CPUs per actor, inference threads per actor).

    The actors decode their segments themselves, so they may reserve every CPU between them. An actor's inference
    threads are its share of the cores, as the runtime's loop uses every core, its reader and mask-encoding threads
    running between inference calls. Against one thread less, on a 2-core AMD EPYC Zen 4 (fleet / runtime, steady):
    the Lite0 INT8 file 0.93 against 0.77, the VGG16 w0.25 INT8 file 0.83 against 0.81; only on a 2-core Xeon with
    AMX, where the VGG16 file's inference takes 5 ms, did one thread do better (106 frames/s against 98, the actor
    alone).
    """
    if args.actors:
        actors = args.actors
    elif args.num_gpus > 0:
        actors = max(1, int(gpus / args.num_gpus))
    else:
        actors = max(1, int(cpus) // 2)
    cpus_per_actor = max(0.25, cpus / actors) if args.num_gpus == 0 else 1.0
    threads = args.threads or max(1, int(cpus) // actors)
    return actors, cpus_per_actor, threads


def build_dataset(plans: list[VideoPlan], args: argparse.Namespace, model: Path, cpus: float, gpus: float):
    import ray
    import ray.data  # configures its loggers on import: quieten them after

    from fleet.cluster import quiet_ray_environment

    quiet_ray_environment()
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # ours is the one progress line
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # masks arrive in video order: the overlay is written as it comes
    context.enable_progress_bars = False  # ours counts frames
    context.print_on_execution_start = False
    rows = [row for video_id, plan in enumerate(plans) for row in segments(plan, video_id, args.segment_frames)]
    actors, cpus_per_actor, threads = pool_size(args, cpus, gpus)
    dataset = ray.data.from_items(rows, override_num_blocks=len(rows))
    # The actors decode their segments themselves: frames never cross the object store (or the network, on a
    # cluster), only the encoded masks do.
    dataset = dataset.map_batches(
        MaskActor, batch_size=1, compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=cpus_per_actor,
        num_gpus=args.num_gpus or None,
        fn_constructor_kwargs={"model": str(model), "backend": args.backend, "threads": threads,
                               "precision": args.precision, "keep_frames": args.overlay})
    return dataset, {"actors": actors, "cpus_per_actor": cpus_per_actor, "threads_per_actor": threads,
                     "gpus_per_actor": args.num_gpus}


class Progress:
    """A tqdm bar over frames (none with --no-progress or when tqdm is missing)."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                return
            self.bar = tqdm(total=total, unit="frame", desc="fleet.batch", dynamic_ncols=True)

    def update(self, frames: int) -> None:
        if self.bar is not None:
            self.bar.update(frames)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_batch(args: argparse.Namespace) -> dict:
    """Every video of `args.inputs` through the cluster; returns the run summary (also in OUT/summary.json)."""
    started = time.perf_counter()
    out = Path(args.out)
    model = Path(args.model) if args.model else default_model()
    args.backend, args.precision, label = resolve_backend(model, args.backend, args.device, args.precision)
    out.mkdir(parents=True, exist_ok=True)
    plans, skipped, unreadable = plan_videos(args, model, out)
    summary: dict = {"model": str(model), "backend": label, "videos": {}, "skipped_finished": skipped,
                     "failed": {u.path: u.reason for u in unreadable}}
    frames_done = 0
    if plans:
        cluster = connect(args.address, args.num_cpus or None, args.object_store_mb)
        print(cluster.line(), flush=True)
        summary["cluster"] = {"address": cluster.address, "nodes": cluster.nodes, "cpus": cluster.cpus,
                              "gpus": cluster.gpus}
        dataset, pool = build_dataset(plans, args, model, cluster.cpus, cluster.gpus)
        summary["pool"] = pool
        print(f"{len(plans)} video(s) to process, {len(skipped)} already finished, {len(unreadable)} unreadable; "
              f"{pool['actors']} actor(s) x {pool['threads_per_actor']} thread(s), {label}", flush=True)
        processing_started = time.perf_counter()
        frames_done = write_results(dataset, plans, out, args, summary)
        summary["processing_s"] = round(time.perf_counter() - processing_started, 3)
    summary["frames"] = frames_done
    summary["wall_s"] = round(time.perf_counter() - started, 3)
    summary["fps"] = round(frames_done / summary["wall_s"], 3) if summary["wall_s"] > 0 else 0.0
    atomic_write_text(out / SUMMARY_NAME, json.dumps(summary, indent=2) + "\n")
    return summary


def write_results(dataset, plans: list[VideoPlan], out: Path, args: argparse.Namespace, summary: dict) -> int:
    """Stream the masks back in order and write them; a video is finished when the next one starts (or at the end)."""
    progress = Progress(sum(plan.frame_count for plan in plans), not args.no_progress)
    current: tuple[int, VideoOutputs, float] | None = None
    frames = 0
    first_started, last_finished = float("inf"), float("-inf")  # the actors' window, on their own clocks

    def finish(video_id: int, outputs: VideoOutputs, video_started: float) -> None:
        outputs.close()
        plan = plans[video_id]
        record = video_record(plan, outputs, time.perf_counter() - video_started, summary["backend"])
        problem = outputs.missing(plan.frame_count)
        if problem is None:
            outputs.finish(record)
            summary["videos"][plan.stem] = {"frames": record["frames"], "fps": record["fps"]}
        else:
            summary["failed"][plan.path] = f"{plan.path}: {problem}"

    try:
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            for row in range(len(batch["index"])):
                video_id = int(batch["video_id"][row])
                if current is None or current[0] != video_id:
                    if current is not None:
                        finish(*current)
                    plan = plans[video_id]
                    current = (video_id, VideoOutputs(out / plan.stem, plan.fps, args.overlay), time.perf_counter())
                overlay = (batch["mask"][row], batch["frame"][row]) if args.overlay else None
                current[1].write(int(batch["index"][row]), batch["mask_png"][row], float(batch["inference_ms"][row]),
                                 bool(batch["file_ended"][row]), overlay)
                frames += 1
            progress.update(len(batch["index"]))
            if len(batch["index"]):
                first_started = min(first_started, float(batch["made_from"].min()))
                last_finished = max(last_finished, float(batch["made_until"].max()))
    finally:
        progress.close()
        if current is not None:
            finish(*current)
    seen = {plan.stem for plan in plans} - set(summary["videos"]) - {Path(p).stem for p in summary["failed"]}
    for stem in sorted(seen):  # a video none of whose frames came back
        plan = next(p for p in plans if p.stem == stem)
        summary["failed"][plan.path] = f"{plan.path}: no frames could be decoded"
    if last_finished > first_started:
        # From the first frame an actor started to the last one it finished: the pool at work, without the
        # cluster's start and the actors' model loading, like a single process's loop.
        summary["steady_fps"] = round(frames / (last_finished - first_started), 3)
    return frames


def video_record(plan: VideoPlan, outputs: VideoOutputs, wall_s: float, backend: str) -> dict:
    frames = len(outputs.indices)
    return {"complete": True, "fingerprint": plan.fingerprint, "video": plan.path, "frames": frames,
            "source_fps": plan.fps, "backend": backend, "duplicates_delivered": outputs.duplicates,
            "masks": "masks/", "overlay": "overlay.mp4" if outputs.overlay is not None else None,
            "inference": outputs.inference.summary(), "wall_s": round(wall_s, 3),
            "fps": round(frames / wall_s, 3) if wall_s > 0 else 0.0}


def stop_on_signal(signum: int, _frame) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_opencv()
    for name in ("segment_frames", "object_store_mb"):
        if getattr(args, name) < 1:
            return fail(f"--{name.replace('_', '-')} {getattr(args, name)}: expected 1 or more")
    if args.actors < 0 or args.threads < 0 or args.num_gpus < 0:
        return fail("--actors, --threads and --num-gpus must not be negative")
    for signum in (signal.SIGTERM, signal.SIGHUP):  # like Ctrl-C: the video being written is closed properly
        signal.signal(signum, stop_on_signal)
    try:
        summary = run_batch(args)
    except (ClusterError, ModelFileError, OutputError, OSError) as error:
        return fail(error)
    except KeyboardInterrupt:
        print("stopped: finished videos keep their stats.json; run the same command again to go on")
        return 130
    finally:
        disconnect()
    done, failed = summary["videos"], summary["failed"]
    print(f"{len(done)} video(s) done ({summary['frames']} frames, {summary['fps']:.1f} frames/s overall), "
          f"{len(summary['skipped_finished'])} skipped as finished, {len(failed)} failed; "
          f"summary in {Path(args.out) / SUMMARY_NAME}")
    for reason in failed.values():
        print(f"  failed: {reason}")
    return EXIT_SOME_FAILED if failed else 0


if __name__ == "__main__":
    sys.exit(main())
