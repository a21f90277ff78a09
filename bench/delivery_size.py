"""What delivering a model's frames larger costs the generate job (`emote generate --size`): real-time factor by size.

    python bench/delivery_size.py --bundle build/demo/bundle --sizes 128,256,512 --repeat 3

Each repeat runs the whole job (denoise, resize, watermark, H.264 + AAC, C2PA signing) once per size,
in turn, on the example portrait and speech, so the sizes share the machine's state; the medians of
wall time are compared. With ``--unmarked`` each size is also run without the mark, so the mark's own
share of the cost at that size is seen.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from emote.engines.probe import cpu_class  # noqa: E402
from emote.runtime.examples import PORTRAIT, SPEECH  # noqa: E402
from emote.runtime.generate import generate_video  # noqa: E402
from emote.runtime.pipeline import Pipeline  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", default="build/demo/bundle", help="the bundle (default: make demo's)")
    ap.add_argument("--sizes", default="128,512", help="comma-separated px a side (default 128,512)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--unmarked", action="store_true", help="also each size without the mark")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    variants = [(s, marked) for s in sizes for marked in ((True, False) if args.unmarked else (True,))]
    pipes = {v: Pipeline(args.bundle, size=v[0], unmarked_research=not v[1]) for v in variants}
    walls: dict = {v: [] for v in variants}
    summary = None
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeat + 1):
            for v, pipe in pipes.items():
                summary = generate_video(pipe, PORTRAIT, SPEECH, Path(tmp) / "out.mp4", progress=False)
                if r:  # the first round warms every variant
                    walls[v].append(summary.wall_seconds)
    for pipe in pipes.values():
        pipe.close()
    print(
        f"# {cpu_class().label}; {args.bundle}; {summary.frames} frames for {summary.audio_seconds:.2f} s of audio; median of {args.repeat}"
    )
    print("| size | mark | wall s | frames/s | real-time factor | vs the first |")
    print("| --- | --- | --- | --- | --- | --- |")
    base = statistics.median(walls[variants[0]])
    for v in variants:
        wall = statistics.median(walls[v])
        fps = summary.frames / wall
        rtf = wall / summary.audio_seconds
        print(f"| {v[0]} px | {'on' if v[1] else 'off'} | {wall:.2f} | {fps:.1f} | {rtf:.2f} | {wall / base:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
