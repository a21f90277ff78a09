"""Cold and warm first frames, each in a fresh process: what a user waits for on a first and on a second run.

cold: a fresh process whose compiled-model cache is empty; warm: a fresh process with the cache that a
cold one filled; never the same process (one that has run once holds warm kernels, pages and allocators
a second start does not). Each child process opens the pipeline (``open_s``: reading the graphs and
compiling them, or loading them from the cache), then streams the example speech until the first clip
is out (``first_frame_s``, as `emote generate` counts it); ``process_s`` runs from the spawn of the
process to that clip (Python's start and the imports included). The cache is a folder of its own
per pair (OpenVINO's ``cache_dir``, ONNX Runtime's ``cache_dir``), so the bundle's own caches are
neither read nor written.

    python -m emote.bench.first_frame '<VariantSpec as JSON>' BUNDLE SECONDS   (the child: one JSON line)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..errors import EmoteError
from .variants import VariantSpec

CACHED = ("onnxruntime", "openvino")  # the backends whose compiled models this measures cached


def child(spec: VariantSpec, bundle: str, seconds: float) -> dict:
    """In the fresh process: open the pipeline, stream until the first clip; the seconds of each."""
    from ..bundle import SAMPLE_RATE
    from ..runtime.examples import example_inputs
    from ..runtime.pipeline import Pipeline

    t0 = time.perf_counter()
    pipe = Pipeline(
        bundle,
        backend=spec.backend,
        precision=spec.precision,
        sampler=spec.sampler,
        steps=spec.steps,
        guidance_scale=spec.guidance_scale,
        guidance_steps=spec.guidance_steps,
        backend_options=spec.backend_options,
        unmarked_research=True,
    )
    opened = time.perf_counter()
    portrait, audio = example_inputs(pipe.resolution)
    t1 = time.perf_counter()
    with pipe:
        for _ in pipe.stream(portrait, audio[: int(seconds * SAMPLE_RATE)]):
            break
    done = time.perf_counter()
    return {"open_s": opened - t0, "first_frame_s": done - t1, "at": time.time()}


def spawn(spec: VariantSpec, bundle: str, seconds: float) -> dict:
    """One fresh process: its figures, and ``process_s`` from the spawn to the first clip."""
    import emote

    package_root = str(Path(emote.__file__).resolve().parents[1])  # the child runs this very emote
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (package_root, os.environ.get("PYTHONPATH"))))}
    start = time.time()
    out = subprocess.run(
        [sys.executable, "-m", "emote.bench.first_frame", json.dumps(asdict(spec)), bundle, str(seconds)],
        capture_output=True,
        text=True,
        env=env,
    )
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise EmoteError(f"the first-frame process of {spec.name} failed (exit {out.returncode}): {last}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["process_s"] = r.pop("at") - start
    return r


def cold_and_warm(specs: list[VariantSpec], bundle: str, *, repeat: int = 3, seconds: float = 1.0, progress=print) -> dict:
    """Per runtime variant on a CPU backend: the median cold and warm figures of ``repeat`` interleaved pairs."""
    runs = [s for s in specs if s.kind == "runtime" and s.backend in CACHED]
    samples: dict[str, dict[str, list[dict]]] = {s.name: {"cold": [], "warm": []} for s in runs}
    for i in range(repeat):
        for s in runs[i % len(runs) :] + runs[: i % len(runs)] if runs else []:
            with tempfile.TemporaryDirectory(prefix="emote-first-frame-") as cache:
                spec = VariantSpec(**{**asdict(s), "backend_options": {**s.backend_options, "cache_dir": cache}})
                for state in ("cold", "warm"):
                    r = spawn(spec, s.bundle or bundle, seconds)
                    samples[s.name][state].append(r)
                    progress(
                        f"first frame {i + 1}/{repeat}: {s.name} {state}: open {r['open_s']:.2f} s, first frame {r['first_frame_s']:.2f} s"
                    )
    out = {}
    for name, by_state in samples.items():
        out[name] = {
            state: {k: float(np.median([r[k] for r in rs])) for k in ("open_s", "first_frame_s", "process_s")} | {"n": len(rs)}
            for state, rs in by_state.items()
        }
    return out


if __name__ == "__main__":
    _spec, _bundle, _seconds = sys.argv[1:4]
    print(json.dumps(child(VariantSpec(**json.loads(_spec)), _bundle, float(_seconds))))
