"""Writes the example inputs the demo uses: emote/assets/portrait.png and emote/assets/speech.wav.

    python -m training.make_examples      # needs espeak-ng (apt-get install espeak-ng)

Deterministic: the portrait is ``training.portrait.EXAMPLE`` rendered at 512 px;
the speech is espeak-ng's en-us voice at 150 words per minute, resampled from
22,050 Hz to 16 kHz mono int16 with soxr.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from PIL import Image

from emote.bundle import SAMPLE_RATE
from training.portrait import EXAMPLE, render_portrait

ASSETS = Path(__file__).resolve().parent.parent / "emote" / "assets"
SENTENCE = "Hello! This portrait was drawn by a program, and now it talks along with my voice."
VOICE, RATE, PITCH = "en-us", 150, 50


def speech(text: str = SENTENCE) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        subprocess.run(["espeak-ng", "-v", VOICE, "-s", str(RATE), "-p", str(PITCH), "-w", str(wav), text], check=True)
        data, rate = sf.read(wav, dtype="float32")
    return soxr.resample(data, rate, SAMPLE_RATE, quality="HQ")


def main() -> None:
    ASSETS.mkdir(parents=True, exist_ok=True)
    Image.fromarray(render_portrait(EXAMPLE, 512)).save(ASSETS / "portrait.png", optimize=True)
    sf.write(ASSETS / "speech.wav", speech(), SAMPLE_RATE, subtype="PCM_16")
    for f in ("portrait.png", "speech.wav"):
        print(f"wrote {ASSETS / f} ({(ASSETS / f).stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
