"""The lip-sync measure: the audio-driven ground truth and the mouth reader against the generator's truth."""

from __future__ import annotations

import numpy as np
import pytest

from emote.bench.lipsync import MouthEstimator, identity_similarity, mouth_signal, pearson, score
from emote.runtime.face import crop_portrait
from training.data import RENDER
from training.portrait import EXAMPLE, face_box, random_params, render_portrait

SR = 16_000


def vowel(seconds: float, f0: float = 140.0, level: float = 0.3) -> np.ndarray:
    """A voiced vowel: harmonics of f0 with formant-like weights around 700 and 1200 Hz."""
    t = np.arange(int(seconds * SR)) / SR
    tone = sum(np.exp(-((((k * f0) - 900) / 500) ** 2)) * np.sin(2 * np.pi * k * f0 * t) for k in range(1, 30))
    return (level * tone / np.abs(tone).max()).astype(np.float32)


def test_mouth_signal_opens_on_voice_and_closes_in_silence():
    audio = np.concatenate([np.zeros(SR // 2, np.float32), vowel(0.6), np.zeros(SR // 2, np.float32)])
    track = mouth_signal(audio)
    assert len(track.open) == 40  # 1.6 s at 25 fps
    assert track.open[3:10].max() < 0.05  # silence: closed
    assert track.open[16:25].min() > 0.8  # the vowel: open
    assert track.open[-8:].max() < 0.05
    assert np.all((track.wide >= 0) & (track.wide <= 1))


def test_mouth_signal_follows_syllables():
    """Four syllables with pauses: four openings, and it is independent of the overall level."""
    syl = np.concatenate([vowel(0.2), np.zeros(int(0.2 * SR), np.float32)])
    audio = np.tile(syl, 4)
    a, b = mouth_signal(audio).open, mouth_signal(0.1 * audio).open
    opens = np.diff((a > 0.5).astype(int)) == 1
    assert opens.sum() + (a[0] > 0.5) == 4
    np.testing.assert_allclose(a, b, atol=1e-3)


def test_silence_only_is_a_closed_mouth():
    assert mouth_signal(np.zeros(SR, np.float32)).open.max() == 0.0
    assert mouth_signal(np.zeros(0, np.float32)).open.shape == (0,)


def test_pearson_and_identity():
    x = np.linspace(0, 1, 50)
    assert pearson(x, 2 * x + 1) == pytest.approx(1.0)
    assert pearson(x, -x) == pytest.approx(-1.0)
    assert pearson(x, np.ones(50)) == 0.0  # a frozen mouth follows nothing
    img = (np.random.default_rng(0).random((128, 128, 3)) * 255).astype(np.uint8)
    mask = np.zeros((128, 128), np.float32)
    mask[20:110, 30:100] = 1
    assert identity_similarity(np.stack([img, img]), img, mask) == pytest.approx(1.0)


@pytest.fixture(scope="module")
def reader():
    return MouthEstimator()


def test_mouth_reader_reads_rendered_mouths(reader):
    """On people it never saw (another seed), the shipped reader follows the generator's opening."""
    rng = np.random.default_rng(1234)
    frames, truth = [], []
    for _ in range(6):
        p = random_params(rng)
        box = face_box(p, RENDER)
        for opening in np.linspace(0, 1, 6):
            full = render_portrait(p, RENDER, opening, rng.random(), 1.0, rng.uniform(-0.2, 0.2), rng.uniform(-0.1, 0.1))
            frames.append(crop_portrait(full, box, 128)[0])
            truth.append(opening)
    est = reader(np.stack(frames))
    assert est.shape == (36,)
    assert pearson(est, truth) > 0.9
    assert np.abs(est - truth).mean() < 0.15


def test_score_of_a_perfect_video(reader):
    """Frames rendered from the audio's own mouth signal score near 1: the measure's ceiling."""
    audio = np.concatenate([np.tile(np.concatenate([vowel(0.25), np.zeros(int(0.15 * SR), np.float32)]), 4)])
    track = mouth_signal(audio)
    box = face_box(EXAMPLE, RENDER)
    frames = np.stack([crop_portrait(render_portrait(EXAMPLE, RENDER, o, w), box, 128)[0] for o, w in zip(track.open, track.wide)])
    ref, mask = crop_portrait(render_portrait(EXAMPLE, RENDER, 0.0), box, 128)
    s = score(frames, audio, ref, mask, reader)
    assert s.correlation > 0.9
    assert s.identity > 0.9
