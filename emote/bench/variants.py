"""The runs a benchmark compares: the PyTorch reference pipeline and the runtime's settings.

A variant is prepared once (sessions created, model loaded) and then run many
times on the same inputs; each run returns its frames, the time to the first
clip, and (for the runtime) per-stage call times. Nothing is read from disk or
written inside a run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .. import precision as policy
from ..errors import EmoteError


@dataclass(frozen=True)
class VariantSpec:
    name: str
    kind: str  # "reference" or "runtime"
    sampler: str = "ddim"
    steps: int = 40
    guidance_steps: int | None = None  # None: guide every step
    backend: str = "onnxruntime"
    precision: str = "fp32"
    backend_options: dict[str, Any] = field(default_factory=dict)
    guidance_scale: float | None = None  # None: the bundle's default
    bundle: str | None = None  # another bundle than the one benchmarked (bench --compare); None: that one
    schedule: str | None = None  # "clips" or "windows" (EchoMimic's context windows); None: the bundle's default

    def describe(self) -> str:
        g = "every step" if self.guidance_steps is None else f"first {self.guidance_steps} step(s)"
        guided = "unguided" if self.guidance_scale == 1.0 else f"guidance on {g}"
        how = f", {self.schedule}" if self.schedule else ""
        if self.kind == "reference":
            return f"PyTorch eager, {self.sampler} {self.steps}, {guided}{how}, fp32"
        return f"{self.backend} {self.precision}, {self.sampler} {self.steps}, {guided}{how}" + (f" ({self.bundle})" if self.bundle else "")


SHORT = {"onnxruntime": "ort", "openvino": "ov", "tensorrt": "trt", "dpmpp_2m": "dpm"}


def sampler_tag(bundle) -> str:
    """The bundle's sampler defaults as variant names spell them: dpm4-g1 (guided on step 1), ddim1."""
    d = bundle.sampler
    tag = f"{SHORT.get(d.family, d.family)}{d.steps}"
    return tag + (f"-g{d.guidance_steps}" if d.guidance_scale != 1.0 and d.guidance_steps is not None else "")


def defaults_variant(bundle, backend: str = "onnxruntime", precision: str = "fp32", *, other: bool = False) -> VariantSpec:
    """The bundle's own sampler defaults on ``backend`` at ``precision``, named as the other variants are
    (``ov-fp32-dpm4-g1``, ``ort-fp32-ddim1``); ``other``: a compared bundle's, named ``<preset>:<name>``."""
    d = bundle.sampler
    name = f"{SHORT[backend]}-{precision}-{sampler_tag(bundle)}"
    return VariantSpec(
        f"{bundle.preset}:{name}" if other else name,
        "runtime",
        d.family,
        d.steps,
        d.guidance_steps,
        backend=backend,
        precision=precision,
        guidance_scale=float(d.guidance_scale),
        bundle=str(bundle.path) if other else None,
    )


def compare_variants(other) -> list[VariantSpec]:
    """Another bundle (a teacher, the weights a release replaces) at its own defaults, fp32, on each CPU backend here."""
    from ..engines.probe import has_module

    backends = ["onnxruntime"] + (["openvino"] if has_module("openvino") else [])
    return [defaults_variant(other, b, other=True) for b in backends]


def default_variants(bundle, quick: bool = False) -> list[VariantSpec]:
    """Baseline + the runtime settings of issue #5, and low-precision ones where the bundle has them."""
    out = [
        VariantSpec("reference-ddim40", "reference"),
        VariantSpec("ort-fp32-ddim40", "runtime"),
        VariantSpec("ort-fp32-dpm8", "runtime", "dpmpp_2m", 8),
        VariantSpec("ort-fp32-dpm4", "runtime", "dpmpp_2m", 4),
        VariantSpec("ort-fp32-dpm4-g1", "runtime", "dpmpp_2m", 4, guidance_steps=1),
    ]
    if bundle.geometry.context_overlap:
        # EchoMimic: its released schedules (30 steps guided; the acc weights' 6 unguided), each in both window modes
        out.append(VariantSpec("reference-ddim30", "reference", "ddim", 30, schedule="windows"))
        for how in ("windows", "clips"):
            out.append(VariantSpec(f"ort-fp32-ddim30-{how}", "runtime", "ddim", 30, schedule=how))
            out.append(VariantSpec(f"ort-fp32-ddim6-unguided-{how}", "runtime", "ddim", 6, guidance_scale=1.0, schedule=how))
    own = defaults_variant(bundle)  # the bundle's own defaults, where they are none of these (a distilled student's)
    if own.name not in {s.name for s in out}:
        out.append(own)
    for prec in policy.runnable(bundle, "onnxruntime"):
        if prec != "fp32":
            out.append(VariantSpec(f"ort-{prec}-dpm4-g1", "runtime", "dpmpp_2m", 4, 1, precision=prec))
    from ..engines.probe import has_module

    if has_module("openvino") and not quick:
        for prec in openvino_precisions(bundle):
            # int8 is measured even on CPUs without VNNI, where the runtime refuses it: the PSNR shows why
            opts = {"allow_inexact_int8": True} if prec == "int8" else {}
            out.append(
                VariantSpec(f"ov-{prec}-dpm4-g1", "runtime", "dpmpp_2m", 4, 1, backend="openvino", precision=prec, backend_options=opts)
            )
            own = replace(defaults_variant(bundle, "openvino", prec), backend_options=opts)
            if own.name not in {s.name for s in out}:
                out.append(own)
    return out


