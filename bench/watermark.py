"""The watermark under attack: detection, payload, bit accuracy, false positives, cost, speed.

    python bench/watermark.py --clips 4 --frames 50 --sizes 128,512 --wrong-keys 40
    python bench/watermark.py --clips 3 --frames 75 --sizes 512 --baselines dwtDctSvd,rivaGan --baseline-stride 5

The issue's scale (the runtime's own clips, 100,000 wrong keys, unmarked videos): bench/watermark_scale.py.

Clips: the example portrait (or --images DIR), moved by a random walk (camera shake) with
sensor-like noise, at each size, 25 fps, delivered as H.264 CRF 18 like `emote generate`,
then attacked through PyAV. For every attack: detection rate at the decision threshold
(watermark.DETECT_P), exact payload rate, raw bit accuracy of the 64 coded bits, and on the
same attacked clips unmarked and with wrong keys, the highest z and how many were (falsely)
detected. Cost: luma PSNR and SSIM of marked against unmarked frames; embed and detect
milliseconds per frame (one thread: OpenCV and numpy limited to one).

Baselines (``--baselines dwtDctSvd,rivaGan``): the `invisible-watermark` package's DWT-DCT-SVD
and RivaGAN marks through the same clips and attacks, each frame carrying the same 32 bits
(the package's own embed and decode, per frame, on frames of at least 256x256: it refuses
smaller ones, so not at 128 px). A clip's bits are the frames' majority vote; it is "detected"
when at least BASELINE_MATCH of the 32 bits match the payload, the smallest count whose chance
on an unmarked clip (independent fair bits) is under 1e-4, the project's false-positive bar.
Install without its dependencies (it requires opencv-python, which would replace the headless
OpenCV the project uses): ``pip install --no-deps invisible-watermark==0.2.0 PyWavelets``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

cv2.setNumThreads(1)

from emote.bench.attacks import h264  # noqa: E402
from emote.provenance import payload as pl  # noqa: E402
from emote.provenance import watermark as wm  # noqa: E402


def make_clip(image: np.ndarray, size: int, frames: int, seed: int) -> np.ndarray:
    big = cv2.resize(image, (size * 5 // 4,) * 2, interpolation=cv2.INTER_AREA).astype(np.float32)
    rng = np.random.default_rng(seed)
    dx = dy = 0.0
    out = []
    for _ in range(frames):
        dx, dy = dx + rng.normal(0, size / 400), dy + rng.normal(0, size / 400)
        m = np.float32([[1, 0, -size / 8 + dx], [0, 1, -size / 8 + dy]])
        f = cv2.warpAffine(big, m, (size, size), borderMode=cv2.BORDER_REFLECT) + rng.normal(0, 2, (size, size, 3))
        out.append(np.clip(f, 0, 255).astype(np.uint8))
    return np.stack(out)


def resize(frames: np.ndarray, scale: float) -> np.ndarray:
    h, w = frames.shape[1:3]
    size = (max(2, int(w * scale) // 2 * 2), max(2, int(h * scale) // 2 * 2))
    return np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames])


def screen(frames: np.ndarray) -> np.ndarray:
    """A screen recording: 0.9x, display gamma 1.1, a little blur, CRF 30."""
    gamma = np.clip(255.0 * (np.arange(256) / 255.0) ** 1.1, 0, 255).astype(np.uint8)
    return h264(np.stack([cv2.GaussianBlur(cv2.LUT(f, gamma), (0, 0), 0.7) for f in resize(frames, 0.9)]), 30)


def crop(frames: np.ndarray, frac: float) -> np.ndarray:
    h, w = frames.shape[1:3]
    dy, dx = int(h * frac), int(w * frac)
    return np.ascontiguousarray(frames[:, dy : h - dy, dx : w - dx])


FPS = {"25 -> 15 fps + CRF 23": 15}  # the attacked clip's frame rate where it is not 25

ATTACKS = {
    "CRF 18 (as delivered)": lambda x: x,
    "CRF 28": lambda x: h264(x, 28),
    "CRF 35": lambda x: h264(x, 35),
    "0.5x + CRF 23": lambda x: h264(resize(x, 0.5), 23),
    "crop 10% a side + CRF 23": lambda x: h264(crop(x, 0.1), 23),
    "25 -> 15 fps + CRF 23": lambda x: h264(x[(np.arange(int(len(x) * 0.6)) / 0.6).astype(int)], 23, 15),
    "brightness +10%": lambda x: h264(np.clip(x.astype(np.float32) * 1.1, 0, 255).astype(np.uint8), 23),
    "contrast -10%": lambda x: h264(np.clip((x.astype(np.float32) - 128) * 0.9 + 128, 0, 255).astype(np.uint8), 23),
    "screen recording": screen,
}


BASELINE_BITS = 32
FPR = 1e-4


def baseline_match(bits: int = BASELINE_BITS, fpr: float = FPR) -> int:
    """The fewest matching bits of ``bits`` whose chance under fair coin flips is at most ``fpr``."""
    from math import comb

    for k in range(bits + 1):
        if sum(comb(bits, j) for j in range(k, bits + 1)) / 2**bits <= fpr:
            return k
    return bits + 1


BASELINE_MATCH = baseline_match()  # 27 of 32 (chance 5.7e-5)


class Baseline:
    """One of invisible-watermark's methods, per frame: embed 32 bits, decode them back (RGB uint8 frames)."""

    def __init__(self, method: str, stride: int = 1):
        self.stride = stride
        try:
            from imwatermark import WatermarkDecoder, WatermarkEncoder
        except ImportError:
            raise SystemExit("--baselines: pip install --no-deps invisible-watermark==0.2.0 PyWavelets") from None
        self.method, self._enc, self._dec = method, WatermarkEncoder, WatermarkDecoder
        if method == "rivaGan":
            WatermarkEncoder.loadModel()

    def embed(self, frames: np.ndarray, bits: np.ndarray) -> np.ndarray:
        enc = self._enc()
        enc.set_watermark("bits", [int(b) for b in bits])
        return np.stack([cv2.cvtColor(enc.encode(cv2.cvtColor(f, cv2.COLOR_RGB2BGR), self.method), cv2.COLOR_BGR2RGB) for f in frames])

    def decode(self, frames: np.ndarray) -> np.ndarray | None:
        """The clip's bits by the majority vote of every ``stride``-th frame, or None when the frames are under 256x256 (refused)."""
        h, w = frames.shape[1:3]
        if h * w < 256 * 256:
            return None
        dec = self._dec("bits", BASELINE_BITS)
        votes = [np.asarray(dec.decode(cv2.cvtColor(f, cv2.COLOR_RGB2BGR), self.method), np.float32) for f in frames[:: self.stride]]
        return np.mean(votes, axis=0) > 0.5


