"""Model families: what a family binds beyond the graphs every bundle has, behind one interface.

Every bundle runs the same seven graphs (reference_net, audio_encoder, vae_encoder,
clip_condition, denoise_step(_cond), vae_decoder) over the same clip loop; a family
adds the inputs its model conditions on and says where the first clip's motion frames
come from:

- ``options``: given once to ``Pipeline(bundle, **options)`` and checked there, before
  any work (Hallo: ``face_embedding``, ``face_model``, ``region_weights``);
- ``video_inputs(portrait, **inputs)``: per video, the tensors to bind beside the
  reference image, by graph input name (EMO: the face mask and the head speed; Hallo:
  its blurred face mask, region masks, region weights and the face embedding);
  ``inputs`` are the per-call ones of ``Pipeline.stream(..., **inputs)``;
- ``first_motion(portrait)``: the frames the first clip's motion latents come from,
  or None for zero latents;
- ``clip_inputs(windows, clip, source)``: per clip, tensors beside the audio window
  (EchoMimic: each frame's whisper rows, ``audio_index``, and their positional rows);
- ``file_tokens(samples, frames, run)``: a whole file's audio tokens where the family encodes
  files its own way (EchoMimic's 30 s segments, under the window schedule), else None.

A new family is a module here and one line in ``FAMILIES``; ``Pipeline`` has no branch
per family. The step graph stays "x_t in, x_{t-1} out": families bind per video and
per clip, never per step.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...bundle import Bundle
from ...errors import EmoteError


class Family:
    """The EMO family's defaults: nothing beyond the common graphs. Subclasses add what theirs binds."""

    name = "emo"
    framing = "crop"  # how the portrait is framed (runtime/face.py): cropped around the face
    options: tuple[str, ...] = ()  # Pipeline keyword options this family takes
    inputs: tuple[str, ...] = ()  # Pipeline.stream keyword inputs this family takes

    def __init__(self, bundle: Bundle, **options: Any):
        self.bundle, self.geometry = bundle, bundle.geometry
        self.check("option", options, self.options)

    def check(self, kind: str, given: dict[str, Any], known: tuple[str, ...]) -> None:
        unknown = [k for k, v in given.items() if k not in known and v is not None]
        if unknown:
            takes = f"its {kind}s: {', '.join(known)}" if known else f"the {self.name} family takes no {kind}s"
            names = ", ".join(k.replace("_", " ") for k in unknown)
            raise EmoteError(f"{self.bundle.describe()} takes no {names} ({takes})")

    def video_inputs(self, portrait, **inputs: Any) -> dict[str, np.ndarray]:
        self.check("input", inputs, self.inputs)
        return {"face_mask": portrait.mask[None, None].astype(np.float32)}

    def first_motion(self, portrait) -> np.ndarray | None:
        return None

    def clip_inputs(self, windows, clip: int, source) -> dict[str, np.ndarray]:
        return {}

    def file_tokens(self, samples: np.ndarray, frames: int, run) -> np.ndarray | None:
        """Every frame's audio tokens of a whole file, where the family encodes files its own way (EchoMimic:
        30 s segments), by ``run(graph, feeds) -> outputs``; None: the clips' audio windows."""
        return None


def family_for(bundle: Bundle, **options: Any) -> Family:
    """The family of ``bundle`` with its options checked."""
    from .echomimic import EchoMimic
    from .emo import EMO
    from .hallo import Hallo

    families = {f.name: f for f in (EMO, Hallo, EchoMimic)}
    return families[bundle.family](bundle, **options)