def openvino_precisions(bundle, device: str = "CPU") -> list[str]:
    """What OpenVINO can run of this bundle on ``device``: the bundle's graphs (fp32, int8 where it has
    Q/DQ step graphs), and bf16/fp16 where the device computes them."""
    from ..runtime.backend_choice import openvino_native

    return policy.runnable(bundle, "openvino", openvino_native(device))


def gpu_variants(bundle) -> list[VariantSpec]:
    """TensorRT at the best precision the bundle has (and fp32), each with and without the CUDA graph."""
    from ..engines.trt_build import import_tensorrt

    import_tensorrt()  # one clear line now, rather than after the CPU variants ran
    have = policy.runnable(bundle, "tensorrt")
    out = []
    for p in [p for p in ("int8", "fp16") if p in have][:1] + ["fp32"]:
        out.append(VariantSpec(f"trt-{p}-dpm4-g1", "runtime", "dpmpp_2m", 4, 1, backend="tensorrt", precision=p))
        out.append(
            VariantSpec(
                f"trt-{p}-dpm4-g1-nograph",
                "runtime",
                "dpmpp_2m",
                4,
                1,
                backend="tensorrt",
                precision=p,
                backend_options={"cuda_graph": False},
            )
        )
    return out


def select(
    specs: list[VariantSpec],
    *,
    backend: str | None = None,
    precision: str | None = None,
    device: str | None = None,
    names: list[str] | None = None,
) -> list[VariantSpec]:
    """The variants of ``backend`` at ``precision`` (and the baseline), on OpenVINO ``device``; ``names`` in that order."""
    if device and backend != "openvino":
        raise EmoteError("--device is for --backend openvino")
    keep = specs
    if backend or precision:
        keep = [
            s
            for s in specs
            if s.kind == "reference" or ((not backend or s.backend == backend) and (not precision or s.precision == precision))
        ]
        if not any(s.kind == "runtime" for s in keep):
            have = ", ".join(f"{s.backend} {s.precision}" for s in specs if s.kind == "runtime")
            raise EmoteError(
                f"no variant runs {backend or 'any backend'} at {precision or 'any precision'} with this bundle (it has: {have})"
            )
    if device:
        keep = [replace(s, backend_options={**s.backend_options, "device": device}) if s.backend == "openvino" else s for s in keep]
    if names:
        known = {s.name: s for s in keep}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise EmoteError(f"unknown variant(s) {', '.join(unknown)}: choose from {', '.join(known)}")
        keep = [known[n] for n in names]
    return keep


@dataclass
class RunResult:
    seconds: float
    first_frame: float
    frames: np.ndarray
    stages: dict[str, list[float]]


class Variant:
    """A prepared variant: ``run()`` generates the video once and times it."""

    def __init__(self, spec: VariantSpec, bundle, model_factory, guidance_scale: float, threads: int):
        self.spec = spec
        self.threads = threads
        # the reference runs the schedule the runtime runs by default: EchoMimic's windows where the bundle has them
        self.schedule = spec.schedule or ("windows" if bundle.geometry.context_overlap else "clips")
        if spec.guidance_scale is not None:
            guidance_scale = spec.guidance_scale
        if spec.kind == "reference":
            import torch

            from ..models.pipeline import ReferencePipeline, SamplerSpec

            torch.set_num_threads(threads)
            d = bundle.sampler
            sampler = SamplerSpec(
                spec.sampler, spec.steps, guidance_scale, spec.guidance_steps, d.prediction_type, d.spacing, d.zero_snr,
                d.beta_schedule, d.set_alpha_to_one,
            )  # fmt: skip
            self.pipe = ReferencePipeline(model_factory(), sampler)
        else:
            from ..runtime.pipeline import Pipeline

            options = dict(spec.backend_options)
            options.setdefault("threads", threads)
            self.pipe = Pipeline(
                bundle,
                backend=spec.backend,
                precision=spec.precision,
                sampler=spec.sampler,
                steps=spec.steps,
                guidance_scale=guidance_scale,
                guidance_steps=spec.guidance_steps,
                backend_options=options,
                unmarked_research=True,  # fidelity against the unmarked PyTorch baseline; the mark's cost: bench/watermark.py
            )

    def run(self, portrait, audio: np.ndarray, seed: int) -> RunResult:
        if self.spec.kind == "reference":
            t0 = time.perf_counter()
            frames = self.pipe(portrait.image, portrait.mask, audio, seed=seed, schedule=self.schedule)
            seconds = time.perf_counter() - t0
            # the reference returns the whole video at the end: its first frame comes with the last
            return RunResult(seconds, seconds, frames, {})
        self.pipe.timings.calls.clear()
        clips = []
        t0 = time.perf_counter()
        first = None
        for clip in self.pipe.stream(portrait, audio, seed=seed, schedule=self.spec.schedule):
            if first is None:
                first = time.perf_counter() - t0
            clips.append(clip)
        seconds = time.perf_counter() - t0
        stages = {k: list(v) for k, v in self.pipe.timings.calls.items()}
        return RunResult(seconds, first, np.concatenate(clips), stages)

    def loop_state(self) -> str | None:
        """How the denoising loop ran ('cuda graph', 'uncaptured: <why>', 'host loop'); None for the reference."""
        from ..engines.steploop import loop_state

        return loop_state(self.pipe.loop) if self.spec.kind == "runtime" else None

    def close(self) -> None:
        if self.spec.kind == "runtime":
            self.pipe.close()
