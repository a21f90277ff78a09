"""Text in: a small TTS interface, and its adapter for espeak-ng (the Debian package), for kiosks that speak from text.

A ``TTS`` turns text into float32 mono samples and their rate; a live session takes them like
any other audio (resampled to 16 kHz). ``EspeakNG`` runs the ``espeak-ng`` program (a formant
synthesiser: robotic, but small, offline and in every distribution); a neural TTS plugs in by
implementing ``synthesize``.
"""

from __future__ import annotations

import io
import shutil
import subprocess
from typing import Protocol

import numpy as np

from ..errors import EmoteError

MAX_CHARS = 2000  # one utterance's text: a few minutes of speech


class TTS(Protocol):
    name: str

    def synthesize(self, text: str) -> tuple[np.ndarray, int]:
        """float32 mono samples in [-1, 1] and their rate."""


class EspeakNG:
    """espeak-ng through its command line: ``--stdout`` gives a WAV (22.05 kHz, 16-bit mono)."""

    name = "espeak-ng"

    def __init__(self, voice: str = "en", words_per_minute: int = 160, timeout: float = 30.0):
        self.program = shutil.which("espeak-ng")
        if self.program is None:
            raise EmoteError("text in needs espeak-ng: apt-get install espeak-ng (make install does it where it can)")
        if not voice.replace("-", "").replace("+", "").isalnum():
            raise EmoteError(f"voice {voice!r}: expected an espeak-ng voice name such as en, en-us, de")
        if not 80 <= words_per_minute <= 450:
            raise EmoteError(f"words per minute {words_per_minute}: expected 80 to 450")
        self.voice, self.wpm, self.timeout = voice, words_per_minute, timeout

    def synthesize(self, text: str) -> tuple[np.ndarray, int]:
        import soundfile as sf

        text = " ".join(text.split())
        if not text:
            raise EmoteError("no text to say")
        if len(text) > MAX_CHARS:
            raise EmoteError(f"text of {len(text)} characters: at most {MAX_CHARS} at once")
        cmd = [self.program, "--stdout", "-v", self.voice, "-s", str(self.wpm), "--", text]
        try:
            r = subprocess.run(cmd, capture_output=True, timeout=self.timeout, check=False)
        except subprocess.TimeoutExpired:
            raise EmoteError(f"espeak-ng took more than {self.timeout:g} s") from None
        if r.returncode != 0 or not r.stdout:
            reason = r.stderr.decode(errors="replace").strip().splitlines()
            raise EmoteError(f"espeak-ng failed: {reason[-1] if reason else f'exit status {r.returncode}'}")
        data, rate = sf.read(io.BytesIO(r.stdout), dtype="float32", always_2d=True)
        return data.mean(axis=1), int(rate)
