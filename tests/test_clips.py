"""Clip planning: frame counts, clip windows, motion frames carried, the last clip trimmed."""

from __future__ import annotations

import numpy as np
import pytest

from emote.runtime.clips import ClipPlan, audio_window, clip_noise, frame_count


@pytest.mark.parametrize("seconds, frames", [(0.1, 3), (1.0, 25), (7.3, 183)])
def test_frame_count_rounds_halves_up(seconds, frames):
    # 0.1 s x 25 = 2.5 -> 3 and 7.3 s x 25 = 182.5 -> 183: round half up on the exact sample count
    assert frame_count(round(seconds * 16000), 25) == frames


def test_frame_count_other_cases():
    assert frame_count(639, 25) == 1  # 0.999 frames
    assert frame_count(320, 25) == 1  # exactly half a frame rounds up
    assert frame_count(319, 25) == 0


def plan(seconds: float, f: int = 12, n: int = 4) -> ClipPlan:
    return ClipPlan.for_samples(round(seconds * 16000), clip_frames=f, motion_frames=n, fps=25, left_context=8, lookahead=2)


def test_last_clip_trimmed():
    p = plan(7.3)
    assert p.frames == 183 and p.clips == 16  # 15 full clips of 12 + 3 frames
    assert [p.kept(c) for c in range(p.clips)] == [12] * 15 + [3]
    assert sum(p.kept(c) for c in range(p.clips)) == p.frames


def test_too_short_audio_is_an_error():
    with pytest.raises(ValueError, match="shorter than one video frame"):
        plan(0.001)


def test_windows_cover_context_and_lookahead():
    p = plan(2.0)
    spf = 640
    assert p.window_samples == (8 + 12 + 2) * spf
    assert p.window_range(0) == (-8 * spf, 14 * spf)
    assert p.window_range(1) == (4 * spf, 26 * spf)
    # a stream may start clip 0 once 14 frames (12 + 2 look-ahead) of audio have arrived
    assert p.samples_needed(0) == 14 * spf


def test_audio_window_zero_pads_outside_the_track():
    p = plan(1.0)
    audio = np.arange(16000, dtype=np.float32) + 1
    w0 = audio_window(audio, p, 0)[0]
    assert w0.shape == (p.window_samples,)
    assert np.all(w0[: 8 * 640] == 0) and w0[8 * 640] == 1  # left context before the start: silence
    last = audio_window(audio, p, p.clips - 1)[0]
    start, _ = p.window_range(p.clips - 1)
    assert last[16000 - start - 1] == 16000 and np.all(last[16000 - start :] == 0)


def test_a_hop_keeps_h_frames_of_each_clip_and_hears_only_their_audio():
    """hop = h (live latency): every clip keeps h frames for h + m frames of audio; silence after, as a stream that stopped there."""
    from emote.runtime.clips import ClipWindows

    spf, w = 640, ClipWindows(8, 2, 25, 8, 2, hop=4)
    p = w.plan(50 * spf)  # 50 frames: 12 x 4 + 2
    assert p.clips == 13 and [p.kept(c) for c in range(p.clips)] == [4] * 12 + [2]
    assert [p.start(c) for c in range(3)] == [0, 4, 8] and sum(p.kept(c) for c in range(p.clips)) == 50
    assert w.samples_needed(0) == (4 + 2) * spf  # 240 ms, not a whole clip's 400 ms
    assert w.window_range(1) == ((4 - 8) * spf, (4 + 8 + 2) * spf) and w.samples_needed(1) == (8 + 2) * spf
    audio = np.ones(50 * spf, np.float32)
    w1 = audio_window(audio, p, 1)[0]  # clip 1's window is frames [-4, 14); it hears [0, 10): silence before and after
    assert w1.shape == (18 * spf,) and w1[: 4 * spf].sum() == 0 and w1[4 * spf : 14 * spf].all() and w1[14 * spf :].sum() == 0
    assert audio_window(audio[: 10 * spf], p, 1).tobytes() == w1[None].tobytes()
    whole = ClipWindows(8, 2, 25, 8, 2)
    assert whole.samples_needed(0) == 10 * spf and whole.plan(50 * spf).clips == 7  # hop None: the clip's length
    with pytest.raises(ValueError, match="a hop of 1 frames: give 2..8"):
        ClipWindows(8, 2, 25, 8, 2, hop=1)


def test_motion_frames_carried(tiny_model, tiny_inputs, monkeypatch):
    """Clip c starts from clip c-1's last n frames: changing only clip 0's noise changes clip 1.

    Clip 1's own noise, audio and reference are the same in both runs, so the only path
    by which clip 0 can reach it is the motion frames.
    """
    import emote.models.pipeline as reference_module
    from emote.models.pipeline import ReferencePipeline, SamplerSpec
    from emote.runtime.clips import clip_noise

    image, mask, audio = tiny_inputs
    pipe = ReferencePipeline(tiny_model, SamplerSpec(steps=2, guidance_scale=1.0))
    speech = audio[: int(0.36 * 16000)]  # 9 frames: clips of 4, 4 and 1 (the last padded, then trimmed)
    a = pipe(image, mask, speech, seed=0)
    monkeypatch.setattr(reference_module, "clip_noise", lambda seed, c, shape, clamp=0.0: clip_noise(seed + (c == 0), c, shape, clamp))
    b = pipe(image, mask, speech, seed=0)
    assert a.shape == b.shape == (9, 64, 64, 3) and a.dtype == np.uint8
    assert not np.array_equal(a[:4], b[:4])  # clip 0: other noise
    assert np.abs(a[4:8].astype(int) - b[4:8]).mean() > 0.5  # clip 1: other motion frames


def test_clip_noise_clamped_as_echomimic_draws_it():
    plain, clamped = clip_noise(3, 1, (4, 4, 8, 8)), clip_noise(3, 1, (4, 4, 8, 8), 1.5)
    assert np.abs(plain).max() > 1.5 and np.abs(clamped).max() == np.float32(1.5)
    inside = np.abs(plain) < 1.5
    np.testing.assert_array_equal(clamped[inside], plain[inside])
