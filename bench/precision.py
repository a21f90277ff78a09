"""Every precision in every CPU backend: denoise_step and end to end, interleaved, with their fidelity.

    .venv/bin/python bench/precision.py --preset demo -o build/bench-precision
    .venv/bin/python bench/precision.py --bundle BUNDLE -o OUT [--calib DIR] [--rounds 7] [--seconds 3]

Prepares the bundle once, in OUT (or in place with --bundle): fp16 step graphs
(`emote quantize --precision fp16`), calibration on the example portrait and speech
plus three procedural portraits (`emote calibrate`: 10 timesteps, or a one-step bundle's one), int8 Q/DQ step graphs
(`emote quantize --precision int8`). Then, on this machine, in one run:

1. step: the step graph the bundle's sampler runs (``denoise_step``; ``denoise_step_cond`` when unguided) in ONNX Runtime (fp32, fp16 graph, int8 graph) and OpenVINO
   (fp32, bf16 and fp16 where the CPU computes them, int8 graph with f32 or bf16 float
   parts), each bound to the same recorded inputs; ``--rounds`` rounds, each running
   every variant ``--calls`` times in a rotated order (noise hits all alike). Reported:
   median and p90 ms per call, speed against fp32 in the same backend and against
   ONNX Runtime fp32, SQNR of x_next and x0 against ONNX Runtime fp32 on ``--samples``
   calibration samples spread over the trajectory;
2. end to end: `emote bench`'s loop (same inputs, interleaved, warm-up excluded) with
   the bundle's sampler defaults (demo: dpm++2m, 4 steps, guidance on the first; demo-fast: ddim 1) in each backend and
   precision: seconds, frames/s, PSNR of the frames against ONNX Runtime fp32.

The default pick: the fastest (backend, precision) end to end whose step SQNR is at
least ``--min-sqnr`` dB on every output and whose frames keep ``--min-psnr`` dB against
fp32. Writes results.json and results.md to OUT and prints the Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's emote and training packages

from emote import precision as policy  # noqa: E402
from emote.bench.run import benchmark, machine  # noqa: E402
from emote.bench.variants import defaults_variant, sampler_tag  # noqa: E402
from emote.bundle import SAMPLE_RATE, Bundle  # noqa: E402
from emote.engines import open_backend  # noqa: E402
from emote.export.parity import sqnr_db  # noqa: E402

STEP = "denoise_step"  # the guided step graph; a bundle sampled unguided (a distilled student) runs denoise_step_cond


def step_graph(bundle: Bundle) -> str:
    """The step graph the bundle's own sampler runs on every step."""
    return "denoise_step_cond" if bundle.sampler.guidance_scale == 1.0 else STEP


def prepare(args, out: Path) -> tuple[Bundle, Path]:
    """The bundle with fp16 and int8 step graphs, and its calibration folder (made where missing)."""
    from emote.calibration.fp16 import export_fp16
    from emote.calibration.quantize import quantize_bundle
    from emote.calibration.record import calibrate

    if args.bundle:
        path = Path(args.bundle)
    else:
        from emote.export.bundle import ensure_bundle

        path = ensure_bundle(out / f"bundle-{args.preset}", args.preset)
    bundle = Bundle.open(path)
    if not bundle.has(step_graph(bundle), "fp16"):
        print("adding fp16 step graphs", flush=True)
        bundle = export_fp16(bundle, progress=print)
    calib = Path(args.calib) if args.calib else out / "calib"
    if not (calib / "calibration.json").is_file():
        from PIL import Image

        from emote.runtime.examples import PORTRAIT, SPEECH
        from training.portrait import random_params, render_portrait

        images, audio = out / "calib-inputs" / "images", out / "calib-inputs" / "audio"
        images.mkdir(parents=True, exist_ok=True)
        audio.mkdir(parents=True, exist_ok=True)
        Image.open(PORTRAIT).save(images / "portrait.png")
        rng = np.random.default_rng(11)
        for i in range(3):
            Image.fromarray(render_portrait(random_params(rng), 256, mouth_open=0.25 * i)).save(images / f"face{i}.png")
        (audio / "speech.wav").write_bytes(SPEECH.read_bytes())
        calibrate(bundle.path, images, audio, calib, samples=args.calib_samples, force=True)  # a one-step bundle: its one timestep
    if not bundle.has(step_graph(bundle), "int8"):
        bundle = quantize_bundle(bundle.path, calib, sensitivity=not args.no_sensitivity, progress=lambda m: print(m, flush=True))
    return Bundle.open(bundle.path), calib


def step_variants(bundle: Bundle) -> list[tuple[str, str, str, dict]]:
    """(name, backend, precision, backend options) of every step variant this machine and bundle can run."""
    out = [("ort-fp32", "onnxruntime", "fp32", {}), ("ort-fp16", "onnxruntime", "fp16", {}), ("ort-int8", "onnxruntime", "int8", {})]
    try:
        from emote.engines.openvino import devices
    except ImportError:
        return out
    cpu = next((p for d, _, p in devices() if d == "CPU"), [])
    inexact = {"allow_inexact_int8": True}  # measured even where the runtime refuses it (no VNNI): the SQNR shows why
    for p in ("fp32", "bf16", "fp16", "int8"):
        if p in cpu:
            out.append((f"ov-{p}", "openvino", p, inexact if p == "int8" else {}))
    if "int8" in cpu and "bf16" in cpu:
        out.append(("ov-int8+bf16", "openvino", "int8", {"inference_precision": "bf16", **inexact}))
    return [v for v in out if bundle.has(step_graph(bundle), policy.graph_precision(v[1], v[2]))]


