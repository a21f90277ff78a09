"""The watermark at the issue's scale: generated clips, every attack, wrong keys and unmarked videos.

    python bench/watermark_scale.py --bundle build/demo/bundle --clips 200 --wrong-keys 100000 -o build/bench-watermark-scale
    python bench/watermark_scale.py -o build/bench-watermark-scale --summary      # the tables again, from what is there

Clips: the runtime's own output with the mark off (``Pipeline(..., unmarked_research=True)``),
each a fresh synthetic person (training/portrait.py; every 10th the example portrait) speaking
utterances of the synthetic speaker (training/speech.py, espeak-ng) for 5-15 s, then marked as
the runtime marks them (watermark.Embedder with the portrait's face mask, a payload of its own)
and delivered as H.264 CRF 18, then attacked (bench/watermark.py's attacks). The unmarked twin of
every clip goes through the same attacks: the unmarked-video null. The example portrait under a
random camera motion per clip, and (``--photos N``) a public-domain photograph (Grace Hopper, US
Navy, from matplotlib's sample data) under random camera motions at 128 and 256 px, add videos
no model made. Wrong
keys on every attacked marked and unmarked clip make up the wrong-key null (one fold per period
serves every key). The audio mark: each clip's track marked, through AAC 64 kbps, and unmarked.

Resumable: one JSON line per clip in OUT/clips-I.jsonl (I: the shard, ``--shard I/N``, one
process a core); a rerun makes only the clips that are not there. The summary reads the lines, so
the decision threshold can be refitted without rerunning (its p-values use watermark.null_p as it is
now; the z's are kept), and the payload decoder changed (the soft bits are kept).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import watermark as harness  # noqa: E402  (bench/watermark.py: the attacks, clips, SSIM)

from emote.bench.attacks import aac, h264  # noqa: E402
from emote.provenance import audio_mark as am  # noqa: E402
from emote.provenance import payload as pl  # noqa: E402
from emote.provenance import watermark as wm  # noqa: E402
from emote.runtime.pipeline import resize_frames  # noqa: E402

PHOTO_ATTACKS = ("CRF 18 (as delivered)", "CRF 28", "0.5x + CRF 23")  # what the photographs' videos go through
MUST = {  # the bars: attack -> detection rate
    "CRF 28": 0.99,
    "0.5x + CRF 23": 0.99,
    "crop 10% a side + CRF 23": 0.99,
    "25 -> 15 fps + CRF 23": 0.99,
    "CRF 35": 0.95,
    "screen recording": 0.95,
}
EXACT = ("CRF 28", "25 -> 15 fps + CRF 23", "crop 10% a side + CRF 23")  # exact payload in >= 95%
FPR = 1e-4


def clip_inputs(index: int, seconds: float):
    """Clip ``index``'s portrait, face box and speech: seeded, so that a rerun makes the same clip."""
    from PIL import Image

    from emote.runtime.examples import PORTRAIT
    from training.data import make_audio, sample_rng
    from training.portrait import face_box, random_params, render_portrait

    rng = sample_rng(1919, index)
    if index % 10 == 9:
        image, box = np.asarray(Image.open(PORTRAIT).convert("RGB")), None
    else:
        person = random_params(rng)
        image, box = render_portrait(person, 256), face_box(person, 256)
    parts, total = [], 0
    while total < seconds * 16000:
        parts.append(make_audio(rng)[0])
        total += len(parts[-1])
    return image, box, np.concatenate(parts)[: int(seconds * 16000)]


def attacked_sums(frames: np.ndarray, name: str) -> wm.ClipSum:
    return harness.clip_sum(harness.ATTACKS[name](frames), harness.FPS.get(name, 25))


