"""The benchmark loop: every variant on the same inputs, interleaved, with honest clocks.

- monotonic clocks (``time.perf_counter``); each stage's clock is read after the
  backend has synchronised (GPU events on device backends);
- warm-up runs excluded; then ``repeat`` rounds, each running every variant once
  in a rotated order, so that machine noise (a shared 2-core box) hits all alike;
- inputs are loaded and prepared before any clock starts; frames stay in memory;
- peak RSS per variant sampled by a thread while it runs; threads recorded;
- fidelity: frame PSNR of every variant against the reference pipeline's frames
  on the same inputs and seed; with a trained model (weights not random) and the mouth
  estimator present, lip sync and identity of every variant's video (``emote.bench.lipsync``).
"""

from __future__ import annotations

import json
import os
import platform
import threading
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..bundle import SAMPLE_RATE, Bundle
from ..engines.fidelity import psnr_db
from .variants import Variant, VariantSpec

STAGES = (
    "reference_net",
    "audio_features",  # Hallo's whole-track wav2vec2 (a file: once; live: per clip)
    "audio_segment",  # EchoMimic's 30 s whisper segments (a file under the window schedule)
    "audio_encoder",
    "vae_encoder",
    "clip_condition",
    "denoise_step",
    "denoise_step_cond",
    "denoise_loop",
    "vae_decoder",
)  # denoise_loop: a clip's K steps together (one replay of a captured loop)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Samples this process's resident memory every 5 ms while in the ``with`` block."""

    def __enter__(self) -> PeakRSS:
        self.peak, self._stop = rss_bytes(), threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def percentiles(xs: list[float]) -> dict[str, float]:
    a = np.asarray(xs, np.float64)
    if a.size == 0:
        return {}
    return {"p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)), "p99": float(np.percentile(a, 99)), "n": int(a.size)}


def machine() -> dict:
    from ..engines.probe import cpu_class
    from ..engines.probe import module_version as version

    cpu = cpu_class()
    return {
        "cpu": cpu.model,
        "cpu_class": cpu.label,
        "cores": len(os.sched_getaffinity(0)),
        "cpu_flags": list(cpu.flags),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {m: version(m) for m in ("numpy", "onnxruntime", "torch", "openvino", "tensorrt")},
    }


def benchmark(
    bundle_path: str | Path,
    specs: list[VariantSpec],
    portrait,
    audio: np.ndarray,
    *,
    repeat: int = 3,
    warmup: int = 1,
    seed: int = 0,
    threads: int | None = None,
    model_factory=None,
    progress=print,
    extras: bool = True,
) -> dict:
    """Run every variant ``warmup`` + ``repeat`` times, interleaved; return the full record.

    extras: also count FLOPs, measure the GEMM peaks and score lip sync (``emote tune``, which
    needs only times and frames, turns them off: they cost seconds and import onnx).
    """
    bundle = Bundle.open(bundle_path)
    threads = threads or len(os.sched_getaffinity(0))
    guidance = float(bundle.sampler.guidance_scale)
    if model_factory is None and any(s.kind == "reference" for s in specs):
        from ..models.checkpoint import model_for_bundle

        def model_factory():
            return model_for_bundle(bundle)

    bundles = {None: bundle} | {s.bundle: Bundle.open(s.bundle) for s in specs if s.bundle}  # bench --compare's
    if extras:
        from .flops import count_flops

        flops_of = {k: {key: count_flops(g.path) for key, g in b.graphs.items()} for k, b in bundles.items()}
    else:
        flops_of = {k: {} for k in bundles}
    progress(f"preparing {len(specs)} variants")
    variants = [Variant(s, bundles[s.bundle], model_factory, guidance, threads) for s in specs]
    if extras:
        from .peak import measure_peaks

        peaks = measure_peaks(specs, threads)
    else:
        peaks = {}

    samples = {s.name: [] for s in specs}
    frames = {}
    for w in range(warmup):
        for v in variants:
            progress(f"warm-up {w + 1}/{warmup}: {v.spec.name}")
            r = v.run(portrait, audio, seed)
            frames.setdefault(v.spec.name, r.frames)
    for i in range(repeat):
        order = variants[i % len(variants) :] + variants[: i % len(variants)]  # rotate: no variant always first
        for v in order:
            with PeakRSS() as mem:
                r = v.run(portrait, audio, seed)
            frames.setdefault(v.spec.name, r.frames)
            samples[v.spec.name].append(
                {"seconds": r.seconds, "first_frame": r.first_frame, "peak_rss": mem.peak, "stages": r.stages, "round": i}
            )
            progress(f"round {i + 1}/{repeat}: {v.spec.name} {r.seconds:.2f} s")
    loops = {v.spec.name: v.loop_state() for v in variants}  # after the runs: a capture refused on the first clip shows
    for v in variants:
        v.close()

    audio_seconds = len(audio) / SAMPLE_RATE
    base = next((s.name for s in specs if s.kind == "reference"), specs[0].name)
    sync = lip_sync(bundle, frames, audio, portrait) if extras else {}
    results = {}
    for s in specs:
        runs = samples[s.name]
        secs = [r["seconds"] for r in runs]
        n_frames = len(frames[s.name])
        stages, flops = {}, flops_of[s.bundle]
        for stage in STAGES:
            calls = [t for r in runs for t in r["stages"].get(stage, [])]
            if not calls:
                continue
            st = percentiles(calls)
            graph = stage if stage in flops else None
            if graph:  # counted (extras): its FLOP/s and share of the peak
                from .peak import peak_key

                st["gflop"] = flops[graph] / 1e9
                st["gflops_per_s"] = flops[graph] / st["p50"] / 1e9
                if peak_key(s) in peaks:  # the GEMM peak at the variant's own precision
                    st["fraction_of_peak"] = st["gflops_per_s"] / peaks[peak_key(s)]
            stages[stage] = st
        p50 = float(np.median(secs))
        results[s.name] = {
            "spec": asdict(s),
            "description": s.describe(),
            "seconds": percentiles(secs),
            "first_frame": percentiles([r["first_frame"] for r in runs]),
            "frames": n_frames,
            "fps": n_frames / p50,
            "real_time_factor": p50 / audio_seconds,
            "peak_rss_mb": max(r["peak_rss"] for r in runs) / 2**20,
            "psnr_vs_baseline_db": psnr_db(frames[base], frames[s.name]) if frames[base].shape == frames[s.name].shape else None,
            "lipsync": sync.get(s.name),
            "stages": stages,
            "denoise_loop": loops.get(s.name),
        }
    for r in results.values():
        r["speedup_vs_baseline"] = results[base]["seconds"]["p50"] / r["seconds"]["p50"]
    return {
        "machine": machine(),
        "threads": threads,
        "bundle": {"path": str(bundle.path), "hash": bundle.hash, "preset": bundle.preset, "weights": dict(bundle.weights)},
        "config": {"repeat": repeat, "warmup": warmup, "seed": seed, "audio_seconds": audio_seconds, "guidance_scale": guidance},
        "compared": {k: {"preset": b.preset, "hash": b.hash, "weights": dict(b.weights)} for k, b in bundles.items() if k},
        "flops": {"per_graph": flops_of[None], "counted": "MatMul, Gemm, Conv only (2*M*N*K); elementwise, norms and softmax not counted"},
        "peak_gflops": peaks,
        "baseline": base,
        "results": results,
        "samples": samples,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def lip_sync(bundle: Bundle, frames: dict[str, np.ndarray], audio: np.ndarray, portrait) -> dict[str, dict]:
    """Lip-sync correlation and identity per variant: for trained weights only (random ones have no lip sync to score)."""
    from .lipsync import MODEL, MouthEstimator, score

    if bundle.weights.get("source") in (None, "random", "unknown") or not MODEL.is_file():
        return {}
    estimator = MouthEstimator()
    fps = bundle.geometry.fps
    out = {}
    for name, f in frames.items():
        s = score(f, audio, portrait.image, portrait.mask, estimator, fps=fps)
        out[name] = {"correlation": s.correlation, "identity": s.identity}
    return out


def write_json(record: dict, path: Path) -> None:
    path.write_text(json.dumps(record, indent=1, default=float))
