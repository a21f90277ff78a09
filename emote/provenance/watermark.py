"""The invisible video watermark: a keyed, tiled spread-spectrum pattern added to luma.

What it is (classical spread spectrum, Cox et al. 1997, made shift- and scale-searchable by
tiling, as in Kutter 1998's periodic marks):

- The key seeds a tile of 16 x 16 cells, each cell a chip of +-1. Half the cells (keyed choice)
  are the sync pattern; the other half carry the 64 coded bits of the payload (payload.py),
  two cells a bit, each cell's chip multiplied by its bit's sign.
- The tile repeats over the whole frame, anchored at its top-left corner, with cells of
  ``cell_px(frame)`` pixels (4 px at 128-256 px, 8 at 512), and is smoothed a little so that
  its cell edges carry no energy a codec would spend bits on.
- Embedding adds ``strength x mask x pattern`` to luma (the same value to R, G and B: luma
  moves, chroma does not). The mask follows local contrast (texture masking: more where the
  eye and the codec see less of it) and is raised on the face region, the part of a talking
  portrait a crop keeps. It is scaled so that every frame gets the same RMS change,
  ``RMS`` = 2.3 levels of 255: luma PSNR 40.9 dB before rounding.
- Small frames (short side under ``TEMPORAL_BELOW``: the demo's 128 px) are too few pixels for a
  still picture's one pattern to stand out of the picture itself, and summing identical frames
  adds nothing. There the pattern's sign follows a fixed public sequence in time (blocks of
  ``BLOCK_S``, each pair of blocks + - or - +): the detector's signed sum cancels whatever stays
  still and keeps the mark. The frame's time (not its index) places it in the sequence, so a
  frame-rate change keeps it; a copy whose clock starts elsewhere (a trimmed start) loses it.

Detection, over a whole clip: every frame's luma is whitened (minus its local mean, divided by
its local contrast) and the whitened frames are summed, plainly and signed by the sequence; both
sums are searched. Because the pattern is locked to the
frame, not to the content, the sum keeps it wherever the picture is still (background, torso)
and motion-compensated drift only loses the moving parts. The sum is folded modulo the tile
period for every candidate period (a log grid from 24 to 256 px: resizing), giving one tile;
cross-correlation with the key's sync tile at every cyclic shift (crops) is one FFT. The peak's
z-score against all the shifts of the same fold is the evidence (a strong mark's own sidelobes
cap it near sqrt(sync cells): a tile's spread measured with the tile removed had a null tail too
heavy to calibrate, bench/RESULTS.md); the p-value (``null_p``) counts every sum, shift and period tried, with an effective
number of tests fitted to wrong-key trials. At the best period and
shift the data cells give soft bits for the Reed-Solomon decoder.

Numpy and OpenCV only: the runtime imports this module to mark every frame it emits.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from . import payload as pl

CELLS = 16  # cells a tile side
SYNC_CELLS = CELLS * CELLS // 2  # 128 sync cells, 128 data cells = 2 per coded bit
CANON_CELL = 4  # bins per cell in the detector's folded tile
BINS = CELLS * CANON_CELL  # 64 x 64 folded tile
RMS = 2.3  # luma change per frame, 8-bit levels: 20 log10(255 / 2.3) = 40.9 dB (the budget: >= 40 dB)
FACE_GAIN = 1.5  # mask weight on the face region relative to elsewhere
PERIOD_MIN, PERIOD_MAX = 24.0, 256.0  # tile periods searched, px: 0.375x of a 128 px video's to 2x of a 512 px one's
PERIOD_STEP = 1.006  # 0.6 % apart: the fold stays within a quarter cell over 512 px at the worst grid point
DETECT_P = 1e-5  # a clip is marked when its (calibrated) p-value is below this: a false-positive rate of 1e-5 per clip
NULL_TESTS_FACTOR = (
    0.05  # effective tests per nominal test in null_p: twice the 0.026 fitted to 1,809 wrong-key trials at 128 px (bench/RESULTS.md)
)
PUBLIC_KEY = "emote-edge public watermark key 1"  # the default: anyone can detect (and so could strip) it
KEY_ENV = "EMOTE_WATERMARK_KEY"
BLOCK_S = 0.32  # the pattern's sign holds for 0.32 s (8 frames at 25 fps, ~5 at 15), then may flip
SEQUENCE_BLOCKS = 16  # the sign sequence repeats every 16 blocks (5.12 s); each pair of blocks is (+, -) or (-, +)
SEQUENCE_SEED = 19  # the sequence is public and fixed: the secret is the key's tile, not the timing
TEMPORAL_BELOW = 384  # frames whose short side is under this carry the time-varying sign (the demo's 128 px, tiny's 64)


@dataclass(frozen=True)
class Key:
    """The secret behind the pattern; ``Key.default()`` is the public key unless $EMOTE_WATERMARK_KEY names another."""

    text: str

    @classmethod
    def default(cls) -> Key:
        return cls(os.environ.get(KEY_ENV) or PUBLIC_KEY)

    @property
    def is_public(self) -> bool:
        return self.text == PUBLIC_KEY

    @property
    def seed(self) -> int:
        return int.from_bytes(hashlib.sha256(self.text.encode()).digest()[:8], "big")


@dataclass(frozen=True)
class Layout:
    """The key's tile: a chip per cell, which cells are sync, which coded bit each data cell carries."""

    chips: np.ndarray  # (CELLS, CELLS) +-1
    sync: np.ndarray  # (CELLS, CELLS) bool
    bit_of: np.ndarray  # (CELLS, CELLS) int, the coded bit of a data cell, -1 on sync cells


