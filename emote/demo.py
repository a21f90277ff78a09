"""`emote demo` (and `make demo`): the example portrait and speech through the demo model, to a video.

The bundle is exported once into the output folder and reused while the model and
its weights are unchanged (the manifest records both).
"""

from __future__ import annotations

import sys
from pathlib import Path


ASSETS = Path(__file__).resolve().parent / "assets"
PORTRAIT = ASSETS / "portrait.png"
SPEECH = ASSETS / "speech.wav"
PRESET = "demo"


def example_inputs(resolution: int):
    """The committed example portrait (cropped around its face) and speech (16 kHz float32)."""
    from .runtime.audio import load_audio
    from .runtime.face import prepare_portrait

    return prepare_portrait(PORTRAIT, resolution), load_audio(SPEECH)


def run_demo(out: str | Path = "build/demo", steps: int | None = None) -> int:
    from .models.checkpoint import shipped_checkpoint
    from .runtime.generate import generate_video
    from .runtime.pipeline import Pipeline

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    from .export.bundle import ensure_bundle

    bundle = ensure_bundle(out / "bundle", PRESET)
    video = out / "demo.mp4"
    with Pipeline(bundle, steps=steps) as pipe:
        summary = generate_video(pipe, PORTRAIT, SPEECH, video)
    print(f"wrote {video}: {summary.line()}")
    if shipped_checkpoint(PRESET) is not None:
        print(lip_sync_line(video, pipe.resolution, pipe.fps))
    else:
        print(
            "NOTE: the demo model is untrained (random weights): the video shows what the pipeline does with noise, "
            "not a talking face. Trained demo weights are not shipped yet.",
            file=sys.stderr,
        )
    return 0


def lip_sync_line(video: Path, resolution: int, fps: int) -> str:
    """The written video read back and scored: does the mouth follow the speech (emote.bench.lipsync)?"""
    import av
    import numpy as np

    from .bench.lipsync import MODEL, score

    if not MODEL.is_file():
        return "lip sync not scored: the mouth reader (emote/weights/lipsync/mouth.onnx) is missing"
    with av.open(str(video)) as container:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    portrait, speech = example_inputs(resolution)
    s = score(frames, speech, portrait.image, portrait.mask, fps=fps)
    return (f"lip sync: r = {s.correlation:.2f} between the mouth opening read from the video and the speech's loudness "
            f"(1 = perfect); identity outside the mouth {s.identity:.2f}")



