"""`emote demo` (and `make demo`): the example portrait and speech through the demo model, to a video.

The bundle is exported once into the output folder and reused while the model and
its weights are unchanged (the manifest records both).
"""

from __future__ import annotations

from pathlib import Path

from .errors import EmoteError
from .runtime.examples import PORTRAIT, SPEECH, example_inputs

PRESET = "demo-fast"  # the one-step student of the demo model (the teacher: preset demo)


def run_demo(out: str | Path = "build/demo", steps: int | None = None, unmarked_research: bool = False) -> int:
    from .export.bundle import ensure_bundle
    from .models.checkpoint import shipped_checkpoint
    from .runtime.generate import generate_video
    from .runtime.pipeline import Pipeline

    if shipped_checkpoint(PRESET) is None:
        raise EmoteError(f"the shipped {PRESET} weights (emote/weights/{PRESET}) are missing: reinstall emote")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    bundle = ensure_bundle(out / "bundle", PRESET)
    video = out / "demo.mp4"
    with Pipeline(bundle, steps=steps, unmarked_research=unmarked_research) as pipe:
        summary = generate_video(pipe, PORTRAIT, SPEECH, video)
    print(f"wrote {video}: {summary.line()}")
    print(lip_sync_line(video, pipe.resolution, pipe.fps))
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
    return (
        f"lip sync: r = {s.correlation:.2f} between the mouth opening read from the video and the speech's loudness "
        f"(1 = perfect); identity outside the mouth {s.identity:.2f}"
    )
