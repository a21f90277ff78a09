"""Two source trees of emote, one bundle, one runtime setting, interleaved: does a change make the runtime slower?

    python bench/ab_trees.py --a ../emote-old --b . --bundle build/demo/bundle --backend openvino --precision fp32 \\
        --rounds 6 --seconds 4 -o build/ab

Each round runs the same timing program once from tree A and once from tree B (the order
alternating from round to round, so machine noise hits both alike), each a fresh process:
``Pipeline(bundle, ...)`` (the API both trees have), one warm-up video excluded, then
``--repeat`` timed videos of the example portrait and speech (monotonic clock, first frame
and end). It reports the median end-to-end seconds, frames per second and first frame of each
tree over all timed videos, B's speed as a ratio of A's, and whether the frames are identical.
Both trees read the same bundle, so it must be of a format both read (export it with the
older tree). Every figure is labelled with the CPU class it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

PROGRAM = """
import hashlib, json, sys, time
import numpy as np
from emote.runtime import Pipeline
from emote.runtime.face import prepare_portrait
from emote.runtime.audio import load_audio
bundle, backend, precision, seconds, repeat, tree = sys.argv[1:7]
portrait = prepare_portrait(tree + "/emote/assets/portrait.png", int(json.load(open(bundle + "/manifest.json"))["model"]["resolution"]))
audio = load_audio(tree + "/emote/assets/speech.wav")[: int(float(seconds) * 16000)]
runs = []
with Pipeline(bundle, backend=backend, precision=precision, sampler="dpmpp_2m", steps=4, guidance_steps=1) as pipe:
    for i in range(int(repeat) + 1):
        t0, first, clips = time.perf_counter(), None, []
        for clip in pipe.stream(portrait, audio):
            first = first or time.perf_counter() - t0
            clips.append(clip)
        frames = np.concatenate(clips)
        if i:  # the first video is the warm-up
            runs.append({"seconds": time.perf_counter() - t0, "first_frame": first, "frames": len(frames)})
print(json.dumps({"runs": runs, "sha256": hashlib.sha256(frames.tobytes()).hexdigest()}))
"""


def bench_once(tree: Path, bundle: Path, backend: str, precision: str, seconds: float, repeat: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree.resolve()))
    cmd = [sys.executable, "-c", PROGRAM, str(bundle), backend, precision, str(seconds), str(repeat), str(tree.resolve())]
    done = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, cwd=tree)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--a", required=True, help="source tree A (the baseline)")
    ap.add_argument("--b", required=True, help="source tree B (the change)")
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--backend", default="openvino")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--repeat", type=int, default=2, help="timed videos per process")
    ap.add_argument("--seconds", type=float, default=4.0, help="seconds of the example speech")
    ap.add_argument("-o", "--out", default="build/ab")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from emote.engines.probe import cpu_class

    trees = {"A": Path(args.a), "B": Path(args.b)}
    runs: dict[str, list[dict]] = {"A": [], "B": []}
    hashes: dict[str, set[str]] = {"A": set(), "B": set()}
    for r in range(args.rounds):
        for name in "AB" if r % 2 == 0 else "BA":
            got = bench_once(trees[name], Path(args.bundle).resolve(), args.backend, args.precision, args.seconds, args.repeat)
            runs[name] += got["runs"]
            hashes[name].add(got["sha256"])
            print(f"round {r + 1}/{args.rounds} {name}: " + ", ".join(f"{x['seconds']:.3f} s" for x in got["runs"]), flush=True)
    summary = {}
    for name, rs in runs.items():
        secs = statistics.median(x["seconds"] for x in rs)
        summary[name] = {
            "tree": str(trees[name]),
            "runs": len(rs),
            "p50_seconds": secs,
            "fps": rs[0]["frames"] / secs,
            "first_frame_p50": statistics.median(x["first_frame"] for x in rs),
            "frames_sha256": sorted(hashes[name]),
        }
    summary["B_speed_over_A"] = summary["A"]["p50_seconds"] / summary["B"]["p50_seconds"]
    summary["same_frames"] = hashes["A"] == hashes["B"] and len(hashes["A"]) == 1
    cpu = cpu_class().label
    record = {
        "cpu": cpu,
        "backend": args.backend,
        "precision": args.precision,
        "audio_seconds": args.seconds,
        "summary": summary,
        "command": " ".join(["python", *sys.argv]),
        "runs": runs,
    }
    (out / "ab.json").write_text(json.dumps(record, indent=1))
    print(
        f"CPU: {cpu}; {args.backend} {args.precision}, DPM++ 4 steps, guidance on step 1, {args.seconds:g} s of audio, "
        f"{args.rounds} rounds interleaved"
    )
    for name in ("A", "B"):
        s = summary[name]
        print(
            f"{name} ({s['tree']}): p50 {s['p50_seconds']:.3f} s, {s['fps']:.1f} frames/s, first frame {s['first_frame_p50']:.3f} s "
            f"over {s['runs']} videos"
        )
    print(f"B / A speed: {summary['B_speed_over_A']:.3f}x; identical frames: {summary['same_frames']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
