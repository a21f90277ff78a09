"""`emote tune BUNDLE`: the default backend, precision and threads/streams of this machine, measured.

1. candidates: every CPU backend installed, at every precision it can run of the bundle here
   (``precision.runnable``; OpenVINO bf16/fp16 where its CPU computes them, its int8 only where it is
   exact: ``engines.openvino.int8_exact``), each with all usable cores as threads and, on more than one
   core, with half of them; or the ones named (``ort-fp32-t2``, ``ov-bf16-t2-s1``: backend, precision,
   threads, OpenVINO streams). The fp32 reference, ONNX Runtime fp32 on all cores, always runs: the
   others' fidelity is measured against it, and it competes too;
2. fidelity: the step graphs' inputs recorded from a run of the reference on the example portrait and
   speech, every candidate's step graphs run on them, SQNR of every output against the reference's;
3. speed: `emote bench`'s loop (``bench.run.benchmark``: same inputs, warm-up excluded, interleaved
   rounds in rotated order) with the bundle's own sampler defaults; frames' PSNR against the reference;
4. the winner: the lowest median time among the candidates that keep both bars of ``emote.precision``
   (step SQNR, frame PSNR), stored with the run's figures by ``engines.tuned`` under this machine's key.

Imports no torch and no onnx: a tune costs what its runs cost.
"""

from __future__ import annotations

import math
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .. import precision as policy
from ..bundle import SAMPLE_RATE, Bundle
from ..engines import open_backend
from ..engines.fidelity import sqnr_db
from ..engines.probe import has_module
from ..engines.tuned import Tuned, TuneKey, candidates_paths, tune_key, write_tuned
from ..errors import EmoteError
from .variants import VariantSpec

TAGS = {"ort": "onnxruntime", "ov": "openvino"}
BACKEND_TAGS = {b: t for t, b in TAGS.items()}
NAME = re.compile(r"^(ort|ov)-([a-z0-9]+)-t(\d+)(?:-s(\d+))?$")
GRAMMAR = "BACKEND-PRECISION-tTHREADS[-sSTREAMS]: backend ort or ov, streams for ov only, e.g. ort-fp32-t2, ov-fp32-t2-s1"
STEP_GRAPHS = ("denoise_step", "denoise_step_cond")
FIDELITY_SAMPLES = 8  # recorded step calls per step graph the SQNR is measured on, spread over the run


@dataclass(frozen=True)
class Candidate:
    backend: str
    precision: str
    threads: int
    streams: int | None = None  # OpenVINO only; None: its default (1)

    @property
    def name(self) -> str:
        s = f"-s{self.streams}" if self.streams is not None else ""
        return f"{BACKEND_TAGS[self.backend]}-{self.precision}-t{self.threads}{s}"

    @property
    def options(self) -> dict[str, int]:
        return {"threads": self.threads} | ({"streams": self.streams} if self.streams is not None else {})

    def spec(self, bundle: Bundle) -> VariantSpec:
        d = bundle.sampler
        return VariantSpec(
            self.name, "runtime", d.family, d.steps, d.guidance_steps, self.backend, self.precision, backend_options=self.options
        )


def native_precisions(backend: str) -> list[str] | None:
    """What ``backend``'s CPU device computes natively (OpenVINO's report); None for ONNX Runtime (graphs only)."""
    if backend != "openvino":
        return None
    from ..runtime.backend_choice import openvino_native

    return openvino_native()


def why_not(bundle: Bundle, c: Candidate, cores: int) -> str | None:
    """Why candidate ``c`` cannot run here; None when it can."""
    if not has_module(c.backend):
        return f"{c.backend} is not installed"
    if c.precision not in policy.PRECISIONS:
        return f"unknown precision {c.precision!r} (one of {', '.join(policy.PRECISIONS)})"
    if c.precision not in policy.RUNS[c.backend]:
        return f"{c.backend} cannot run {c.precision}"
    runs = policy.runnable(bundle, c.backend, native_precisions(c.backend))
    if c.precision not in runs:
        return f"{c.backend} runs {', '.join(runs)} of {bundle.describe()} on this CPU"
    if c.backend == "openvino" and c.precision == "int8":
        from ..engines.openvino import int8_exact
        from ..engines.probe import cpu_flags

        if not int8_exact(cpu_flags()):
            return "OpenVINO's int8 is inexact on a CPU without VNNI"
    if not 1 <= c.threads <= cores:
        return f"{c.threads} threads: this machine has {cores} usable cores"
    if c.streams is not None and (c.backend != "openvino" or c.streams < 1):
        return "streams are OpenVINO's (ov-...-sN, N >= 1)"
    return None


def parse(name: str) -> Candidate:
    m = NAME.match(name)
    if m is None:
        raise EmoteError(f"unknown candidate {name!r}: name it {GRAMMAR}")
    tag, precision, threads, streams = m.groups()
    if streams is not None and tag != "ov":
        raise EmoteError(f"candidate {name!r}: streams are OpenVINO's (ov-...-sN)")
    return Candidate(TAGS[tag], precision, int(threads), None if streams is None else int(streams))


