"""The detector's cost per frame by frame size, with frames shrunk before whitening (watermark.reduction) or not.

    python bench/watermark_detect_speed.py --sizes 512,1080 --frames 50 --repeat 3

One thread. The two ways are interleaved, each repeat timing both on the same marked frames (the
example portrait under camera motion, H.264 CRF 23), and the medians compared; the z each finds is
printed too, so the cost is seen with the evidence it buys.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import watermark as harness  # noqa: E402

from emote.bench.attacks import h264  # noqa: E402
from emote.provenance import payload as pl  # noqa: E402
from emote.provenance import watermark as wm  # noqa: E402


def timed(frames: np.ndarray, shrink: bool) -> tuple[float, float]:
    """(ms per frame to sum and search the clip, z) with the detector's reduction on or forced to 1."""
    keep = wm.reduction
    if not shrink:
        wm.reduction = lambda h, w: 1
    try:
        t0 = time.perf_counter()
        s = wm.ClipSum()
        for i, f in enumerate(frames):
            s.add(f, i / 25)
        d = s.detect(wm.Key.default())
        return (time.perf_counter() - t0) * 1000 / len(frames), d.z
    finally:
        wm.reduction = keep


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="512,1080", help="frame heights (16:9 above 512, square up to it)")
    ap.add_argument("--frames", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    cv2.setNumThreads(1)
    from PIL import Image

    from emote.runtime.examples import PORTRAIT

    image = np.asarray(Image.open(PORTRAIT).convert("RGB"))
    print("| frame | shrunk by | ms/frame shrunk | ms/frame full size | ratio | z shrunk / full |")
    print("| --- | --- | --- | --- | --- | --- |")
    for h in (int(x) for x in args.sizes.split(",")):
        w = h if h <= 512 else h * 16 // 9 // 2 * 2
        square = harness.make_clip(image, max(h, w), args.frames, seed=h)[:, :h, :w]
        marked = wm.Embedder(wm.Key.default(), pl.Payload(1, 7)).mark(np.ascontiguousarray(square))
        luma = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in h264(marked, 23)])
        runs = {True: [], False: []}
        zs = {}
        for _ in range(args.repeat):
            for shrink in (True, False):
                ms, zs[shrink] = timed(luma, shrink)
                runs[shrink].append(ms)
        a, b = float(np.median(runs[True])), float(np.median(runs[False]))
        print(f"| {w}x{h} | {wm.reduction(h, w)} | {a:.1f} | {b:.1f} | {b / a:.2f}x | {zs[True]:.1f} / {zs[False]:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
