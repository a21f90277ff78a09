"""The provenance layer: the watermark round trip and one re-encode, no false alarm, the C2PA manifest, `emote detect`."""

from __future__ import annotations

import numpy as np
import pytest

from emote.bench.attacks import aac, h264
from emote.provenance import payload as pl
from emote.provenance import watermark as wm

KEY = wm.Key("a test key")
PAYLOAD = pl.Payload(1, 424242)


@pytest.fixture(scope="module")
def clip():
    """16 frames of 512 px: the example portrait drifting a pixel every few frames, with sensor-like noise."""
    import cv2
    from PIL import Image

    from emote.runtime.examples import PORTRAIT

    image = np.asarray(Image.open(PORTRAIT).convert("RGB").resize((576, 576)), np.float32)
    rng = np.random.default_rng(0)
    frames = []
    for i in range(16):
        m = np.float32([[1, 0, -32 + i // 4], [0, 1, -32 + i // 6]])
        f = cv2.warpAffine(image, m, (512, 512), borderMode=cv2.BORDER_REFLECT) + rng.normal(0, 3, (512, 512, 3))
        frames.append(np.clip(f, 0, 255).astype(np.uint8))
    face = np.zeros((512, 512), np.float32)
    face[128:384, 128:384] = 1
    return np.stack(frames), face


def luma_psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255**2 / np.mean((wm._luma(a) - wm._luma(b)) ** 2)))


def luma_ssim(a: np.ndarray, b: np.ndarray) -> float:
    from emote.engines.fidelity import ssim

    return float(np.mean([ssim(wm._luma(x), wm._luma(y)) for x, y in zip(a, b)]))


def test_ssim_is_scikit_images():
    from skimage.metrics import structural_similarity

    from emote.engines.fidelity import ssim

    rng = np.random.default_rng(5)
    a = rng.uniform(0, 255, (64, 80))
    b = np.clip(a + rng.normal(0, 6, a.shape), 0, 255)
    want = structural_similarity(a, b, data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    assert abs(ssim(a, b) - want) < 1e-9


def test_the_payload_code_is_bch_63_36_extended():
    from emote.provenance import bch

    # BCH(63, 36), t = 5: g(x) = 1033500423 in octal (Lin & Costello, Error Control Coding, appendix C)
    assert bch.generator_polynomial() == 0o1033500423
    g = bch.generator_matrix()
    assert g.shape == (32, 64) and np.array_equal(g[:, :32], np.eye(32, dtype=np.uint8))  # systematic
    assert g.sum(axis=1).min() >= 12 and not (g.sum(axis=1) % 2).any()  # even weights (the extension), >= d


def test_payload_code_corrects_weak_bits_and_refuses_noise():
    bits = pl.encode(PAYLOAD)
    assert bits.shape == (pl.CODED_BITS,)
    rng = np.random.default_rng(1)
    hurt = bits.copy()
    hurt[rng.choice(64, 5, replace=False)] *= -1  # any 5 wrong bits: within the distance of 12, hard decisions suffice
    assert pl.decode(hurt) == (PAYLOAD, 5)
    # 9 wrong bits are past half the distance; when they are the weak ones, the soft decoder recovers them
    weak = bits.copy()
    weak[rng.choice(64, 9, replace=False)] *= -0.2
    assert pl.decode(weak) == (PAYLOAD, 9)
    # a marked clip's bits with 7% of them wrong (Gaussian noise at 1.5 x the mark): all but a few decode
    noisy = [pl.decode(1.5 * bits + rng.normal(size=64))[0] for _ in range(100)]
    assert sum(p == PAYLOAD for p in noisy) >= 90 and all(p in (PAYLOAD, None) for p in noisy)
    accepted = sum(pl.decode(rng.normal(size=pl.CODED_BITS))[0] is not None for _ in range(1000))
    assert accepted <= 4  # 1 in 1,000 expected
    assert pl.decode(np.zeros(64)) == (None, 0) and pl.decode(np.ones(63)) == (None, 0)


def test_the_payload_minute_is_the_clocks_or_source_date_epochs(monkeypatch):
    import datetime as dt

    from emote.errors import EmoteError

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1790000059")  # 2026-09-21 14:14:19 UTC
    assert pl.Payload.now().time == dt.datetime(2026, 9, 21, 14, 14, tzinfo=dt.timezone.utc)
    monkeypatch.delenv("SOURCE_DATE_EPOCH")
    before = dt.datetime.now(dt.timezone.utc).replace(second=0, microsecond=0)
    assert before <= pl.Payload.now().time <= dt.datetime.now(dt.timezone.utc)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(EmoteError, match="SOURCE_DATE_EPOCH='yesterday': give integer seconds"):
        pl.Payload.now()


def test_round_trip_cost_and_one_reencode(clip):
    frames, face = clip
    marked = wm.Embedder(KEY, PAYLOAD).mark(frames, face)
    assert marked.shape == frames.shape and marked.dtype == np.uint8
    assert 40.0 <= luma_psnr(frames, marked) < 42.0
    assert luma_ssim(frames[::5], marked[::5]) >= 0.98
    found = wm.detect_frames(marked, KEY)
    assert found.marked and found.payload == PAYLOAD and found.p_value < 1e-8
    assert abs(found.period - 16 * wm.cell_px(512, 512)) < 1.0
    after = wm.detect_frames(h264(marked, 28), KEY)  # what a re-upload does
    assert after.marked and after.payload == PAYLOAD, after


def test_no_detection_without_the_mark_or_with_another_key(clip):
    frames, face = clip
    unmarked = wm.detect_frames(h264(frames, 23), KEY)
    assert not unmarked.marked and unmarked.payload is None and unmarked.p_value > 1e-3
    other = wm.detect_frames(wm.Embedder(wm.Key("another key"), PAYLOAD).mark(frames, face), KEY)
    assert not other.marked


def test_pipeline_hands_out_marked_frames(tiny_bundle, tiny_inputs):
    """Marked frames, also when delivered larger (``size``: resized bicubic, then marked for the delivered pixels)."""
    from emote.errors import EmoteError
    from emote.runtime.face import Portrait
    from emote.runtime.pipeline import Pipeline, resize_frames

    image, mask, audio = tiny_inputs
    portrait = Portrait(image=image, mask=mask, box=(0, 0, image.shape[1], image.shape[0]))
    with Pipeline(tiny_bundle, backend="onnxruntime", steps=2, watermark_key=KEY.text) as pipe:
        marked = pipe.generate(portrait, audio[:8000], seed=2)
        payload = pipe.last_payload
    with Pipeline(tiny_bundle, backend="onnxruntime", steps=2, unmarked_research=True) as pipe:
        plain = pipe.generate(portrait, audio[:8000], seed=2)
        assert pipe.last_payload is None
    assert payload is not None and payload.generator == pl.GENERATOR_EMOTE
    assert not np.array_equal(marked, plain)
    assert np.array_equal(marked, wm.Embedder(KEY, payload).mark(plain, mask))
    with Pipeline(tiny_bundle, backend="onnxruntime", steps=2, watermark_key=KEY.text, size=160) as pipe:
        larger = pipe.generate(portrait, audio[:8000], seed=2)
        payload = pipe.last_payload
    assert larger.shape == (len(plain), 160, 160, 3)
    assert np.array_equal(larger, wm.Embedder(KEY, payload).mark(resize_frames(plain, 160), mask))
    for bad in (161, 8, 5000):
        with pytest.raises(EmoteError, match="--size must be an even number of px"):
            Pipeline(tiny_bundle, backend="onnxruntime", size=bad)


def test_audio_mark_survives_aac_64k_and_says_nothing_unmarked():
    import soundfile as sf

    from emote.provenance import audio_mark as am
    from emote.runtime.examples import SPEECH

    speech, rate = sf.read(str(SPEECH), dtype="float32")
    marked = am.embed(speech, rate, KEY)
    assert marked.shape == speech.shape and np.max(np.abs(marked)) <= 1.0
    found = am.detect(aac(marked, rate), 16000, KEY)
    assert found.marked and found.p_value < 1e-6, found
    assert am.detect(aac(marked[: 3 * rate], rate), 16000, KEY).z > 4.0  # a 3 s window alone
    assert not am.detect(aac(speech, rate), 16000, KEY).marked
    assert not am.detect(aac(marked, rate), 16000, wm.Key("another key")).marked


def test_flat_frames_get_less_of_the_mark_and_keep_ssim():
    """The model's flat-shaded portraits at 128 px: the strength is lowered to keep SSIM >= 0.98, textured frames get all of it."""
    import cv2
    from PIL import Image

    from emote.runtime.examples import PORTRAIT

    picture = cv2.resize(np.asarray(Image.open(PORTRAIT).convert("RGB")), (128, 128), interpolation=cv2.INTER_AREA)
    flat = cv2.GaussianBlur(picture, (0, 0), 4)  # soft shading, few edges: where the pattern shows most
    rng = np.random.default_rng(4)
    textured = np.clip(picture.astype(np.float32) + rng.normal(0, 12, flat.shape), 0, 255).astype(np.uint8)
    frames = np.stack([flat, textured])
    marked = wm.Embedder(KEY, PAYLOAD).mark(frames)
    change = np.sqrt(np.mean((wm._luma(marked) - wm._luma(frames)) ** 2, axis=(1, 2)))
    assert change[0] < 0.9 * change[1] and 2.0 < change[1] < 2.6, change  # the RMS budget, 2.3 levels, on texture
    assert luma_ssim(frames[:1], marked[:1]) >= 0.98
    assert luma_psnr(frames, marked) >= 40.0


def test_small_frames_carry_a_time_varying_mark():
    """At the demo's size a still portrait's mark is found in the signed sum, which cancels the picture."""
    import cv2
    from PIL import Image

    from emote.runtime.examples import PORTRAIT

    still = cv2.resize(np.asarray(Image.open(PORTRAIT).convert("RGB")), (128, 128), interpolation=cv2.INTER_AREA)
    rng = np.random.default_rng(3)
    frames = np.clip(still[None].astype(np.float32) + rng.normal(0, 2, (75, 128, 128, 3)), 0, 255).astype(np.uint8)
    marked = wm.Embedder(KEY, PAYLOAD, fps=25).mark(frames)
    signs = {wm.frame_sign(i / 25) for i in range(75)}
    assert signs == {-1.0, 1.0}
    found = wm.detect_frames(h264(marked, 18), KEY, fps=25)
    assert found.marked and found.sum == "signed" and found.payload == PAYLOAD, found
    assert not wm.detect_frames(h264(frames, 18), KEY, fps=25).marked


def test_every_mp4_is_signed_and_emote_detect_exit_codes(tmp_path, clip, capsys):
    import json

    import soundfile as sf

    from emote.cli import main
    from emote.provenance.manifest import WATERMARK_ALG, read_manifest
    from emote.runtime.examples import SPEECH
    from emote.runtime.video import VideoWriter

    speech, rate = sf.read(str(SPEECH), dtype="float32")
    frames, face = clip
    marked_path, plain_path, broken = tmp_path / "marked.mp4", tmp_path / "plain.mp4", tmp_path / "broken.mp4"
    with VideoWriter(marked_path, 25, 512, audio=speech, audio_rate=rate, watermark=PAYLOAD.to_bytes(), audio_mark=wm.Key.default()) as v:
        v.write(wm.Embedder(wm.Key.default(), PAYLOAD).mark(frames, face))
    with VideoWriter(plain_path, 25, 512, audio=speech, audio_rate=rate, c2pa=False) as v:
        v.write(frames)
    broken.write_bytes(b"not a video at all")

    report = read_manifest(marked_path)
    assert (report.state, report.generated, report.generator, report.watermark_alg) == ("valid", True, "emote-edge", WATERMARK_ALG)
    assert read_manifest(plain_path).state == "absent"

    assert main(["detect", str(marked_path), "--json"]) == 0
    (found,) = json.loads(capsys.readouterr().out)
    assert found["verdict"] == "marked" and found["watermark"]["marked"]
    assert found["manifest"]["state"] == "valid" and found["manifest"]["trained_algorithmic_media"]
    assert found["audio"]["marked"], found["audio"]  # the muxed AAC track's own mark
    assert main(["detect", str(plain_path), "--json"]) == 1
    (plain,) = json.loads(capsys.readouterr().out)
    assert not plain["audio"]["marked"] and not plain["watermark"]["marked"]
    assert main(["detect", str(plain_path)]) == 1
    assert "no mark found" in capsys.readouterr().out
    assert main(["detect", str(plain_path), str(broken)]) == 2
    assert "unreadable" in capsys.readouterr().out
