"""The invisible video watermark: a keyed, tiled spread-spectrum pattern added to luma.

What it is (classical spread spectrum, Cox et al. 1997, made shift- and scale-searchable by
tiling, as in Kutter 1998's periodic marks, and detected by phase-only matched filtering):

- The key chooses a tile's frequencies and phases in one band (``BAND``: 2-10 cycles per tile,
  154 frequencies): 64 carry the coded bits of the payload (payload.py), one each, its sign the
  bit's; the other 90 are the sync pattern. Small frames' (moving) marks draw the data mostly
  from the lower frequencies (a re-encode keeps them best, and the payload needs every bit where
  the sync needs most); large frames' (static) marks spread them over the band, since a static
  sum keeps the picture, strongest at low frequencies. Either way the sets are disjoint, so the
  sync's correlation with the data is zero at every shift and its own is one peak: a strong mark's
  evidence is not capped by its own sidelobes. ``SYNC_SHARE`` of the energy is the sync's.
- The tile (16 cells of ``cell_px(frame)`` pixels a side: 64 px at 128-256 px, 128 at 512) repeats
  over the whole frame, anchored at its top-left corner.
- Embedding adds ``mask x pattern`` to luma (the same value to R, G and B: luma moves, chroma does
  not). The mask follows local contrast (texture masking: more where the eye and the codec see
  less of it) and is raised on the face region, the part of a talking portrait a crop keeps. It is
  scaled so that every frame gets the same RMS change, ``RMS`` = 2.3 levels of 255 (luma PSNR
  40.9 dB before rounding), then lowered where that would cost more than ``SSIM_LOSS`` of the
  frame's SSIM (flat frames: SSIM >= 0.98 holds on the model's flat-shaded portraits too).
- Small frames (short side under ``TEMPORAL_BELOW``: the demo's 128 px) are too few pixels for a
  still picture's one pattern to stand out of the picture itself, and summing identical frames
  adds nothing. There the pattern's sign follows a fixed public sequence in time (blocks of
  ``BLOCK_S``, each pair of blocks + - or - +): the detector's signed sum cancels whatever stays
  still and keeps the mark. The frame's time (not its index) places it in the sequence, so a
  frame-rate change keeps it; a copy whose clock starts elsewhere (a trimmed start) loses it.

Detection, over a whole clip: every frame's luma (shrunk first where it is 512 px or more, to
cells of 4-7 px: ``reduction``) is whitened (minus its local mean, divided by its local contrast)
and the whitened frames are summed, plainly and signed by the sequence; both
sums are searched. Because the pattern is locked to the frame, not to the content, the sum keeps
it wherever the picture is still (background, torso) and motion-compensated drift only loses the
moving parts. The sum is folded modulo the tile period for every candidate period (a log grid
from 24 to 256 px: resizing), giving one tile; its spectrum is reduced to phases, and the
correlation with the key's sync at every cyclic shift (crops) is one FFT. The peak, in standard
deviations of that correlation in an unmarked clip (known exactly: each sync frequency adds a
unit phasor), is the evidence; the p-value (``null_p``) counts every sum, shift and period tried,
with an effective number of tests fitted to wrong-key trials. At the best period and shift (to a
fraction of a bin) the data frequencies give soft bits for the payload's decoder (payload.py).

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

CELLS = 16  # the tile's side in cells (cell_px pixels each): the tile is 64 px at 128-256 px, 128 at 512
BINS = 64  # the detector folds a clip's sum into a BINS x BINS tile; the pattern's frequencies are counted per tile
BAND = (2.0, 10.0)  # the pattern's frequencies, cycles per tile (radius): above the whitening's high-pass, below what x264 drops
DATA_BINS = pl.CODED_BITS  # one frequency per coded bit
DATA_LOW = 4.0  # the data take the band's lower frequencies: sorted by radius plus a keyed uniform 0-4 cycles
SYNC_SHARE = 0.6  # of the pattern's energy in the sync frequencies (detection), the rest in the data ones (payload)
RMS = 2.3  # luma change per frame, 8-bit levels: 20 log10(255 / 2.3) = 40.9 dB (the budget: >= 40 dB)
MASK_FLOOR = 3.0  # texture masking: the mask is the local contrast (8-bit levels) plus this
MASK_CAP = 3.0  # and at most this many times its mean
SSIM_LOSS = 0.016  # a frame's predicted SSIM loss at most this (the budget: SSIM >= 0.98)
SSIM_C2 = (0.03 * 255) ** 2  # SSIM's contrast constant (Wang et al. 2004)
FACE_GAIN = 1.5  # mask weight on the face region relative to elsewhere
PERIOD_MIN, PERIOD_MAX = 24.0, 256.0  # tile periods searched, px: 0.375x of a 128 px video's to 2x of a 512 px one's
PERIOD_STEP = 1.006  # 0.6 % apart: the fold stays within a quarter bin over 512 px at the worst grid point
DETECT_P = 1e-5  # a clip is marked when its (calibrated) p-value is below this: a false-positive rate of 1e-5 per clip
# effective tests per nominal test in null_p: 0.405 fitted to 109,800 wrong-key and unmarked trials (bench/RESULTS.md), rounded up
NULL_TESTS_FACTOR = 0.45
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


@lru_cache(maxsize=1)
def band() -> tuple[np.ndarray, np.ndarray]:
    """The band's frequencies (ky, kx), cycles per tile: one of each conjugate pair (kx > 0, or kx = 0 and ky > 0)."""
    ky, kx = np.meshgrid(np.arange(-BINS // 2, BINS // 2), np.arange(BINS // 2 + 1), indexing="ij")
    r = np.hypot(ky, kx)
    keep = (r >= BAND[0]) & (r <= BAND[1]) & ((kx > 0) | (ky > 0))
    return ky[keep], kx[keep]


@dataclass(frozen=True)
class Layout:
    """The key's frequencies: the sync ones with their phases, and one per coded bit with its phase.

    Disjoint sets of one band: the sync pattern's correlation with the data is zero at every shift,
    and its own is a single peak, so the data never raise the detector's noise.
    """

    sync: tuple[np.ndarray, np.ndarray]  # (ky, kx)
    sync_phase: np.ndarray
    data: tuple[np.ndarray, np.ndarray]  # (ky, kx) of coded bit i at i
    data_phase: np.ndarray


@lru_cache(maxsize=16)
def layout(key: Key, moving: bool) -> Layout:
    """The key's layout for a static mark (large frames: the data anywhere in the band) or a moving one
    (small frames, the sign following the sequence: the data mostly on the band's lower frequencies)."""
    ky, kx = band()
    if moving:
        # the lower frequencies survive re-encodes best and the signed sum cancels the picture there; the
        # payload needs every bit where the sync needs most
        rng = np.random.default_rng(key.seed)
        order = np.argsort(np.hypot(ky, kx) + rng.uniform(0, DATA_LOW, len(ky)), kind="stable")
    else:  # a static mark's sum keeps the picture, strongest at low frequencies: the data spread over the band
        rng = np.random.default_rng([key.seed, 1])
        order = rng.permutation(len(ky))
    data, sync = order[:DATA_BINS], order[DATA_BINS:]
    phase = rng.uniform(0, 2 * np.pi, len(ky))
    pick = lambda i: (ky[i], kx[i])  # noqa: E731
    return Layout(pick(sync), phase[sync], pick(data), phase[data])


def cell_px(height: int, width: int) -> int:
    """Pixels per cell for a frame: 4 up to 383 px, then short side / 64 (8 at 512 px)."""
    return max(4, min(height, width) // 64)


def _spectrum(key: Key, coded: bytes | None, side: int, moving: bool) -> np.ndarray:
    """The tile's rfft2 spectrum on a side x side grid: unit-energy sync and data sets (data signed by the coded
    bits, float32 +-1 bytes; None: the sync alone, as the detector's reference), both halves of kx = 0 pairs set."""
    lay = layout(key, moving)
    spec = np.zeros((side, side // 2 + 1), np.complex128)
    parts = [(lay.sync, np.exp(1j * lay.sync_phase) * math.sqrt(SYNC_SHARE / len(lay.sync_phase)))]
    if coded is not None:
        signs = np.frombuffer(coded, np.float32).astype(np.float64)
        parts.append((lay.data, signs * np.exp(1j * lay.data_phase) * math.sqrt((1 - SYNC_SHARE) / DATA_BINS)))
    for (ky, kx), value in parts:
        spec[ky % side, kx] = value
        on_axis = kx == 0
        spec[(-ky[on_axis]) % side, 0] = np.conj(value[on_axis])
    return spec


@lru_cache(maxsize=16)
def _frame_pattern(key: Key, coded: bytes, height: int, width: int) -> np.ndarray:
    """The full-frame pattern (H, W) float32 of RMS 1 for a payload's coded bits: the tile repeated."""
    side = CELLS * cell_px(height, width)
    tile = np.fft.irfft2(_spectrum(key, coded, side, temporal(height, width)), s=(side, side))
    tile /= np.sqrt(np.mean(tile**2))
    reps = (-(-height // side), -(-width // side))
    return np.ascontiguousarray(np.tile(tile.astype(np.float32), reps)[:height, :width])


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


def _ssim_scale(change: np.ndarray, room: np.ndarray) -> float:
    """The factor (<= 1) on a frame's mask that keeps its predicted SSIM loss at most SSIM_LOSS.

    An added pattern of local power v where the picture's local variance is s lowers SSIM's structure
    term there by about v / (2 s + C2 + v): much in flat regions, little in textured ones. ``change``
    is v per pixel, ``room`` 2 s + C2. A flat frame gets less than the RMS budget, a textured one all.
    """
    loss = lambda t: float(np.mean(t * change / (room + t * change)))  # noqa: E731
    if loss(1.0) <= SSIM_LOSS:
        return 1.0
    t = 1.0
    for _ in range(4):  # the loss is concave in t: each step lands closer from above
        t *= SSIM_LOSS / loss(t)
    return math.sqrt(t)


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
            np.maximum(var, 0.0, out=var)
            mask = np.sqrt(var) + MASK_FLOOR  # flat areas still carry some of it
            np.minimum(mask, MASK_CAP * float(mask.mean()), out=mask)  # edges would take it all
            if gain is not None:
                mask *= gain
            mask *= self.rms / math.sqrt(float(np.mean(mask * mask)))
            mask *= _ssim_scale(mask * mask, 2.0 * var + SSIM_C2)
            sign = frame_sign(self.frames / self.fps) if moving else 1.0
            delta = mask * pattern * np.float32(sign)
            self.frames += 1
            # rounded and saturated to uint8 by OpenCV (the same change on R, G and B)
            out[i] = cv2.add(rgb, cv2.merge((delta, delta, delta)), dtype=cv2.CV_8U)
        return out


def reduction(height: int, width: int) -> int:
    """The factor the detector shrinks frames by before whitening, so that a cell stays 4-7 px (1 under
    512 px, 2 at 512-767, 4 at 1080p). The band's finest wave is 1.6 cells, 6.4 px or more after
    shrinking, so the mark keeps, and a large frame costs about what a 256-511 px one does to read."""
    return max(1, cell_px(height, width) // 4)


def whiten(luma: np.ndarray) -> np.ndarray:
    """A frame's luma (H, W), shrunk by ``reduction``, minus its local mean, over its local contrast: the
    pattern's scale of detail, each region weighted alike whatever its texture."""
    import cv2

    y = luma.astype(np.float32)
    f = reduction(*y.shape)
    if f > 1:
        y = cv2.resize(y, (y.shape[1] // f, y.shape[0] // f), interpolation=cv2.INTER_AREA)
    sigma = float(cell_px(*luma.shape) / f)  # a cell's scale, which grows with the frame as the embedder's does
    high = y - cv2.GaussianBlur(y, (0, 0), sigma)
    contrast = np.sqrt(cv2.GaussianBlur(high * high, (0, 0), sigma))
    return high / (contrast + 1.0)


class ClipSum:
    """A clip's whitened luma summed two ways: plainly (``static``) and signed by the time sequence
    (``signed``), at the frames' size shrunk by ``reduction``. ``add(luma, t)`` per frame (t: its time
    in seconds), then ``detect(key)``."""

    def __init__(self) -> None:
        self.static: np.ndarray | None = None
        self.signed: np.ndarray | None = None
        self.frames = 0
        self.scale = 1  # frame px per sum px

    def add(self, luma: np.ndarray, t: float) -> None:
        if self.static is None:
            self.scale = reduction(*luma.shape)
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
            return Detection(False, 0.0, 1.0, None, 0, 0.0, (0, 0), 0, 0, "static", None)
        return detect_sums(self.sums(), self.frames, key or Key.default(), self.scale)


@dataclass(frozen=True)
class Detection:
    marked: bool  # p_value < DETECT_P
    z: float  # the best sync peak over every sum, period and shift, in standard deviations of an unmarked clip's correlation
    p_value: float  # chance of a peak this high in an unmarked clip (calibrated: see null_p)
    payload: pl.Payload | None  # decoded through the payload's code; None when it is refused, or when no mark is found
    corrected: int  # coded bits the code corrected
    period: float  # tile period found, frame px (the frame's scale relative to the mark's)
    shift: tuple[float, float]  # the tile's displacement found, in fold bins (a crop)
    frames: int
    bits_agree: int  # coded bits read as the decoded payload's (of 64); 0 without a payload
    sum: str  # the sum the peak was found in: "static" or "signed" (the time-varying mark of small frames)
    soft: np.ndarray | None = None  # the coded bits' evidence at the peak (refined where marked), for benches

    def as_dict(self) -> dict:
        return {
            "marked": self.marked,
            "z": round(self.z, 2),
            "p_value": float(f"{self.p_value:.3g}"),
            "payload": self.payload.describe() if self.payload else None,
            "corrected_bits": self.corrected,
            "period_px": round(self.period, 2),
            "frames": self.frames,
            "sum": self.sum,
        }


SUMS = ("static", "signed")  # ClipSum's two sums; the signed one is searched for the moving mark's layout


@lru_cache(maxsize=16)
def _sync_reference(key: Key, moving: bool) -> np.ndarray:
    """The key's conjugate sync spectrum at the fold's size (BINS x BINS // 2 + 1, unit magnitude on its frequencies)."""
    ref = _spectrum(key, None, BINS, moving)
    return np.conj(ref / np.abs(ref).max())


def references(keys) -> np.ndarray:
    """Sync references of several keys, as ``search`` takes them: (sums, K, BINS, BINS // 2 + 1), one per sum."""
    return np.stack([np.stack([_sync_reference(k, name == "signed") for k in keys]) for name in SUMS])


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


def _fold_spectra(sums: tuple[np.ndarray, ...]):
    """(sum index, period, rfft2 of the fold) for every sum and candidate period."""
    for si, total in enumerate(sums):
        for period in candidate_periods(*total.shape):
            yield si, period, np.fft.rfft2(fold(total, period))


def _phases(spectrum: np.ndarray) -> np.ndarray:
    return spectrum / np.maximum(np.abs(spectrum), 1e-30)


def search(sums: tuple[np.ndarray, ...], refs: np.ndarray) -> tuple[np.ndarray, ...]:
    """Every key's best peak over the sums, periods and cyclic shifts: the statistic detection thresholds.

    refs (``references``): per sum, (K, BINS, BINS // 2 + 1) conjugate sync spectra. The fold's spectrum is
    reduced to its phases (phase-only matched filtering): each sync frequency then adds a unit phasor,
    so that a picture's own strong frequencies weigh no more than its weak ones, and in an unmarked clip
    the correlation at a shift has a known spread whatever the picture: sqrt(2 n) / BINS^2 for n sync
    frequencies. Returns per key the peak z, the index of the sum, the period and the flat shift where it
    was found. One fold per sum and period serves every key: wrong-key trials (bench/watermark.py) cost
    a few FFTs each.
    """
    k = refs.shape[1]
    sd = math.sqrt(2.0 * _sync_count(refs[0, 0])) / (BINS * BINS)
    best = np.full(k, -np.inf)
    where_sum, where_period, where_shift = np.zeros(k, np.int64), np.zeros(k), np.zeros(k, np.int64)
    for si, period, spectrum in _fold_spectra(sums):
        c = np.fft.irfft2(_phases(spectrum)[None] * refs[si], s=(BINS, BINS)).reshape(k, -1)
        at = np.argmax(c, axis=1)
        z = c[np.arange(k), at] / sd
        better = z > best
        best[better], where_sum[better], where_period[better], where_shift[better] = z[better], si, period, at[better]
    return best, where_sum, where_period, where_shift


def _sync_count(ref: np.ndarray) -> float:
    """Sync frequencies in a reference spectrum, each conjugate pair once."""
    return np.count_nonzero(ref) - np.count_nonzero(ref[:, 0]) / 2


def null_p(z: float, height: int, width: int) -> float:
    """The chance that an unmarked clip (or another key's) peaks at ``z`` or more, for this frame size.

    The search's best of ``tests`` correlated Gaussian peaks (2 sums x BINS^2 shifts x the periods
    that fit) has the tail 1 - exp(-NULL_TESTS_FACTOR x tests x Q(z)), Q the normal tail: a Bonferroni
    count with an effective number of tests fitted to wrong-key trials (bench/watermark_scale.py;
    bench/RESULTS.md), which also absorbs a per-shift tail heavier than Gaussian.
    """
    tests = 2 * BINS * BINS * max(len(candidate_periods(height, width)), 1)
    return float(-math.expm1(-NULL_TESTS_FACTOR * tests * 0.5 * math.erfc(z / math.sqrt(2))))


def _refine(total: np.ndarray, period: float, conj: np.ndarray) -> tuple[float, np.ndarray, tuple[float, float]]:
    """The period between the search's grid points, with its fold's spectrum and the sync peak's position.

    The payload's frequencies need the period closer than the sync's search finds it (0.7% off over a
    512 px frame turns them by up to a radian), and the sync's peak is flat and rippled (by the shift's
    whole bins) over a percent of period. So the peak, interpolated between bins, is measured over two
    grid steps each side and a parabola fitted to it; its vertex is the period.
    """
    logs = np.linspace(-2, 2, 17) * math.log(PERIOD_STEP)
    heights = []
    for step in logs:
        c = np.fft.irfft2(_phases(np.fft.rfft2(fold(total, period * math.exp(step)))) * conj, s=(BINS, BINS))
        heights.append(_peak(c)[1])
    a, b, _ = np.polyfit(logs, heights, 2)
    best = float(np.clip(-b / (2 * a), logs[0], logs[-1])) if a < 0 else float(logs[int(np.argmax(heights))])
    period = period * math.exp(best)
    spectrum = np.fft.rfft2(fold(total, period))
    return period, spectrum, _peak(np.fft.irfft2(_phases(spectrum) * conj, s=(BINS, BINS)))[0]


def _peak(c: np.ndarray) -> tuple[tuple[float, float], float]:
    """The correlation's peak between bins: its position (fold bins) and height, from a parabola through
    the top bin and its neighbours on each axis."""
    c = c.reshape(BINS, BINS)
    y, x = divmod(int(np.argmax(c)), BINS)
    top = float(c[y, x])

    def vertex(m: float, p: float) -> tuple[float, float]:  # (offset, lift) of the parabola through m, top, p
        d = m - 2 * top + p
        return (0.0, 0.0) if d >= 0 else (float(np.clip(0.5 * (m - p) / d, -0.5, 0.5)), float(-0.125 * (m - p) ** 2 / d))

    (dy, ly), (dx, lx) = vertex(c[y - 1, x], c[(y + 1) % BINS, x]), vertex(c[y, x - 1], c[y, (x + 1) % BINS])
    return (y + dy, x + dx), top + ly + lx


def detect_sums(sums: tuple[np.ndarray, np.ndarray], frames: int, key: Key, scale: int = 1) -> Detection:
    """Search sum, period and shift for the key's sync pattern; decode the payload at the best.
    ``scale``: frame px per sum px (ClipSum.scale), for the period reported."""
    z, si, period, at = (a[0] for a in search(sums, references([key])))
    h, w = sums[0].shape
    name = SUMS[int(si)]
    conj = _sync_reference(key, name == "signed")
    if not np.isfinite(z):
        return Detection(False, 0.0, 1.0, None, 0, 0.0, (0, 0), frames, 0, name, None)
    p = null_p(float(z), h, w)
    marked = p < DETECT_P
    shift = tuple(float(v) for v in divmod(int(at), BINS))
    payload, corrected, agree = None, 0, 0
    if marked:  # a word the code accepts out of noise says nothing; the period is refined for it
        period, spectrum, shift = _refine(sums[int(si)], float(period), conj)
    else:
        spectrum = np.fft.rfft2(fold(sums[int(si)], float(period)))
    soft = _soft_bits(spectrum, shift, key, name == "signed")
    if marked:
        payload, corrected = pl.decode(soft)
        agree = int(np.sum((soft > 0) == (pl.encode(payload) > 0))) if payload else 0
    return Detection(marked, float(z), p, payload, corrected, float(period) * scale, shift, frames, agree, name, soft)


def _soft_bits(spectrum: np.ndarray, shift: tuple[float, float], key: Key, moving: bool) -> np.ndarray:
    """Each coded bit's evidence: its frequency of the fold, the displacement undone, along its phase."""
    lay = layout(key, moving)
    ky, kx = lay.data
    ramp = np.exp(2j * np.pi * (ky * shift[0] + kx * shift[1]) / BINS)
    return np.real(spectrum[ky % BINS, kx] * ramp * np.exp(-1j * lay.data_phase))


def detect_frames(frames: np.ndarray, key: Key | None = None, fps: float = 25.0) -> Detection:
    """Detection over uint8 RGB frames (N, H, W, 3) or luma (N, H, W) shown at ``fps``."""
    s = ClipSum()
    for i, f in enumerate(frames):
        s.add(_luma(f) if f.ndim == 3 else f, i / fps)
    return s.detect(key)