def one_clip(pipe, index: int, wrong_per_pair: int, rng: np.random.Generator, size: int | None = None, attacks=None) -> dict:
    seconds = float(rng.uniform(5, 15))
    image, box, audio = clip_inputs(index, seconds)
    portrait = pipe.prepare(image, box)
    t0 = time.perf_counter()
    plain = pipe.generate(portrait, audio, seed=index)
    generated_s = time.perf_counter() - t0
    plain = resize_frames(plain, size or plain.shape[1])  # as Pipeline(size=...) delivers them
    key = wm.Key.default()
    payload = pl.Payload(pl.GENERATOR_EMOTE, 100_000 + index)
    coded = pl.encode(payload) > 0
    t0 = time.perf_counter()
    marked = wm.Embedder(key, payload, fps=pipe.fps).mark(plain, portrait.mask)
    embed_ms = (time.perf_counter() - t0) * 1000 / len(plain)
    lp, lm = wm._luma(plain), wm._luma(marked)
    rec = {
        "clip": index,
        "seconds": round(seconds, 2),
        "frames": len(plain),
        "size": plain.shape[1],
        "generated_s": round(generated_s, 2),
        "psnr_db": round(float(10 * np.log10(255**2 / np.mean((lp - lm) ** 2))), 2),
        "ssim": round(float(np.mean([harness.ssim(a, b) for a, b in zip(lp[::25], lm[::25])])), 4),
        "embed_ms_per_frame": round(embed_ms, 3),
        "attacks": {},
    }
    delivered_marked, delivered_plain = h264(marked, 18), h264(plain, 18)
    wrong = [wm.Key(f"wrong {index} {k}") for k in range(wrong_per_pair)]
    for name in attacks or harness.ATTACKS:
        got = harness.ATTACKS[name](delivered_marked)
        t0 = time.perf_counter()
        s = harness.clip_sum(got, harness.FPS.get(name, 25))
        d = s.detect(key)
        detect_ms = (time.perf_counter() - t0) * 1000 / len(got)
        soft = d.soft
        decoded, _ = pl.decode(soft)
        null = attacked_sums(delivered_plain, name)
        unmarked = null.detect(key)
        rec["attacks"][name] = {
            "z": round(d.z, 3),
            "payload": decoded == payload,  # decoded at the best alignment; counted where the clip is detected
            "bits": round(float(np.mean((soft > 0) == coded)), 4),
            "soft": [float(f"{v:.4g}") for v in soft],  # the coded bits' evidence: decoders compared offline
            "coded": pl.encode(payload).astype(int).tolist(),
            "detect_ms_per_frame": round(detect_ms, 3),
            "height": got.shape[1],
            "width": got.shape[2],
            "unmarked_z": round(unmarked.z, 3),
            "unmarked_soft": [float(f"{v:.4g}") for v in unmarked.soft],  # noise the payload decoder must refuse
            "wrong_z": [round(z, 3) for z in harness.null_scores(s.sums(), wrong) + harness.null_scores(null.sums(), wrong)],
        }
    rec["photo"] = {}
    photo_attacks = [name for name in PHOTO_ATTACKS if name in (attacks or harness.ATTACKS)]
    if photo_attacks:
        delivered_photo = h264(harness.make_clip(np.asarray(_photo()), plain.shape[1], len(plain), seed=index), 18)
        for name in photo_attacks:
            rec["photo"][name] = {
                "z": round(float(harness.null_scores(attacked_sums(delivered_photo, name).sums(), [key])[0]), 3),
                "height": plain.shape[1] if name != "0.5x + CRF 23" else plain.shape[1] // 2,
            }
    track = am.embed(audio, 16000, key)
    rec["audio"] = {
        "z": round(am.detect(aac(track, 16000), 16000, key).z, 3),
        "unmarked_z": round(am.detect(aac(audio, 16000), 16000, key).z, 3),
    }
    return rec


