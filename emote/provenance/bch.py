"""The payload's code: a [64, 32] binary code from the extended BCH(63, 36) code, decoded from soft bits.

BCH(63, 36) over GF(2^6) (primitive x^6 + x + 1; zeros alpha^1, 3, 5, 7, 9: designed distance 11)
with an overall parity bit is [64, 36, 12]. Its subcode whose 4 extra message bits are parities of
the 32 payload bits is [64, 32, >= 12]: any 5 wrong bits are corrected by hard decisions alone.
Hard decisions throw away what the detector knows: which bits are weak. ``decode`` is ordered
statistics decoding (Fossorier & Lin 1995): the 32 most reliable independent positions are taken as
right, up to ``ORDER`` of them flipped, and of those candidate codewords the one that agrees best
with the soft bits wins; it corrects most patterns of 6-10 wrong bits that sit on weak positions.
A best codeword is still found in noise: payload.py decides whether it explains the soft bits.

Numpy only: a generator matrix of 32 x 64 bits, a Gaussian elimination and a few thousand candidates
per clip.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

PRIMITIVE = 0b1000011  # x^6 + x + 1
ZEROS = (1, 3, 5, 7, 9)  # the BCH code's designed zeros: alpha^1 .. alpha^10 (conjugates included)
N = 64  # coded bits: 63 of the BCH code and its overall parity
K = 32  # payload bits
EXTRA = 4  # the BCH code's other message bits: parities of the payload bits (bit i goes to parity i mod 4)
ORDER = 3  # ordered statistics decoding flips up to this many of the most reliable positions


def _gf_tables() -> tuple[list[int], list[int]]:
    exp, log = [0] * (2 * 63), [0] * 64
    x = 1
    for i in range(63):
        exp[i] = exp[i + 63] = x
        log[x] = i
        x <<= 1
        if x & 64:
            x ^= PRIMITIVE
    return exp, log


@lru_cache(maxsize=1)
def generator_polynomial() -> int:
    """g(x) of BCH(63, 36) as an int (bit i = coefficient of x^i): the minimal polynomials of ZEROS' cosets."""
    exp, log = _gf_tables()
    g = [1]  # coefficients over GF(2^6), lowest degree first
    seen: set[int] = set()
    for z in ZEROS:
        coset = set()
        e = z
        while e not in coset:
            coset.add(e)
            e = 2 * e % 63
        if coset & seen:
            continue
        seen |= coset
        for e in sorted(coset):  # g *= (x + alpha^e)
            root = exp[e]
            nxt = [0] * (len(g) + 1)
            for i, c in enumerate(g):
                nxt[i + 1] ^= c
                if c:
                    nxt[i] ^= exp[log[c] + log[root]]
            g = nxt
    if any(c not in (0, 1) for c in g):
        raise AssertionError("BCH generator polynomial is not binary")
    return sum(c << i for i, c in enumerate(g))


def _encode36(message: int) -> int:
    """Systematic BCH(63, 36): the message in the high 36 coefficients, the remainder mod g below."""
    g = generator_polynomial()
    parity_bits = g.bit_length() - 1  # 27
    r = message << parity_bits
    for shift in range(r.bit_length() - 1, parity_bits - 1, -1):
        if r >> shift & 1:
            r ^= g << (shift - parity_bits)
    return (message << parity_bits) | r


@lru_cache(maxsize=1)
def generator_matrix() -> np.ndarray:
    """(K, N) uint8: row i is the codeword of payload bit i alone; the first K columns are the payload (systematic)."""
    rows = []
    for i in range(K):
        bits = [0] * K
        bits[i] = 1
        rows.append(_codeword(bits))
    return np.array(rows, np.uint8)


def _codeword(bits) -> list[int]:
    extra = [sum(bits[j] for j in range(i, K, EXTRA)) % 2 for i in range(EXTRA)]
    message = int("".join(str(b) for b in list(bits) + extra), 2)  # most significant first
    word = _encode36(message)  # 63 bits: message (36) then parity (27), most significant first
    coded = [word >> (62 - i) & 1 for i in range(63)]
    return coded + [sum(coded) % 2]


def encode(bits: np.ndarray) -> np.ndarray:
    """K payload bits (0/1) -> N coded bits (uint8 0/1), the payload first."""
    return (np.asarray(bits, np.int64) @ generator_matrix() % 2).astype(np.uint8)


@dataclass(frozen=True)
class Decoded:
    bits: np.ndarray  # K payload bits (uint8 0/1)
    codeword: np.ndarray  # N coded bits
    flipped: int  # coded bits that differ from the hard decisions


@lru_cache(maxsize=4)
def _flip_patterns(order: int) -> np.ndarray:
    """(patterns, K) uint8: every set of at most ``order`` of the K reliable positions."""
    rows = [()] + [c for r in range(1, order + 1) for c in itertools.combinations(range(K), r)]
    out = np.zeros((len(rows), K), np.uint8)
    for i, c in enumerate(rows):
        out[i, list(c)] = 1
    return out


def decode(soft: np.ndarray, order: int = ORDER) -> Decoded:
    """The codeword that agrees best with ``soft`` (N values, positive = 1) among the OSD candidates."""
    soft = np.asarray(soft, np.float64)
    if soft.shape != (N,):
        raise ValueError(f"soft bits must be ({N},), got {soft.shape}")
    perm = np.argsort(-np.abs(soft), kind="stable")
    g = generator_matrix()[:, perm].copy()
    pivots, row = [], 0
    for col in range(N):  # the K most reliable independent positions, G made the identity there
        if row == K:
            break
        hits = np.flatnonzero(g[row:, col])
        if hits.size == 0:
            continue
        r = row + int(hits[0])
        g[[row, r]] = g[[r, row]]
        others = np.flatnonzero(g[:, col])
        g[others[others != row]] ^= g[row]
        pivots.append(col)
        row += 1
    s = soft[perm]
    hard = (s > 0).astype(np.uint8)
    trials = (hard[pivots][None, :] ^ _flip_patterns(order)).astype(np.float32)
    candidates = ((trials @ g.astype(np.float32)).astype(np.uint8) & 1).astype(np.float32)  # sums of <= K ones: exact
    best = candidates[int(np.argmax(candidates @ (2 * s).astype(np.float32)))].astype(np.uint8)
    codeword = np.empty(N, np.uint8)
    codeword[perm] = best
    return Decoded(codeword[:K].copy(), codeword, int(np.count_nonzero(codeword != (soft > 0))))