def run_baseline(name: str, baseline: Baseline, size: int, clips: list[np.ndarray], attacks: dict) -> dict:
    """Detection, exact payload, bit accuracy and false positives of a baseline over the clips and attacks."""
    rng = np.random.default_rng(size)
    rows = {k: {"found": 0, "exact": 0, "bits": [], "null_found": 0, "refused": 0} for k in attacks}
    psnrs, embed_ms, detect_ms = [], [], []
    for plain in clips:
        bits = rng.integers(0, 2, BASELINE_BITS).astype(bool)
        t0 = time.perf_counter()
        marked = baseline.embed(plain, bits)
        embed_ms.append((time.perf_counter() - t0) * 1000 / len(plain))
        psnrs.append(float(10 * np.log10(255**2 / np.mean((wm._luma(plain) - wm._luma(marked)) ** 2))))
        delivered_marked, delivered_plain = h264(marked, 18), h264(plain, 18)
        for attack, fn in attacks.items():
            got = fn(delivered_marked)
            t0 = time.perf_counter()
            decoded = baseline.decode(got)
            r = rows[attack]
            if decoded is None:
                r["refused"] += 1
                continue
            detect_ms.append((time.perf_counter() - t0) * 1000 / len(got[:: baseline.stride]))
            matches = int(np.sum(decoded == bits))
            r["found"] += matches >= BASELINE_MATCH
            r["exact"] += matches == BASELINE_BITS
            r["bits"].append(matches / BASELINE_BITS)
            null = baseline.decode(fn(delivered_plain))
            r["null_found"] += int(np.sum(null == bits)) >= BASELINE_MATCH
        print(f"  {name} {size} px clip done", flush=True)
    n = len(clips)
    return {
        "psnr_db": [round(min(psnrs), 2), round(float(np.mean(psnrs)), 2)],
        "embed_ms_per_frame": round(float(np.median(embed_ms)), 2),
        "detect_ms_per_frame": round(float(np.median(detect_ms)), 2) if detect_ms else None,
        "attacks": {
            k: (
                {"refused": f"{r['refused']}/{n} (frames under 256x256)"}
                if r["refused"] == n
                else {
                    "detected": f"{r['found']}/{n}",
                    "exact_payload": f"{r['exact']}/{n}",
                    "bit_accuracy": round(float(np.mean(r["bits"])), 3),
                    "false_positives": f"{r['null_found']}/{n}",
                }
            )
            for k, r in rows.items()
        },
    }


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of luma (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5)."""
    x, y = a.astype(np.float64), b.astype(np.float64)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    blur = lambda z: cv2.GaussianBlur(z, (11, 11), 1.5)
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    return float(np.mean(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))))


def clip_sum(frames: np.ndarray, fps: float) -> wm.ClipSum:
    """The detector's sums of RGB frames, their luma read as `emote detect` reads a file's (8-bit gray)."""
    s = wm.ClipSum()
    for i, f in enumerate(frames):
        s.add(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY), i / fps)
    return s


def null_scores(sums, keys: list) -> list[float]:
    """Each key's detection statistic on the sums: watermark.search once for all the keys."""
    return wm.search(sums, wm.references(keys))[0].tolist()


