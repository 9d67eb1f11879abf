"""The newcomer's demo: stream a drive through the default model and collect what is worth looking at.

    python -m runtime.demo [SOURCE] [--out runs/demo]

Writes OUT/overlay.mp4 (annotated video), OUT/masks/ (PNG masks at the source size), OUT/stats.json (latency
summary) and OUT/contact_sheet.png (a few annotated frames), then prints where they are and the headline numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

from runtime import stream
from runtime.ioutil import atomic_write_bytes, fail
from runtime.paths import DEFAULT_VIDEO


def read_frames(video: Path, count: int) -> list[tuple[int, np.ndarray]]:
    """`count` frames spread evenly over the video, with their indices."""
    capture = cv2.VideoCapture(str(video))
    try:
        total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        if total <= 0:
            raise ValueError(f"{video}: no frames to make a contact sheet from")
        picks = np.linspace(0, total - 1, num=min(count, total)).round().astype(int)
        frames = []
        for index in picks:
            capture.set(cv2.CAP_PROP_POS_FRAMES, int(index))
            ok, frame = capture.read()
            if ok:
                frames.append((int(index), frame))
        return frames
    finally:
        capture.release()


def contact_sheet(frames: list[tuple[int, np.ndarray]], columns: int = 2, tile_width: int = 640) -> np.ndarray:
    tiles = []
    for index, frame in frames:
        scale = tile_width / frame.shape[1]
        tile = cv2.resize(frame, (tile_width, round(frame.shape[0] * scale)), interpolation=cv2.INTER_AREA)
        cv2.putText(tile, f"frame {index}", (8, tile.shape[0] - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.6,
                    (255, 255, 255), 2, cv2.LINE_AA)
        tiles.append(tile)
    while len(tiles) % columns:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.hstack(tiles[i : i + columns]) for i in range(0, len(tiles), columns)]
    return np.vstack(rows)


def headline(stats: dict) -> str:
    stages = stats.get("stages", {})
    inference = stages.get("inference", {}).get("p50_ms")
    end_to_end = stages.get("end_to_end", {}).get("p50_ms")
    parts = [f"{stats.get('frames_processed', 0)} frames", f"{stats.get('fps', 0):.1f} FPS",
             f"backend {stats.get('backend')} {stats.get('precision')}"]
    if inference is not None:
        parts.append(f"inference p50 {inference:.1f} ms")
    if end_to_end is not None:
        parts.append(f"end-to-end p50 {end_to_end:.1f} ms")
    return ", ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtime.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", nargs="?", default=DEFAULT_VIDEO, metavar="SOURCE",
                        help="what runtime/stream.py takes: a video file, image folder, URL or camera:N (default: the "
                        "KITTI drive)")
    parser.add_argument("--model", help="default: the best artifact in build/ for this machine")
    parser.add_argument("--out", default="runs/demo")
    parser.add_argument("--frames", type=int, default=6, help="frames on the contact sheet")
    args = parser.parse_args(argv)
    out = Path(args.out)
    video, stats_path = out / "overlay.mp4", out / "stats.json"
    stream_args = [args.source, "--headless", "--output", str(video), "--save-masks", str(out / "masks"),
                   "--stats-json", str(stats_path), "--quiet"]
    if args.model:
        stream_args += ["--model", args.model]
    code = stream.main(stream_args)
    if code != 0:
        return code
    try:
        sheet = contact_sheet(read_frames(video, args.frames))
    except ValueError as error:
        return fail(error)
    ok, encoded = cv2.imencode(".png", sheet)
    if not ok:
        return fail(f"{out / 'contact_sheet.png'}: could not encode the contact sheet")
    atomic_write_bytes(out / "contact_sheet.png", encoded.tobytes())
    stats = json.loads(stats_path.read_text())
    print(f"\ndemo done: {headline(stats)}")
    print(f"  annotated video  {video}")
    print(f"  contact sheet    {out / 'contact_sheet.png'}")
    print(f"  road masks       {out / 'masks'}/")
    print(f"  latency summary  {stats_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
