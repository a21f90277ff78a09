"""Latency of the TensorRT pipeline with and without the CUDA graph: per component, per step, per clip.

    python bench/gpu_latency.py BUNDLE [--precision fp16] [--steps 4] [--repeat 5] [--engines DIR] [--json FILE]

Four variants run interleaved on the same inputs (the example portrait and speech),
after one unmeasured warm-up each (plans built, the graph captured):

  profile+graph / profile-nograph  every stage synchronized and timed (overlap off):
                                   per component, and the K-step loop as one number
  stream+graph  / stream-nograph   what a user gets (decode overlapped on the second
                                   stream): seconds per clip, between yielded clips

Medians over every clip of every round; the graph's speedup is nograph / graph of the
same median. Run by bench/gpu_check.sh; needs an NVIDIA GPU and TensorRT.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emote.bundle import Bundle  # noqa: E402
from emote.engines.steploop import loop_state  # noqa: E402
from emote.runtime.examples import example_inputs  # noqa: E402
from emote.runtime.pipeline import Pipeline  # noqa: E402

STAGES = ("reference_net", "audio_encoder", "vae_encoder", "clip_condition", "denoise_loop", "vae_decoder")


def run_once(pipe: Pipeline, portrait, audio) -> tuple[list[float], float]:
    """(seconds between yielded clips, seconds to the first clip) of one video."""
    gaps, t0 = [], time.perf_counter()
    last = t0
    for _ in pipe.stream(portrait, audio, seed=0):
        now = time.perf_counter()
        gaps.append(now - last)
        last = now
    return gaps, gaps[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--precision", default="fp16")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--engines", help="plan folder (default: the bundle's engine folder for this GPU)")
    ap.add_argument("--json", help="write every sample here")
    args = ap.parse_args()

    bundle = Bundle.open(args.bundle)
    portrait, audio = example_inputs(bundle.geometry.resolution)
    variants = {
        f"{mode}{'+graph' if graph else '-nograph'}": dict(graph=graph, overlap=(mode == "stream"))
        for mode in ("profile", "stream")
        for graph in (True, False)
    }
    pipes = {
        name: Pipeline(
            bundle,
            backend="tensorrt",
            precision=args.precision,
            sampler="dpmpp_2m",
            steps=args.steps,
            guidance_steps=1,
            overlap=v["overlap"],
            backend_options={"engines": args.engines, "cuda_graph": v["graph"]},
        )
        for name, v in variants.items()
    }
    samples: dict[str, dict] = {n: {"clip": [], "first": [], "stages": {}} for n in pipes}
    try:
        for pipe in pipes.values():  # warm-up: plans loaded, graph captured on the first clip
            run_once(pipe, portrait, audio)
        for r in range(args.repeat):
            names = list(pipes)
            names = names[r % len(names) :] + names[: r % len(names)]  # rotate: no variant always first
            for name in names:
                pipe = pipes[name]
                pipe.timings.calls.clear()
                gaps, first = run_once(pipe, portrait, audio)
                samples[name]["clip"] += gaps[1:]  # steady state: the first clip also carries the reference
                samples[name]["first"].append(first)
                for stage, times in pipe.timings.calls.items():
                    samples[name]["stages"].setdefault(stage, []).extend(times)
        loops = {name: loop_state(pipe.loop) for name, pipe in pipes.items()}  # after the runs: a refused capture shows
    finally:
        for pipe in pipes.values():
            pipe.close()

    def med(xs) -> float:
        return float(np.median(xs)) if xs else float("nan")

    k = args.steps
    print(f"\n{args.bundle}  precision {args.precision}  dpm++2m {k} steps (guidance on step 1)  {args.repeat} rounds\n")
    for name, state in loops.items():
        print(f"denoising loop of {name}: {state}")
    if not all(loops[n] == "cuda graph" for n in loops if n.endswith("+graph")):
        print("note: a '+graph' variant ran uncaptured: its 'graph' column is no CUDA graph")
    print(f"\n{'stage (profile runs, ms p50)':<30}{'graph':>10}{'no graph':>10}{'speedup':>9}")
    for stage in STAGES:
        g, n = med(samples["profile+graph"]["stages"].get(stage, [])), med(samples["profile-nograph"]["stages"].get(stage, []))
        print(f"{stage:<30}{g * 1e3:>10.2f}{n * 1e3:>10.2f}{n / g:>8.2f}x")
        if stage == "denoise_loop":
            print(f"{'  per step (loop / ' + str(k) + ')':<30}{g / k * 1e3:>10.2f}{n / k * 1e3:>10.2f}{n / g:>8.2f}x")
    g, n = med(samples["stream+graph"]["clip"]), med(samples["stream-nograph"]["clip"])
    print(f"{'per clip (stream runs)':<30}{g * 1e3:>10.2f}{n * 1e3:>10.2f}{n / g:>8.2f}x")
    g, n = med(samples["stream+graph"]["first"]), med(samples["stream-nograph"]["first"])
    print(f"{'first clip (stream runs)':<30}{g * 1e3:>10.2f}{n * 1e3:>10.2f}{n / g:>8.2f}x")
    frames = bundle.geometry.frames
    print(f"\nframes per second (stream+graph, steady state): {frames / med(samples['stream+graph']['clip']):.1f}")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"bundle": str(args.bundle), "precision": args.precision, "steps": k, "loops": loops, "samples": samples}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
