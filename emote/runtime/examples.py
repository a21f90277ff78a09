"""The example portrait and speech shipped in ``emote/assets/`` (public domain; see its README).

``make demo``, ``emote bench``, ``emote verify``'s real inputs and calibration all start
from these two files.
"""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent.parent / "assets"
PORTRAIT = ASSETS / "portrait.png"
SPEECH = ASSETS / "speech.wav"


def example_inputs(resolution: int):
    """The example portrait (cropped around its face) and speech (16 kHz float32)."""
    from .audio import load_audio
    from .face import prepare_portrait

    return prepare_portrait(PORTRAIT, resolution), load_audio(SPEECH)
