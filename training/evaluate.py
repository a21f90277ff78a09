"""Evaluate a demo model on held-out people and speech: lip sync and identity, PyTorch reference and runtime.

    python -m training.evaluate --heldout build/data/heldout --samples 8 -o build/eval            # the shipped weights
    python -m training.evaluate --work build/train --stage video --heldout build/data/heldout -o build/eval

For each held-out sample (another seed than training: other people, voices and
sentences) the person is rendered once with a closed mouth as the portrait, and the
sample's audio drives: (1) the ``ReferencePipeline`` (PyTorch, DDIM 40, guidance on
every step: the published recipe), (2) the runtime with the bundle's default fast
settings. Each video is scored with ``emote.bench.lipsync.score``: Pearson
correlation of the mouth reader's opening with the audio-driven ground truth, and
identity similarity outside the mouth. Writes ``metrics.json`` and a few MP4s.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from emote.bench.lipsync import MouthEstimator, score
from emote.bundle import SAMPLE_RATE
from emote.runtime.face import Portrait, crop_portrait
from training.data import RENDER, Dataset
from training.portrait import face_box, render_portrait

MIN_SECONDS = 2.0  # shorter utterances say too little to correlate


def portrait_of(params, resolution: int) -> Portrait:
    """The person at rest (mouth closed, eyes open, facing the camera), cropped as the runtime crops."""
    full = render_portrait(params, RENDER, 0.0, 0.5, 1.0, 0.0, 0.0)
    box = face_box(params, RENDER)
    image, mask = crop_portrait(full, box, resolution)
    return Portrait(image, mask, box)


def pick_samples(data: Dataset, n: int) -> list[int]:
    long_enough = [i for i in range(len(data)) if data.index["audio_count"][i] >= MIN_SECONDS * SAMPLE_RATE]
    return long_enough[:n]


def evaluate(model, heldout: Dataset, samples: int, out: Path, reference: bool = True, seed: int = 0) -> dict:
    from emote.export.bundle import export_bundle
    from emote.models.pipeline import ReferencePipeline, SamplerSpec
    from emote.runtime import Pipeline
    from emote.runtime.video import VideoWriter
    from training.data import make_sample

    cfg = model.config
    out.mkdir(parents=True, exist_ok=True)
    reader = MouthEstimator()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        bundle = export_bundle(model, Path(tmp) / "bundle", weights={"source": "evaluation"}, progress=False)
        spec = SamplerSpec("ddim", 40, cfg.guidance_scale, None, cfg.prediction_type, cfg.timestep_spacing, cfg.zero_snr)
        ref_pipe = ReferencePipeline(model, spec) if reference else None
        with Pipeline(bundle) as pipe:
            for k, i in enumerate(pick_samples(heldout, samples)):
                person = make_sample(heldout.meta["seed"], i).params
                portrait = portrait_of(person, cfg.resolution)
                audio = heldout.sample_audio(i)
                row = {"sample": i, "seconds": round(len(audio) / SAMPLE_RATE, 2)}
                t0 = time.perf_counter()
                fast = pipe.generate(portrait, audio, seed=seed)
                row["runtime_seconds"] = round(time.perf_counter() - t0, 2)
                s = score(fast, audio, portrait.image, portrait.mask, reader)
                row["runtime"] = {"lipsync": round(s.correlation, 4), "identity": round(s.identity, 4)}
                videos = [("runtime", fast)]
                if ref_pipe is not None:
                    slow = ref_pipe(portrait.image, portrait.mask, audio, seed=seed)
                    s = score(slow, audio, portrait.image, portrait.mask, reader)
                    row["reference"] = {"lipsync": round(s.correlation, 4), "identity": round(s.identity, 4)}
                    videos.append(("reference", slow))
                if k < 3:
                    for name, frames in videos:
                        with VideoWriter(out / f"sample{i}-{name}.mp4", cfg.fps, cfg.resolution, audio=audio) as v:
                            v.write(frames)
                rows.append(row)
                print(json.dumps(row), flush=True)
    summary = {"samples": rows, "settings": {"runtime": dict(bundle_defaults(cfg)), "reference": "ddim 40, guidance on every step"}}
    for kind in ("runtime", "reference"):
        vals = [r[kind] for r in rows if kind in r]
        if vals:
            summary[kind] = {m: round(float(np.mean([v[m] for v in vals])), 4) for m in ("lipsync", "identity")}
    (out / "metrics.json").write_text(json.dumps(summary, indent=1))
    return summary


def bundle_defaults(cfg) -> dict:
    return {"sampler": cfg.sampler, "steps": cfg.steps, "guidance_scale": cfg.guidance_scale, "guidance_steps": cfg.guidance_steps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--heldout", default="build/data/heldout")
    ap.add_argument("--work", help="evaluate a training run's stage instead of the shipped weights")
    ap.add_argument("--stage", default="video", choices=["image", "video"])
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--no-reference", action="store_true", help="skip the (slow) PyTorch DDIM-40 runs")
    ap.add_argument("-o", "--out", default="build/eval")
    args = ap.parse_args()
    if args.work:
        from training.train import trained_model

        model = trained_model(Path(args.work), args.stage)
    else:
        from emote.models.checkpoint import load_checkpoint, shipped_checkpoint

        model = load_checkpoint(shipped_checkpoint("demo"))
    summary = evaluate(model, Dataset.open(args.heldout), args.samples, Path(args.out), reference=not args.no_reference)
    print(json.dumps({k: v for k, v in summary.items() if k != "samples"}, indent=1))


if __name__ == "__main__":
    main()