@lru_cache(maxsize=8)
def layout(key: Key) -> Layout:
    rng = np.random.default_rng(key.seed)
    chips = rng.choice(np.array([-1.0, 1.0], np.float32), size=(CELLS, CELLS))
    order = rng.permutation(CELLS * CELLS)
    sync = np.zeros(CELLS * CELLS, bool)
    sync[order[:SYNC_CELLS]] = True
    bit_of = np.full(CELLS * CELLS, -1, np.int64)
    bit_of[order[SYNC_CELLS:]] = np.arange(CELLS * CELLS - SYNC_CELLS) % pl.CODED_BITS
    return Layout(chips, sync.reshape(CELLS, CELLS), bit_of.reshape(CELLS, CELLS))


def cell_px(height: int, width: int) -> int:
    """Pixels per cell for a frame: 4 up to 383 px, then short side / 64 (8 at 512 px)."""
    return max(CANON_CELL, min(height, width) // 64)


def _cells(key: Key, coded: bytes) -> np.ndarray:
    """The tile's cell values: the chip on sync cells, chip x bit sign on data cells (coded: float32 +-1 bytes)."""
    lay = layout(key)
    signs = np.frombuffer(coded, np.float32)
    return np.where(lay.sync, lay.chips, lay.chips * signs[np.maximum(lay.bit_of, 0)]).astype(np.float32)


def _smooth_tile(cells: np.ndarray, px: int) -> np.ndarray:
    """Cells blown up to px x px blocks, blurred cyclically (the tile repeats), RMS 1."""
    import cv2

    tile = np.kron(cells, np.ones((px, px), np.float32)).astype(np.float32)
    pad = px
    wrapped = np.pad(tile, pad, mode="wrap")
    tile = cv2.GaussianBlur(wrapped, (0, 0), px / 3.0)[pad:-pad, pad:-pad]
    return tile / np.sqrt(np.mean(tile**2))


@lru_cache(maxsize=16)
def _frame_pattern(key: Key, coded: bytes, height: int, width: int) -> np.ndarray:
    """The full-frame pattern (H, W) float32 of RMS 1 for a payload's coded bits."""
    px = cell_px(height, width)
    cells = _cells(key, coded)
    tile = _smooth_tile(cells.astype(np.float32), px)
    reps = (-(-height // tile.shape[0]), -(-width // tile.shape[1]))
    return np.ascontiguousarray(np.tile(tile, reps)[:height, :width])


@lru_cache(maxsize=1)
def _sequence() -> np.ndarray:
    first = np.random.default_rng(SEQUENCE_SEED).choice(np.array([-1.0, 1.0]), size=SEQUENCE_BLOCKS // 2)
    return np.stack([first, -first], axis=1).ravel()


def temporal(height: int, width: int) -> bool:
    """Whether frames of this size carry the time-varying sign (small frames: see the module docstring)."""
    return min(height, width) < TEMPORAL_BELOW


def frame_sign(t: float) -> float:
    """The sequence's sign at ``t`` seconds: balanced over every two blocks, so that a still picture
    cancels from the detector's signed sum while a mark that follows the sequence adds up."""
    return float(_sequence()[int(math.floor(t / BLOCK_S + 1e-6)) % SEQUENCE_BLOCKS])


def _luma(frames: np.ndarray) -> np.ndarray:
    """BT.601 luma of uint8 RGB (..., 3) as float32 (what yuv420p keeps at full resolution)."""
    f = frames.astype(np.float32)
    return 0.299 * f[..., 0] + 0.587 * f[..., 1] + 0.114 * f[..., 2]


class Embedder:
    """``Embedder(key, payload).mark(frames, face_mask)`` -> the frames with the watermark in luma.

    frames: uint8 (N, H, W, 3) RGB; face_mask: (H, W) in [0, 1] or None. Deterministic: the
    same frames, key and payload give the same output.
    """

    def __init__(self, key: Key | None = None, payload: pl.Payload | None = None, rms: float = RMS, fps: float = 25.0):
        self.key = key or Key.default()
        self.fps = fps
        self.frames = 0
        self.payload = payload or pl.Payload.now()
        self.rms = rms
        self._coded = pl.encode(self.payload).tobytes()

    def mark(self, frames: np.ndarray, face_mask: np.ndarray | None = None) -> np.ndarray:
        import cv2

        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 (N, H, W, 3), got {frames.dtype}{list(frames.shape)}")
        n, h, w, _ = frames.shape
        pattern = _frame_pattern(self.key, self._coded, h, w)
        gain = None
        if face_mask is not None:
            if face_mask.shape != (h, w):
                face_mask = cv2.resize(face_mask.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
            gain = 1.0 + (FACE_GAIN - 1.0) * np.clip(face_mask, 0, 1).astype(np.float32)
        k = 2 * cell_px(h, w) - 1
        moving = temporal(h, w)
        out = np.empty_like(frames)
        for i in range(n):
            rgb = frames[i]
            y = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
            mean = cv2.blur(y, (k, k))
            var = cv2.blur(y * y, (k, k)) - mean * mean
            mask = np.sqrt(np.maximum(var, 0.0)) + 3.0  # a floor: flat areas still carry some of it
            np.minimum(mask, 3.0 * float(mask.mean()), out=mask)  # edges would take it all
            if gain is not None:
                mask *= gain
            mask *= self.rms / math.sqrt(float(np.mean(mask * mask)))
            sign = frame_sign(self.frames / self.fps) if moving else 1.0
            delta = mask * pattern * np.float32(sign)
            self.frames += 1
            # rounded and saturated to uint8 by OpenCV (the same change on R, G and B)
            out[i] = cv2.add(rgb, cv2.merge((delta, delta, delta)), dtype=cv2.CV_8U)
        return out


def whiten(luma: np.ndarray) -> np.ndarray:
    """A frame's luma (H, W) minus its local mean, over its local contrast: the pattern's scale of
    detail, each region weighted alike whatever its texture."""
    import cv2

    y = luma.astype(np.float32)
    sigma = float(cell_px(*y.shape))  # a cell's scale, which grows with the frame as the embedder's does
    high = y - cv2.GaussianBlur(y, (0, 0), sigma)
    contrast = np.sqrt(cv2.GaussianBlur(high * high, (0, 0), sigma))
    return high / (contrast + 1.0)


class ClipSum:
    """A clip's whitened luma summed two ways: plainly (``static``) and signed by the time sequence
    (``signed``). ``add(luma, t)`` per frame (t: its time in seconds), then ``detect(key)``."""

    def __init__(self) -> None:
        self.static: np.ndarray | None = None
        self.signed: np.ndarray | None = None
        self.frames = 0

    def add(self, luma: np.ndarray, t: float) -> None:
        r = whiten(luma).astype(np.float64)
        if self.static is None:
            self.static, self.signed = r.copy(), r * frame_sign(t)
        elif self.static.shape != r.shape:
            raise ValueError(f"frame of {r.shape} in a clip of {self.static.shape}")
        else:
            self.static += r
            self.signed += frame_sign(t) * r
        self.frames += 1

    def sums(self) -> tuple[np.ndarray, np.ndarray]:
        return self.static, self.signed

    def detect(self, key: Key | None = None) -> Detection:
        if self.static is None:
            return Detection(False, 0.0, 1.0, None, 0, 0.0, (0, 0), 0, 0, "static")
        return detect_sums(self.sums(), self.frames, key or Key.default())


@dataclass(frozen=True)
class Detection:
    marked: bool  # p_value < DETECT_P
    z: float  # the best sync peak over every sum, period and shift, in standard deviations of its fold's shifts
    p_value: float  # chance of a peak this high in an unmarked clip (calibrated: see null_p)
    payload: pl.Payload | None  # decoded through the Reed-Solomon code; None when it does not, or when no mark is found
    corrected: int  # bytes the code corrected
    period: float  # tile period found, px (the frame's scale relative to the mark's)
    shift: tuple[int, int]  # the tile's offset found, in fold bins (a crop)
    frames: int
    bits_agree: int  # coded bits read as the decoded payload's (of 64); 0 without a payload
    sum: str  # the sum the peak was found in: "static" or "signed" (the time-varying mark of small frames)

    def as_dict(self) -> dict:
        return {
            "marked": self.marked,
            "z": round(self.z, 2),
            "p_value": float(f"{self.p_value:.3g}"),
            "payload": self.payload.describe() if self.payload else None,
            "corrected_bytes": self.corrected,
            "period_px": round(self.period, 2),
            "frames": self.frames,
            "sum": self.sum,
        }


@lru_cache(maxsize=8)
def _sync_reference(key: Key) -> tuple[np.ndarray, np.ndarray]:
    """The sync tile at the fold's scale (bins) and its conjugate spectrum."""
    lay = layout(key)
    tile = _smooth_tile(np.where(lay.sync, lay.chips, 0.0).astype(np.float32), CANON_CELL)
    return tile, np.conj(np.fft.rfft2(tile))


@lru_cache(maxsize=1)
def periods() -> np.ndarray:
    n = int(math.log(PERIOD_MAX / PERIOD_MIN) / math.log(PERIOD_STEP)) + 1
    return PERIOD_MIN * PERIOD_STEP ** np.arange(n)


def candidate_periods(height: int, width: int) -> np.ndarray:
    p = periods()
    return p[p <= max(height, width)]


def _bins(height: int, width: int, period: float) -> np.ndarray:
    """The fold bin of every pixel for a tile ``period`` px wide: row-major in the BINS x BINS tile."""
    by = (np.floor(np.arange(height) * (BINS / period)).astype(np.int64)) % BINS
    bx = (np.floor(np.arange(width) * (BINS / period)).astype(np.int64)) % BINS
    return (by[:, None] * BINS + bx[None, :]).ravel()


def fold(total: np.ndarray, period: float) -> np.ndarray:
    """The sum folded modulo the tile period into BINS x BINS (mean per bin; 0 where no pixel lands)."""
    idx = _bins(*total.shape, period)
    sums = np.bincount(idx, weights=total.ravel(), minlength=BINS * BINS)
    counts = np.bincount(idx, minlength=BINS * BINS)
    return (sums / np.maximum(counts, 1)).reshape(BINS, BINS)


def search(sums: tuple[np.ndarray, ...], refs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every key's best peak over the sums, periods and cyclic shifts: the statistic detection thresholds.

    refs: (K, BINS, BINS // 2 + 1) conjugate sync spectra (one per key). Returns per key the peak z
    (the correlation's maximum over the fold's shifts, minus their mean, over their standard deviation),
    the index of the sum, the period and the flat shift where it was found. One fold per sum and
    period serves every key: wrong-key trials (bench/watermark.py) cost a few FFTs each.
    """
    k = refs.shape[0]
    best = np.full(k, -np.inf)
    where_sum, where_period, where_shift = np.zeros(k, np.int64), np.zeros(k), np.zeros(k, np.int64)
    for si, total in enumerate(sums):
        for period in candidate_periods(*total.shape):
            spectrum = np.fft.rfft2(fold(total, period))
            c = np.fft.irfft2(spectrum[None] * refs, s=(BINS, BINS)).reshape(k, -1)
            sd = c.std(axis=1)
            at = np.argmax(c, axis=1)
            z = (c[np.arange(k), at] - c.mean(axis=1)) / np.maximum(sd, 1e-30)
            z[sd == 0] = -np.inf
            better = z > best
            best[better], where_sum[better], where_period[better], where_shift[better] = z[better], si, period, at[better]
    return best, where_sum, where_period, where_shift


def null_p(z: float, height: int, width: int) -> float:
    """The chance that an unmarked clip (or another key's) peaks at ``z`` or more, for this frame size.

    The search's best of ``tests`` correlated Gaussian peaks (2 sums x BINS^2 shifts x the periods
    that fit) has the tail 1 - exp(-NULL_TESTS_FACTOR x tests x Q(z)), Q the normal tail: a Bonferroni
    count with an effective number of tests fitted to wrong-key trials (bench/watermark.py --calibrate;
    bench/RESULTS.md), which also absorbs a per-shift tail heavier than Gaussian.
    """
    tests = 2 * BINS * BINS * max(len(candidate_periods(height, width)), 1)
    return float(-math.expm1(-NULL_TESTS_FACTOR * tests * 0.5 * math.erfc(z / math.sqrt(2))))


def detect_sums(sums: tuple[np.ndarray, np.ndarray], frames: int, key: Key) -> Detection:
    """Search sum, period and shift for the key's sync tile; decode the payload at the best."""
    _, ref_conj = _sync_reference(key)
    z, si, period, at = (a[0] for a in search(sums, ref_conj[None]))
    h, w = sums[0].shape
    name = ("static", "signed")[int(si)]
    if not np.isfinite(z):
        return Detection(False, 0.0, 1.0, None, 0, 0.0, (0, 0), frames, 0, name)
    shift = divmod(int(at), BINS)
    p = null_p(float(z), h, w)
    marked = p < DETECT_P
    payload, corrected, agree = None, 0, 0
    if marked:  # a word the code accepts out of noise says nothing
        soft = soft_bits(sums[int(si)], float(period), shift, key)
        payload, corrected = pl.decode(soft)
        agree = int(np.sum((soft > 0) == (pl.encode(payload) > 0))) if payload else 0
    return Detection(marked, float(z), p, payload, corrected, float(period), shift, frames, agree, name)


def soft_bits(total: np.ndarray, period: float, shift: tuple[int, int], key: Key) -> np.ndarray:
    """The coded bits' evidence in a sum folded at ``period`` and aligned at ``shift``."""
    return _soft_bits(np.roll(fold(total, period), (-shift[0], -shift[1]), axis=(0, 1)), key)


def _soft_bits(aligned: np.ndarray, key: Key) -> np.ndarray:
    """Each coded bit's evidence: its cells of the aligned fold, times their chips, summed."""
    lay = layout(key)
    cells = aligned.reshape(CELLS, CANON_CELL, CELLS, CANON_CELL).sum(axis=(1, 3))
    data = ~lay.sync
    return np.bincount(lay.bit_of[data], weights=(cells * lay.chips)[data], minlength=pl.CODED_BITS)


def detect_frames(frames: np.ndarray, key: Key | None = None, fps: float = 25.0) -> Detection:
    """Detection over uint8 RGB frames (N, H, W, 3) or luma (N, H, W) shown at ``fps``."""
    s = ClipSum()
    for i, f in enumerate(frames):
        s.add(_luma(f) if f.ndim == 3 else f, i / fps)
    return s.detect(key)