def default_candidates(bundle: Bundle, cores: int) -> list[Candidate]:
    """Every backend and precision that can run here, at all cores and (more than one core) at half of them."""
    threads = [cores] + ([cores // 2] if cores > 1 else [])
    out = []
    for backend in ("onnxruntime", "openvino"):
        for precision in policy.RUNS[backend]:
            for t in threads:
                c = Candidate(backend, precision, t)
                if why_not(bundle, c, cores) is None:
                    out.append(c)
    return out


def candidates_for(bundle: Bundle, names: list[str] | None, cores: int) -> list[Candidate]:
    """The reference first, then the named candidates (checked: one error naming the first that cannot run)."""
    reference = Candidate("onnxruntime", "fp32", cores)
    if not names:
        chosen = default_candidates(bundle, cores)
    else:
        chosen = [parse(n) for n in names]
        for c in chosen:
            reason = why_not(bundle, c, cores)
            if reason is not None:
                raise EmoteError(f"candidate {c.name} cannot run here: {reason}")
    return [reference] + [c for c in dict.fromkeys(chosen) if c != reference]


class StepRunner:
    """A candidate's step graphs bound once to host buffers of their own, run on recorded inputs."""

    def __init__(self, bundle: Bundle, c: Candidate):
        self.backend = open_backend(c.backend, c.precision, **c.options)
        self.calls = {}
        for name in STEP_GRAPHS:
            graph = self.backend.load(policy.graph_for(bundle, name, c.backend, c.precision))
            ins = {n: np.zeros(shape, dtype) for n, (shape, dtype) in graph.inputs.items()}
            outs = {n: np.zeros(shape, dtype) for n, (shape, dtype) in graph.outputs.items()}
            self.calls[name] = (graph.bind(ins, outs), ins, outs)

    def outputs(self, name: str, feeds: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """Every output of graph ``name`` over ``feeds``, stacked."""
        call, ins, outs = self.calls[name]
        got: dict[str, list[np.ndarray]] = {n: [] for n in outs}
        for feed in feeds:
            for n, buf in ins.items():
                np.copyto(buf, feed[n], casting="same_kind")
            call()
            for n, o in outs.items():
                got[n].append(o.astype(np.float32))
        return {n: np.stack(v) for n, v in got.items()}

    def close(self) -> None:
        self.backend.close()


def record_step_inputs(bundle: Bundle, reference: Candidate, portrait, audio: np.ndarray, seed: int) -> dict[str, list[dict]]:
    """The step graphs' inputs of one reference run (the bundle's sampler defaults), FIDELITY_SAMPLES per graph."""
    from ..runtime.pipeline import Pipeline

    seen: dict[str, list[dict]] = {name: [] for name in STEP_GRAPHS}

    def observe(graph: str, inputs: dict) -> None:
        if graph in seen:
            seen[graph].append({k: np.array(v, copy=True) for k, v in inputs.items()})

    with Pipeline(
        bundle,
        backend=reference.backend,
        precision=reference.precision,
        backend_options=reference.options,
        observe=observe,
        unmarked_research=True,
    ) as pipe:
        for _ in pipe.stream(portrait, audio, seed=seed):
            pass
    out = {}
    for name, feeds in seen.items():
        idx = np.unique(np.linspace(0, len(feeds) - 1, min(FIDELITY_SAMPLES, len(feeds))).round().astype(int)) if feeds else []
        out[name] = [feeds[i] for i in idx]
    return out


def step_fidelity(bundle: Bundle, candidates: list[Candidate], feeds: dict[str, list[dict]], progress) -> dict[str, dict[str, float]]:
    """Per candidate: SQNR (dB) of every step-graph output ('denoise_step.x0', ...) against the first (the reference)."""
    ref_out: dict[str, dict[str, np.ndarray]] = {}
    out = {}
    for i, c in enumerate(candidates):
        progress(f"step fidelity {i + 1}/{len(candidates)}: {c.name}")
        runner = StepRunner(bundle, c)
        try:
            got = {name: runner.outputs(name, f) for name, f in feeds.items() if f}
        finally:
            runner.close()
        if i == 0:
            ref_out = got
        out[c.name] = {f"{g}.{o}": sqnr_db(ref_out[g][o], got[g][o]) for g in got for o in got[g]}
    return out


@dataclass(frozen=True)
class TuneResult:
    tuned: Tuned
    path: Path  # where the choice was stored
    user_cache: bool  # the bundle folder was read-only: stored in the user's cache instead
    record: dict  # every candidate's figures; what `emote tune --json` prints

    def table(self) -> str:
        """The candidates as Markdown: time, frames/s, first frame, fidelity, chosen or why not."""
        r = self.record
        lines = [
            f"`emote tune` of {r['bundle']['path']} ({r['bundle']['preset']}, {r['bundle']['hash']}) on {r['machine']['cpu_class']}, "
            f"{r['machine']['cores']} cores; {r['config']['audio_seconds']:.2f} s of the example speech, {r['config']['warmup']} warm-up + "
            f"{r['config']['repeat']} interleaved runs each; bars: step SQNR >= {r['config']['min_step_sqnr_db']:.0f} dB, "
            f"frame PSNR >= {r['config']['min_frame_psnr_db']:.0f} dB against {r['reference']}; {r['seconds']:.1f} s in all.",
            "",
            "| candidate | p50 s | frames/s | RTF | first frame s | step SQNR dB (worst) | frame PSNR dB | |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for name, c in r["candidates"].items():
            verdict = "**chosen**" if name == r["winner"] else (c["rejected"] or "slower")
            lines.append(
                f"| {name} | {c['p50_s']:.3f} | {c['fps']:.1f} | {c['real_time_factor']:.2f} | {c['first_frame_s']:.3f} | "
                f"{_db(c['step_sqnr_db'])} | {_db(c['frame_psnr_db'])} | {verdict} |"
            )
        return "\n".join(lines)


def _db(x: float | None) -> str:
    return "n/a" if x is None else ("identical" if x == math.inf else f"{x:.1f}")


def tune(
    bundle_path: str | Path,
    names: list[str] | None = None,
    *,
    seconds: float = 1.5,
    repeat: int = 3,
    warmup: int = 1,
    seed: int = 0,
    key: TuneKey | None = None,
    progress=print,
) -> TuneResult:
    """Measure the candidates on this machine, choose, store; see the module docstring.

    key: the key to store the choice under (default: this machine's, ``tune_key(bundle.hash)``).
    """
    from ..runtime.examples import example_inputs
    from .run import benchmark, machine

    start = time.perf_counter()
    bundle = Bundle.open(bundle_path)
    if seconds <= 0 or repeat < 1 or warmup < 0:
        raise EmoteError(f"--seconds {seconds} / --repeat {repeat} / --warmup {warmup}: give positive numbers (warm-up may be 0)")
    cores = len(os.sched_getaffinity(0))
    candidates = candidates_for(bundle, names, cores)
    portrait, audio = example_inputs(bundle.geometry.resolution)
    audio = audio[: int(seconds * SAMPLE_RATE)]
    progress(f"tuning {bundle.describe()}: {len(candidates)} candidates ({', '.join(c.name for c in candidates)})")
    progress("recording the step graphs' inputs from the fp32 reference")
    feeds = record_step_inputs(bundle, candidates[0], portrait, audio, seed)
    fidelity = step_fidelity(bundle, candidates, feeds, progress)
    record = benchmark(
        bundle.path,
        [c.spec(bundle) for c in candidates],
        portrait,
        audio,
        repeat=repeat,
        warmup=warmup,
        seed=seed,
        threads=cores,
        progress=progress,
        extras=False,
    )
    rows, passing = {}, []
    for c in candidates:
        r = record["results"][c.name]
        worst = min(fidelity[c.name].values()) if fidelity[c.name] else None
        psnr = r["psnr_vs_baseline_db"]
        rejected = None
        if worst is not None and worst < policy.MIN_STEP_SQNR_DB:
            rejected = f"step SQNR {worst:.1f} dB < {policy.MIN_STEP_SQNR_DB:.0f} dB"
        elif psnr is not None and psnr < policy.MIN_FRAME_PSNR_DB:
            rejected = f"frame PSNR {psnr:.1f} dB < {policy.MIN_FRAME_PSNR_DB:.0f} dB"
        else:
            passing.append((r["seconds"]["p50"], c.name))
        rows[c.name] = {
            "backend": c.backend,
            "precision": c.precision,
            "options": c.options,
            "p50_s": r["seconds"]["p50"],
            "p90_s": r["seconds"]["p90"],
            "fps": r["fps"],
            "real_time_factor": r["real_time_factor"],
            "first_frame_s": r["first_frame"]["p50"],
            "step_sqnr_db": worst,
            "step_sqnr_per_output_db": fidelity[c.name],
            "frame_psnr_db": psnr,
            "rejected": rejected,
            "runs_s": [s["seconds"] for s in record["samples"][c.name]],
        }
    winner = min(passing)[1]  # the reference keeps both bars against itself: never empty
    best = next(c for c in candidates if c.name == winner)
    key = key or tune_key(bundle.hash)
    measured = {
        "bundle": {"path": str(bundle.path), "preset": bundle.preset, "hash": bundle.hash},
        "machine": machine(),
        "key": asdict(key),
        "reference": candidates[0].name,
        "winner": winner,
        "config": {
            "audio_seconds": len(audio) / SAMPLE_RATE,
            "repeat": repeat,
            "warmup": warmup,
            "seed": seed,
            "sampler": {"family": bundle.sampler.family, "steps": bundle.sampler.steps, "guidance_steps": bundle.sampler.guidance_steps},
            "min_step_sqnr_db": policy.MIN_STEP_SQNR_DB,
            "min_frame_psnr_db": policy.MIN_FRAME_PSNR_DB,
            "step_samples": {g: len(f) for g, f in feeds.items()},
        },
        "candidates": rows,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    measured["seconds"] = time.perf_counter() - start
    tuned = Tuned(key, best.backend, best.precision, best.options, winner, measured)
    path = write_tuned(bundle.path, tuned)
    beside = candidates_paths(bundle.path, key)[0]
    return TuneResult(tuned, path, path != beside, {**measured, "stored": str(path)})