def photograph() -> np.ndarray:
    """A public-domain photograph: Grace Hopper (US Navy), as matplotlib ships it, cropped square."""
    import matplotlib.cbook
    from PIL import Image

    image = np.asarray(Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB"))
    side = min(image.shape[:2])
    return np.ascontiguousarray(image[:side, :side])


def one_photo(image: np.ndarray, index: int, wrong_per_video: int) -> dict:
    """An unmarked video of the photograph under camera motion, 5-15 s, through PHOTO_ATTACKS: its z with the key and wrong keys."""
    rng = np.random.default_rng([2002, index])
    size = (128, 256)[index % 2]
    frames = harness.make_clip(image, size, int(rng.uniform(5, 15) * 25), seed=10_000 + index)
    delivered = h264(frames, 18)
    key, wrong = wm.Key.default(), [wm.Key(f"photo wrong {index} {k}") for k in range(wrong_per_video)]
    rec = {"photo": index, "size": size, "attacks": {}}
    for name in PHOTO_ATTACKS:
        got = harness.ATTACKS[name](delivered)
        zs = harness.null_scores(harness.clip_sum(got, 25).sums(), [key] + wrong)
        rec["attacks"][name] = {
            "z": round(zs[0], 3),
            "wrong_z": [round(z, 3) for z in zs[1:]],
            "height": got.shape[1],
            "width": got.shape[2],
        }
    return rec


def _photo():
    from PIL import Image

    from emote.runtime.examples import PORTRAIT

    return Image.open(PORTRAIT).convert("RGB")


def summary(lines: list[dict], photos: list[dict] = ()) -> dict:
    """Rates at watermark.DETECT_P (null_p as it is now) and at the empirical threshold of the nulls."""
    nulls, wrong = [], []
    for r in photos:
        for a in r["attacks"].values():
            nulls.append((a["z"], a["height"], a["width"]))
            wrong += [(z, a["height"], a["width"]) for z in a["wrong_z"]]
    for r in lines:
        for a in r["attacks"].values():
            nulls.append((a["unmarked_z"], a["height"], a["width"]))
            wrong += [(z, a["height"], a["width"]) for z in a["wrong_z"]]
        nulls += [(p["z"], p["height"], p["height"]) for p in r["photo"].values()]
    all_null = nulls + wrong
    zs = np.sort([z for z, _, _ in all_null])
    out = {
        "clips": len(lines),
        "seconds": [min(r["seconds"] for r in lines), max(r["seconds"] for r in lines)],
        "threshold_p": wm.DETECT_P,
        "null_tests_factor": wm.NULL_TESTS_FACTOR,
        "unmarked_videos": len(nulls),
        "photograph_videos": sum(len(r["attacks"]) for r in photos),
        "unmarked_detected": sum(wm.null_p(*n) < wm.DETECT_P for n in nulls),
        "wrong_key_trials": len(wrong),
        "wrong_key_detected": sum(wm.null_p(*n) < wm.DETECT_P for n in wrong),
        "null_detected_at_1e-4": sum(wm.null_p(*n) < FPR for n in all_null),
        "null_max_z": round(float(zs[-1]), 2),
        "null_z_at_1e-4": round(float(zs[int(math.ceil((1 - FPR) * len(zs))) - 1]), 2),
        "psnr_db_min_median": [min(r["psnr_db"] for r in lines), float(np.median([r["psnr_db"] for r in lines]))],
        "ssim_min_median": [min(r["ssim"] for r in lines), float(np.median([r["ssim"] for r in lines]))],
        "embed_ms_per_frame": float(np.median([r["embed_ms_per_frame"] for r in lines])),
        "attacks": {},
    }
    out["fit"] = harness.fit_null([{"height": h, "width": w, "z": [z]} for z, h, w in all_null])
    for name in harness.ATTACKS:
        rows = [r["attacks"][name] for r in lines if name in r["attacks"]]
        if not rows:
            continue
        found = [wm.null_p(a["z"], a["height"], a["width"]) < wm.DETECT_P for a in rows]
        out["attacks"][name] = {
            "detected": round(float(np.mean(found)), 4),
            "detected_at_1e-4": round(float(np.mean([wm.null_p(a["z"], a["height"], a["width"]) < FPR for a in rows])), 4),
            "exact_payload": round(float(np.mean([f and _payload(a) == "exact" for f, a in zip(found, rows)])), 4),
            "wrong_payload": sum(f and _payload(a) == "wrong" for f, a in zip(found, rows)),  # decoded, not the clip's
            "bit_accuracy": round(float(np.mean([a["bits"] for a in rows])), 4),
            "z_min_median": [round(min(a["z"] for a in rows), 2), round(float(np.median([a["z"] for a in rows])), 2)],
            "detect_ms_per_frame": round(float(np.median([a["detect_ms_per_frame"] for a in rows])), 2),
            "bar": MUST.get(name),
        }
    # the payload decoder on noise: each unmarked twin's soft bits at its best (wrong) alignment
    garbage = [a["unmarked_soft"] for r in lines for a in r["attacks"].values() if "unmarked_soft" in a]
    out["payload_from_unmarked"] = [sum(pl.decode(np.array(g))[0] is not None for g in garbage), len(garbage)]
    audio = [r["audio"] for r in lines]
    out["audio_aac_64k"] = {
        "detected": round(float(np.mean([am.null_p(a["z"]) < wm.DETECT_P for a in audio])), 4),
        "unmarked_detected": sum(am.null_p(a["unmarked_z"]) < wm.DETECT_P for a in audio),
        "z_min_median": [round(min(a["z"] for a in audio), 2), round(float(np.median([a["z"] for a in audio])), 2)],
    }
    return out


def _payload(attack: dict) -> str:
    """ "exact", "wrong" or "none": what payload.decode, as it is now, makes of the clip's soft bits (records
    that keep them; older ones say only whether the decoder of their run got it)."""
    if "soft" not in attack:
        return "exact" if attack["payload"] else "none"
    got, _ = pl.decode(np.array(attack["soft"]))
    if got is None:
        return "none"
    return "exact" if np.array_equal(pl.encode(got), np.array(attack["coded"], np.float32)) else "wrong"


def print_summary(s: dict) -> None:
    print(
        f"\n{s['clips']} clips of {s['seconds'][0]}-{s['seconds'][1]} s; decision p < {s['threshold_p']:g} (null_p factor {s['null_tests_factor']})"
    )
    print(f"luma PSNR min/median {s['psnr_db_min_median']}, SSIM {s['ssim_min_median']}, embed {s['embed_ms_per_frame']} ms/frame")
    print("| attack | detected | at p < 1e-4 | bar | exact payload | wrong payload | bit accuracy | z min / median | detect ms/frame |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for k, a in s["attacks"].items():
        bar = f">= {a['bar']:.0%}" if a["bar"] else ""
        print(
            f"| {k} | {a['detected']:.1%} | {a['detected_at_1e-4']:.1%} | {bar} | {a['exact_payload']:.1%} | {a['wrong_payload']} | {a['bit_accuracy']} | "
            f"{a['z_min_median'][0]} / {a['z_min_median'][1]} | {a['detect_ms_per_frame']} |"
        )
    print(
        f"false positives: {s['unmarked_detected']} of {s['unmarked_videos']} unmarked videos, "
        f"{s['wrong_key_detected']} of {s['wrong_key_trials']} wrong-key trials; highest null z {s['null_max_z']}, "
        f"the nulls' 1e-4 quantile z {s['null_z_at_1e-4']}; at p < 1e-4: {s['null_detected_at_1e-4']} of "
        f"{s['unmarked_videos'] + s['wrong_key_trials']}"
    )
    print(f"null fit: {s['fit']}")
    print(f"a payload decoded from unmarked videos' soft bits: {s['payload_from_unmarked'][0]} of {s['payload_from_unmarked'][1]}")
    print(f"audio mark after AAC 64 kbps: {s['audio_aac_64k']}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", default="build/demo/bundle", help="the bundle whose output is marked (default: make demo's)")
    ap.add_argument("--clips", type=int, default=200, help="clips FIRST .. CLIPS-1 (default 200)")
    ap.add_argument(
        "--first", type=int, default=0, help="the first clip's index: a run that adds new clips to an earlier run's (default 0)"
    )
    ap.add_argument("--wrong-keys", type=int, default=100_000, help="wrong-key trials in all, spread over the attacked clips")
    ap.add_argument("--summary", action="store_true", help="only print the summary of what OUT holds")
    ap.add_argument("--photos", type=int, default=0, help="also N unmarked videos of a public-domain photograph (OUT/photos-I.jsonl)")
    ap.add_argument("--photo-wrong-keys", type=int, default=10, help="wrong keys on each of them")
    ap.add_argument("--size", type=int, help="deliver the clips at this many px a side (bicubic from the model's; default: as made)")
    ap.add_argument("--attacks", help="comma-separated attack names (default: every one)")
    ap.add_argument("--shard", default="0/1", help="I/N: this process makes the clips whose index is I modulo N (one a core)")
    ap.add_argument("-o", "--out", default="build/bench-watermark-scale")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shard, shards = (int(x) for x in args.shard.split("/"))
    lines = [json.loads(x) for p in sorted(out.glob("clips-*.jsonl")) for x in p.read_text().splitlines() if x.strip()]
    done = {r["clip"] for r in lines}
    todo = [] if args.summary else [i for i in range(args.first, args.clips) if i % shards == shard and i not in done]
    if todo:
        from emote.runtime.pipeline import Pipeline

        attacks = args.attacks.split(",") if args.attacks else list(harness.ATTACKS)
        unknown = sorted(set(attacks) - set(harness.ATTACKS))
        if unknown:
            ap.error(f"unknown attacks {unknown}; known: {', '.join(harness.ATTACKS)}")
        wrong_per_pair = max(1, math.ceil(args.wrong_keys / (2 * max(1, args.clips - args.first) * len(attacks))))
        with (
            Pipeline(args.bundle, unmarked_research=True, backend_options={"threads": 1} if shards > 1 else None) as pipe,
            (out / f"clips-{shard}.jsonl").open("a") as f,
        ):
            for index in todo:
                t0 = time.perf_counter()
                rec = one_clip(pipe, index, wrong_per_pair, np.random.default_rng([1919, index]), args.size, attacks)
                f.write(json.dumps(rec) + "\n")
                f.flush()
                lines.append(rec)
                worst = min(rec["attacks"].items(), key=lambda kv: kv[1]["z"])
                print(
                    f"clip {index + 1}/{args.clips}: {rec['seconds']} s, {time.perf_counter() - t0:.1f} s, lowest z {worst[1]['z']} ({worst[0]})",
                    flush=True,
                )
    photos = [json.loads(x) for p in sorted(out.glob("photos-*.jsonl")) for x in p.read_text().splitlines() if x.strip()]
    if args.photos and not args.summary:
        done, image = {r["photo"] for r in photos}, photograph()
        with (out / f"photos-{shard}.jsonl").open("a") as f:
            for index in (i for i in range(shard, args.photos, shards) if i not in done):
                rec = one_photo(image, index, args.photo_wrong_keys)
                f.write(json.dumps(rec) + "\n")
                f.flush()
                photos.append(rec)
                if (index + 1) % 50 < shards:
                    print(f"photograph video {index + 1}/{args.photos}", flush=True)
    s = summary(lines, photos)
    s["command"] = "python " + " ".join(sys.argv)
    (out / "summary.json").write_text(json.dumps(s, indent=2))
    print_summary(s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