class StepRunner:
    """One variant's denoise_step bound once to its own copy of the inputs."""

    def __init__(self, bundle: Bundle, backend: str, precision: str, options: dict, threads: int):
        self.backend = open_backend(backend, precision, threads=threads, **options)
        self.graph = self.backend.load(policy.graph_for(bundle, step_graph(bundle), backend, precision))
        self.ins = {n: np.zeros(shape, dtype) for n, (shape, dtype) in self.graph.inputs.items()}
        self.outs = {n: np.zeros(shape, dtype) for n, (shape, dtype) in self.graph.outputs.items()}
        self.call = self.graph.bind(self.ins, self.outs)

    def outputs(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for n, buf in self.ins.items():
            np.copyto(buf, feeds[n])
        self.call()
        return {n: o.copy() for n, o in self.outs.items()}


def bench_steps(bundle: Bundle, calib: Path, args) -> dict:
    from emote.calibration.record import CalibrationSet

    with CalibrationSet.open(calib) as c:
        feeds = c.feeds(step_graph(bundle), limit=args.samples)
    variants = step_variants(bundle)
    runners = {name: StepRunner(bundle, be, p, opts, args.threads) for name, be, p, opts in variants}
    outs = {name: [r.outputs(f) for f in feeds] for name, r in runners.items()}  # warm-up and fidelity
    ref = outs["ort-fp32"]
    fidelity = {}
    for name in runners:
        fidelity[name] = {o: sqnr_db(np.stack([r[o] for r in ref]), np.stack([g[o] for g in outs[name]])) for o in ref[0]}
    for r in runners.values():
        r.outputs(feeds[len(feeds) // 2])  # a mid-trajectory sample stays bound for the timing
    times: dict[str, list[float]] = {name: [] for name in runners}
    order = list(runners)
    for i in range(args.rounds):
        for name in order[i % len(order) :] + order[: i % len(order)]:
            call = runners[name].call
            for _ in range(args.calls):
                t0 = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - t0)
        print(
            f"step round {i + 1}/{args.rounds}: " + ", ".join(f"{n} {np.median(times[n][-args.calls :]) * 1e3:.1f}" for n in order),
            flush=True,
        )
    for r in runners.values():
        r.backend.close()
    rows = {}
    for name, be, p, opts in variants:
        fp32 = "ort-fp32" if be == "onnxruntime" else "ov-fp32"
        rows[name] = {
            "backend": be,
            "precision": p,
            "options": opts,
            "ms_min": float(np.min(times[name])) * 1e3,
            "ms_p50": float(np.median(times[name])) * 1e3,
            "ms_p90": float(np.percentile(times[name], 90)) * 1e3,
            "calls": len(times[name]),
            "speedup_vs_backend_fp32": float(np.median(times[fp32]) / np.median(times[name])),
            "speedup_vs_ort_fp32": float(np.median(times["ort-fp32"]) / np.median(times[name])),
            "sqnr_db": fidelity[name],
        }
    return {"graph": step_graph(bundle), "samples": len(feeds), "timesteps": sorted({float(f["row"][0]) for f in feeds}), "variants": rows}


def bench_end_to_end(bundle: Bundle, args) -> dict:
    from emote.runtime.examples import example_inputs

    specs = []
    for name, be, p, opts in step_variants(bundle):  # the bundle's own sampler defaults (dpm4-g1 for demo, ddim1 for demo-fast)
        specs.append(replace(defaults_variant(bundle, be, p), name=f"{name}-{sampler_tag(bundle)}", backend_options=opts))
    portrait, audio = example_inputs(bundle.geometry.resolution)
    return benchmark(
        bundle.path,
        specs,
        portrait,
        audio[: int(args.seconds * SAMPLE_RATE)],
        repeat=args.repeat,
        warmup=1,
        threads=args.threads,
        progress=lambda m: print(m, flush=True),
    )


def choose(step: dict, e2e: dict, min_sqnr: float, min_psnr: float, tag: str) -> tuple[str | None, list[str]]:
    """The fastest end-to-end variant within both fidelity bounds, and why the others were not chosen."""
    reasons, ok = [], []
    for name, r in step["variants"].items():
        e = e2e["results"][f"{name}-{tag}"]
        worst = min(r["sqnr_db"].values())
        psnr = e["psnr_vs_baseline_db"]
        if worst < min_sqnr:
            reasons.append(f"{name}: step SQNR {worst:.1f} dB < {min_sqnr:.0f} dB")
        elif psnr is not None and psnr < min_psnr:
            reasons.append(f"{name}: frame PSNR {psnr:.1f} dB < {min_psnr:.0f} dB")
        else:
            ok.append((e["seconds"]["p50"], name))
    return (min(ok)[1] if ok else None), reasons


def markdown(record: dict) -> str:
    step, e2e = record["step"], record["end_to_end"]
    m = record["machine"]
    lines = [
        f"Bundle `{record['bundle']['preset']}` ({record['bundle']['hash']}, weights: {record['bundle']['weights']}); "
        f"{m['cpu']}, {record['threads']} threads; OpenVINO {m['versions'].get('openvino')}, ONNX Runtime {m['versions'].get('onnxruntime')}.",
        "",
        f"`{step['graph']}`: {step['samples']} recorded inputs (t = {', '.join(f'{t:.0f}' for t in step['timesteps'])}); "
        f"{record['config']['rounds']} interleaved rounds x {record['config']['calls']} calls per variant.",
        "",
        "| variant | backend | precision | ms min | ms p50 | ms p90 | p50 vs fp32 same backend | p50 vs ORT fp32 | SQNR x_next dB | SQNR x0 dB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in step["variants"].items():
        p = r["precision"] + ("+" + r["options"]["inference_precision"] if r["options"].get("inference_precision") else "")
        lines.append(
            f"| {name} | {r['backend']} | {p} | {r['ms_min']:.1f} | {r['ms_p50']:.1f} | {r['ms_p90']:.1f} | {r['speedup_vs_backend_fp32']:.2f}x | "
            f"{r['speedup_vs_ort_fp32']:.2f}x | {r['sqnr_db']['x_next']:.1f} | {r['sqnr_db']['x0']:.1f} |"
        )
    cfg = e2e["config"]
    lines += [
        "",
        f"End to end: {cfg['audio_seconds']:.1f} s of the example speech, at the bundle's sampler defaults ({record['end_to_end']['sampler']}); "
        f"{cfg['warmup']} warm-up + {cfg['repeat']} interleaved runs per variant; PSNR against ort-fp32 frames.",
        "",
        "| variant | s p50 | s p90 | frames/s | real-time factor | step ms p50 | PSNR dB |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in e2e["results"].items():
        st = r["stages"].get("denoise_step_cond") or r["stages"].get("denoise_step", {})
        psnr = r["psnr_vs_baseline_db"]
        lines.append(
            f"| {name} | {r['seconds']['p50']:.2f} | {r['seconds']['p90']:.2f} | {r['fps']:.1f} | {r['real_time_factor']:.2f} | "
            f"{st.get('p50', float('nan')) * 1e3:.1f} | {'identical' if psnr == float('inf') else f'{psnr:.1f}'} |"
        )
    lines += [
        "",
        f"Choice (fastest end to end with step SQNR >= {record['config']['min_sqnr']:.0f} dB on every output and "
        f"frame PSNR >= {record['config']['min_psnr']:.0f} dB against fp32): **{record['choice'] or 'none'}**.",
    ]
    lines += [f"- not chosen: {r}" for r in record["not_chosen"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", help="export (once, cached in OUT) this preset's bundle: demo, tiny")
    src.add_argument("--bundle", help="an existing bundle (fp16/int8 graphs are added in place where missing)")
    ap.add_argument("--calib", help="calibration folder (default: OUT/calib, recorded where missing)")
    ap.add_argument("--calib-samples", type=int, default=64, help="step calls to record when calibrating (default 64)")
    ap.add_argument(
        "--no-sensitivity",
        action="store_true",
        help="int8 with the float rules only (no per-layer sweep: hours on demo on 2 cores); fails if below 30 dB",
    )
    ap.add_argument("--samples", type=int, default=8, help="recorded step inputs the SQNR is measured on (default 8)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=5, help="step calls per variant per round")
    ap.add_argument("--seconds", type=float, default=3.0, help="seconds of the example speech end to end")
    ap.add_argument("--repeat", type=int, default=3, help="end-to-end runs per variant")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--min-sqnr", type=float, default=policy.MIN_STEP_SQNR_DB)
    ap.add_argument("--min-psnr", type=float, default=policy.MIN_FRAME_PSNR_DB)
    ap.add_argument("-o", "--out", required=True)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bundle, calib = prepare(args, out)
    step = bench_steps(bundle, calib, args)
    e2e = bench_end_to_end(bundle, args)
    choice, not_chosen = choose(step, e2e, args.min_sqnr, args.min_psnr, sampler_tag(bundle))
    record = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(),
        "threads": args.threads,
        "bundle": {"path": str(bundle.path), "hash": bundle.hash, "preset": bundle.preset, "weights": bundle.weights.get("source")},
        "config": {k: getattr(args, k) for k in ("rounds", "calls", "samples", "seconds", "repeat", "min_sqnr", "min_psnr")},
        "step": step,
        "end_to_end": {k: e2e[k] for k in ("config", "results", "peak_gflops", "flops")} | {"sampler": sampler_tag(bundle)},
        "choice": choice,
        "not_chosen": not_chosen,
    }
    (out / "results.json").write_text(json.dumps(record, indent=1, default=float))
    (out / "results.md").write_text(markdown(record))
    print(markdown(record))


if __name__ == "__main__":
    main()