def fit_null(trials: list[dict]) -> dict:
    """The effective-tests factor of watermark.null_p fitted to wrong-key and unmarked trials.

    Under null_p's model each trial's f * tests * Q(z) is Exp(1) (its p-value, -log(1 - p), is), so
    the maximum-likelihood f is trials / sum(tests * Q(z)). Checked against the empirical tail: how
    many trials the fitted threshold (p < DETECT_P) passes, and the highest z.
    """
    from math import erfc, sqrt

    u = []
    for t in trials:
        tests = 2 * wm.BINS * wm.BINS * len(wm.candidate_periods(t["height"], t["width"]))
        u += [tests * 0.5 * erfc(z / sqrt(2)) for z in t["z"]]
    u = np.asarray(u)
    f = len(u) / float(np.sum(u))
    p = -np.expm1(-f * u)
    return {
        "trials": int(len(u)),
        "factor": round(f, 3),
        "max_z": round(float(max(max(t["z"]) for t in trials)), 2),
        "passing_threshold_with_fit": int(np.sum(p < wm.DETECT_P)),
        "passing_threshold_as_set": int(sum(wm.null_p(z, t["height"], t["width"]) < wm.DETECT_P for t in trials for z in t["z"])),
        "p_quantiles_1e-1_1e-2_1e-3": [float(f"{np.mean(p < q):.3g}") for q in (1e-1, 1e-2, 1e-3)],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clips", type=int, default=4, help="clips per size")
    ap.add_argument("--frames", type=int, default=50, help="frames per clip (25 fps)")
    ap.add_argument("--sizes", default="128,512")
    ap.add_argument("--wrong-keys", type=int, default=40, help="wrong-key trials per size, spread over the attacked clips")
    ap.add_argument("--images", help="folder of portraits (default: the example portrait)")
    ap.add_argument("--attacks", help="comma-separated subset of the attack names")
    ap.add_argument("--baselines", help="comma-separated: dwtDctSvd, rivaGan (invisible-watermark; see above)")
    ap.add_argument(
        "--baseline-stride", type=int, default=1, help="baselines vote over every N-th frame (RivaGAN: about 1 s a frame on a CPU)"
    )
    ap.add_argument("-o", "--out", default="build/bench-watermark/results.json")
    args = ap.parse_args()
    baselines = {b: Baseline(b, args.baseline_stride) for b in args.baselines.split(",")} if args.baselines else {}

    from PIL import Image

    from emote.runtime.examples import PORTRAIT

    paths = sorted(Path(args.images).iterdir()) if args.images else [Path(PORTRAIT)]
    images = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    attacks = {k: v for k, v in ATTACKS.items() if not args.attacks or k in args.attacks.split(",")}
    key = wm.Key.default()
    record = {
        "command": "python " + " ".join(sys.argv),
        "cpu": platform.processor() or platform.machine(),
        "threads": 1,
        "detect_p": wm.DETECT_P,
        "sizes": {},
    }
    try:
        with open("/proc/cpuinfo") as f:
            record["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    trials: list[dict] = []
    for size in [int(s) for s in args.sizes.split(",")]:
        rows = {name: {"found": 0, "exact": 0, "bits": [], "z": [], "null_z": [], "null_found": 0, "null_trials": 0} for name in attacks}
        psnrs, ssims, embed_ms, detect_ms = [], [], [], []
        wrong_per_clip = max(1, args.wrong_keys // max(1, 2 * args.clips * len(attacks)))  # on the marked clip and its unmarked twin
        plains = [make_clip(images[c % len(images)], size, args.frames, seed=c) for c in range(args.clips)]
        for c in range(args.clips):
            plain = plains[c]
            face = np.zeros((size, size), np.float32)
            face[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 1
            payload = pl.Payload(pl.GENERATOR_EMOTE, 1000 + c)
            coded = pl.encode(payload) > 0
            emb = wm.Embedder(key, payload, fps=25)
            t0 = time.perf_counter()
            marked = emb.mark(plain, face)
            embed_ms.append((time.perf_counter() - t0) * 1000 / len(plain))
            psnrs.append(float(10 * np.log10(255**2 / np.mean((wm._luma(plain) - wm._luma(marked)) ** 2))))
            ssims.append(float(np.mean([ssim(wm._luma(a), wm._luma(b)) for a, b in zip(plain[::10], marked[::10])])))
            delivered_marked, delivered_plain = h264(marked, 18), h264(plain, 18)
            for name, attack in attacks.items():
                got, ref = attack(delivered_marked), attack(delivered_plain)
                fps = FPS.get(name, 25)
                t0 = time.perf_counter()
                s = clip_sum(got, fps)
                d = s.detect(key)
                detect_ms.append((time.perf_counter() - t0) * 1000 / len(got))
                r = rows[name]
                r["found"] += d.marked
                r["z"].append(d.z)
                r["exact"] += d.payload == payload
                # raw bit accuracy at the sum, period and shift found, before the code
                r["bits"].append(float(np.mean((d.soft > 0) == coded)))
                # the null: the unmarked twin with the key, and both with wrong keys (one fold, many keys)
                wrong = [wm.Key(f"wrong {size} {c} {name} {k}") for k in range(wrong_per_clip)]
                h, w = got.shape[1:3]
                zs = np.array(null_scores(clip_sum(ref, fps).sums(), [key] + wrong) + null_scores(s.sums(), wrong))
                r["null_z"] += zs.tolist()
                r["null_found"] += sum(wm.null_p(float(z), h, w) < wm.DETECT_P for z in zs)
                r["null_trials"] += len(zs)
                trials.append({"height": h, "width": w, "z": zs.round(4).tolist()})
            print(f"{size} px clip {c + 1}/{args.clips} done", flush=True)
        n = args.clips
        record["sizes"][size] = {
            "clips": n,
            "frames": args.frames,
            "psnr_db": [round(min(psnrs), 2), round(float(np.mean(psnrs)), 2)],
            "ssim": [round(min(ssims), 4), round(float(np.mean(ssims)), 4)],
            "embed_ms_per_frame": round(float(np.median(embed_ms)), 2),
            "detect_ms_per_frame": round(float(np.median(detect_ms)), 2),
            "attacks": {
                k: {
                    "detected": f"{r['found']}/{n}",
                    "exact_payload": f"{r['exact']}/{n}",
                    "bit_accuracy": round(float(np.mean(r["bits"])), 3),
                    "z_min_median": [round(float(np.min(r["z"])), 2), round(float(np.median(r["z"])), 2)],
                    "false_positives": f"{r['null_found']}/{r['null_trials']}",
                    "max_null_z": round(float(np.max(r["null_z"])), 2),
                }
                for k, r in rows.items()
            },
        }
        for name, baseline in baselines.items():
            if size * size < 256 * 256:
                record["sizes"][size].setdefault("baselines", {})[name] = "refused: frames under 256x256"
                continue
            record["sizes"][size].setdefault("baselines", {})[name] = run_baseline(name, baseline, size, plains, attacks)
    record["null_fit"] = fit_null(trials)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2))
    for size, s in record["sizes"].items():
        print(
            f"\n{size} px, {s['clips']} clips x {s['frames']} frames: luma PSNR min/mean {s['psnr_db']}, SSIM {s['ssim']}, "
            f"embed {s['embed_ms_per_frame']} ms/frame, detect {s['detect_ms_per_frame']} ms/frame (1 thread)"
        )
        print("| attack | detected | z min/median | exact payload | bit accuracy | false positives (unmarked + wrong keys) | max null z |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for k, a in s["attacks"].items():
            zs = "/".join(str(v) for v in a["z_min_median"])
            print(
                f"| {k} | {a['detected']} | {zs} | {a['exact_payload']} | {a['bit_accuracy']} | {a['false_positives']} | {a['max_null_z']} |"
            )
        for name, b in s.get("baselines", {}).items():
            if isinstance(b, str):
                print(f"\n{name} at {size} px: {b}")
                continue
            print(
                f"\n{name} at {size} px (detected: >= {BASELINE_MATCH}/32 bits): luma PSNR {b['psnr_db']}, embed {b['embed_ms_per_frame']} ms/frame"
            )
            print("| attack | detected | exact payload | bit accuracy | false positives |")
            print("| --- | --- | --- | --- | --- |")
            for k, a in b["attacks"].items():
                if "refused" in a:
                    print(f"| {k} | {a['refused']} | | | |")
                else:
                    print(f"| {k} | {a['detected']} | {a['exact_payload']} | {a['bit_accuracy']} | {a['false_positives']} |")
    print(f"\nnull fit: {record['null_fit']}")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
