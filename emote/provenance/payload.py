"""The watermark's payload: 32 bits (who made the video, and when) under a binary [64, 32] code.

Layout of the 4 payload bytes, big-endian: 8 bits generator id (1 = emote-edge), 24 bits the
minute of generation counted from 2026-01-01 00:00 UTC (2^24 minutes: 31.9 years). They are coded
into 64 bits by the extended BCH code of bch.py (minimum distance 12), decoded from the detector's
soft bits by ordered statistics, which corrects most words with 6-10 weak wrong bits; a word is
accepted only when it explains the soft bits well enough (``RHO_MIN``).

The minute is the clock's, or ``SOURCE_DATE_EPOCH``'s where that is set (the reproducible-builds
convention: seconds since 1970 UTC), so that two runs of one input can make the very same frames.
"""

from __future__ import annotations

import datetime as dt
import math
import os
from dataclasses import dataclass

import numpy as np

from ..errors import EmoteError
from . import bch

GENERATOR_EMOTE = 1
EPOCH = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
PAYLOAD_BYTES = 4
CODED_BITS = bch.N  # 64


def generation_time() -> dt.datetime:
    """Now (UTC), or ``SOURCE_DATE_EPOCH`` (integer seconds since 1970 UTC) where it is set."""
    fixed = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not fixed:
        return dt.datetime.now(dt.timezone.utc)
    if not fixed.isdigit():
        raise EmoteError(f"SOURCE_DATE_EPOCH={fixed!r}: give integer seconds since 1970-01-01 UTC")
    return dt.datetime.fromtimestamp(int(fixed), dt.timezone.utc)


@dataclass(frozen=True)
class Payload:
    generator: int  # 0-255; 1 = emote-edge
    minute: int  # minutes since EPOCH, 0 .. 2^24 - 1

    @classmethod
    def now(cls, generator: int = GENERATOR_EMOTE) -> Payload:
        """This minute, or ``SOURCE_DATE_EPOCH``'s (reproducible output) where that is set."""
        minutes = int((generation_time() - EPOCH).total_seconds() // 60)
        return cls(generator, min(max(minutes, 0), (1 << 24) - 1))

    def __post_init__(self) -> None:
        if not (0 <= self.generator < 256 and 0 <= self.minute < (1 << 24)):
            raise ValueError(f"payload out of range: generator {self.generator} (0-255), minute {self.minute} (0-16777215)")

    @property
    def time(self) -> dt.datetime:
        return EPOCH + dt.timedelta(minutes=self.minute)

    def to_bytes(self) -> bytes:
        return bytes([self.generator]) + self.minute.to_bytes(3, "big")

    @classmethod
    def from_bytes(cls, data: bytes) -> Payload:
        return cls(data[0], int.from_bytes(data[1:4], "big"))

    def describe(self) -> dict:
        return {
            "generator": "emote-edge" if self.generator == GENERATOR_EMOTE else f"id {self.generator}",
            "time": self.time.strftime("%Y-%m-%dT%H:%MZ"),
        }


def encode(payload: Payload) -> np.ndarray:
    """The 64 coded bits as +-1 (float32): the 32 payload bits (most significant first), then the code's 32."""
    bits = np.unpackbits(np.frombuffer(payload.to_bytes(), np.uint8))
    return (bch.encode(bits).astype(np.float32) * 2 - 1).astype(np.float32)


# a decoded word is accepted when its normalised correlation with the limited soft bits is at least this:
# Gaussian soft bits pass 1 time in 1,000 (0.8141 is the 1e-3 quantile of 60,000 trials, 0.8387 the 1e-4
# one; the Reed-Solomon decoder this replaced accepted 1 random word in 1,100). The soft bits of unmarked
# videos pass more rarely than Gaussian ones (bench/RESULTS.md)
RHO_MIN = 0.814


def decode(soft: np.ndarray) -> tuple[Payload | None, int]:
    """Soft bits (positive = 1) -> (payload or None, coded bits corrected).

    The soft bits are limited (``limit``). The code's best word for them (bch.decode: ordered
    statistics, which uses how weak each bit is) is accepted only when it explains them: its
    correlation with them, over their norm and sqrt(64), is at least RHO_MIN. Noise, or a mark too worn for its payload, gives a best word
    too, and that rule refuses all but 1 in 1,000 of them.
    """
    soft = np.asarray(soft, np.float64)
    if soft.shape != (CODED_BITS,) or not np.all(np.isfinite(soft)) or not soft.any():
        return None, 0
    soft = limit(soft)
    found = bch.decode(soft)
    if correlation(soft, found.codeword) < RHO_MIN:
        return None, 0
    return Payload.from_bytes(np.packbits(found.bits).tobytes()), found.flipped


def limit(soft: np.ndarray) -> np.ndarray:
    """Soft bits over their median magnitude, clipped to +-1: a few bits far larger than the rest (a
    picture's strong frequencies in a large frame's static sum) can neither outvote the others nor, by
    their share of the norm, sink a right word's correlation."""
    scale = float(np.median(np.abs(soft)))
    return np.clip(soft / scale, -1.0, 1.0) if scale > 0 else np.sign(soft)


def correlation(soft: np.ndarray, codeword: np.ndarray) -> float:
    """How well a codeword (0/1) explains soft bits: sum(soft x (+-1)) / (|soft| sqrt(n)), 1 at best."""
    return float((2.0 * np.asarray(codeword, np.float64) - 1) @ soft / (np.linalg.norm(soft) * math.sqrt(len(soft))))
