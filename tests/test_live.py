"""The live session (runtime/live.py) against the runtime directly: the tiny bundle, the example portrait and speech."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest

from emote.bundle import SAMPLE_RATE
from emote.errors import EmoteError
from emote.runtime.clips import frame_count
from emote.runtime.live import LiveOptions, LiveSession, PcmDecoder, idle_loop

SECONDS = 1.2


@pytest.fixture(scope="module")
def pipe(tiny_bundle):
    from emote.runtime import Pipeline

    with Pipeline(tiny_bundle, backend="onnxruntime") as p:
        yield p


@pytest.fixture(scope="module")
def inputs(pipe):
    from emote.runtime.examples import example_inputs

    portrait, speech = example_inputs(pipe.resolution)
    return portrait, speech[: int(SECONDS * SAMPLE_RATE)]


def chunks(x: np.ndarray, seconds: float = 0.02):
    n = int(seconds * SAMPLE_RATE)
    return [x[i : i + n] for i in range(0, len(x), n)]


def play(session: LiveSession, *, idle: bool, until, pace: float = 0.0, timeout: float = 30.0) -> list:
    """Pull frames until ``until(frames)``, one per ``pace`` seconds (0: as fast as they come); bounded in time."""
    out, deadline, t0 = [], time.monotonic() + timeout, time.monotonic()
    while not until(out):
        assert time.monotonic() < deadline, "timed out waiting for frames"
        if pace:
            time.sleep(max(0.0, t0 + len(out) * pace - time.monotonic()))
        f = session.next_frame(idle=idle)
        if f is None:
            events = session.take_events()
            if events and out:  # events with no frame to carry them: kept on the last one for ``until``
                out[-1] = dataclasses.replace(out[-1], events=out[-1].events + tuple(events))
            time.sleep(0.005)
            continue
        out.append(f)
    return out


def stopped(frames) -> bool:
    return any(e["type"] == "speaking_stopped" for f in frames for e in f.events)


@pytest.mark.parametrize("hop", [None, 2], ids=["whole clips", "hop 2"])
def test_live_utterance_equals_generate_and_carries_its_audio(pipe, inputs, hop):
    """Without barge-in an utterance's frames are `emote generate`'s (cut alike: whole clips, or --hop)."""
    portrait, speech = inputs
    with LiveSession(pipe, portrait, options=LiveOptions(hop_frames=hop)) as s:
        for c in chunks(speech):
            s.push(c)
        s.end()
        frames = play(s, idle=False, until=stopped)
        assert s.counters.first_frame_latency
    expected = pipe.generate(portrait, speech, hop=hop)
    assert len(frames) == len(expected) == frame_count(len(speech), pipe.fps)
    np.testing.assert_array_equal(np.stack([f.image for f in frames]), expected)
    # one clock: frame k plays samples [k * spf, (k + 1) * spf) of the utterance, its pts counted in samples
    spf = SAMPLE_RATE // pipe.fps
    assert [f.pts for f in frames] == [k * spf for k in range(len(frames))]
    audio = np.concatenate([f.audio for f in frames])
    np.testing.assert_array_equal(audio[: len(speech)], speech)
    assert not audio[len(speech) :].any()
    assert frames[0].events[0]["type"] == "speaking_started"


def test_a_hop_the_bundle_cannot_cut_is_refused_before_the_session_starts(pipe, inputs):
    with pytest.raises(EmoteError, match="a hop of 9 frames: give 2..4"):
        LiveSession(pipe, inputs[0], options=LiveOptions(hop_frames=9))


def test_pcm16_stereo_at_44k_is_resampled(pipe, inputs):
    import soxr

    portrait, speech = inputs
    x44 = soxr.resample(speech, SAMPLE_RATE, 44100)
    pcm = (np.clip(np.repeat(x44[:, None], 2, axis=1), -1, 1) * 32767).astype("<i2")
    with LiveSession(pipe, portrait, audio=PcmDecoder("s16le", 44100, 2)) as s:
        for i in range(0, len(pcm), 882):  # 20 ms
            s.push(pcm[i : i + 882].tobytes())
        s.end()
        frames = play(s, idle=False, until=stopped)
    assert len(frames) == frame_count(len(speech), pipe.fps)
    audio = np.concatenate([f.audio for f in frames])[: len(speech)]
    assert np.corrcoef(audio, speech)[0, 1] > 0.99  # the same speech, on the same clock (no lag)


def test_idle_frames_keep_coming_and_loop(pipe, inputs):
    portrait, _ = inputs
    opts = LiveOptions(idle_seconds=0.64, crossfade_frames=4)
    with LiveSession(pipe, portrait, options=opts) as s:
        first = s.next_frame()
        assert not first.speech and first.image is not None and not first.audio.any()
        deadline = time.monotonic() + 30
        while s.idle is None:
            assert time.monotonic() < deadline and s.error is None
            time.sleep(0.01)
        frames = [s.next_frame() for _ in range(2 * len(s.idle) + 3)]
    assert len(s.idle) == 16 - 4
    assert all(not f.speech and f.image is not None and not f.audio.any() for f in frames)
    assert [f.index for f in frames] == list(range(1, len(frames) + 1))
    images = np.stack([f.image for f in frames]).astype(np.int16)
    assert np.abs(np.diff(images, axis=0)).mean() > 0  # it moves: no frozen frame


def test_idle_loop_seam_is_a_crossfade():
    frames = np.stack([np.full((2, 2, 3), 10 * i, np.uint8) for i in range(10)])
    loop = idle_loop(frames, 3)
    assert len(loop) == 7 and loop[0, 0, 0, 0] == 30  # starts at frames[3]: the wrap from ~frames[2]
    assert [int(v) for v in loop[-3:, 0, 0, 0]] == [round(0.75 * 70 + 0.25 * 0), round(0.5 * 80 + 0.5 * 10), round(0.25 * 90 + 0.75 * 20)]


def test_clear_drops_audio_and_frames_and_reports_the_position(pipe, inputs):
    portrait, speech = inputs
    long = np.tile(speech, 3)
    with LiveSession(pipe, portrait) as s:
        for c in chunks(long):
            s.push(c)
        # paced as a player would; on a busy machine some frames are underruns (speech due, not made yet)
        played = play(s, idle=True, until=lambda fr: sum(f.speech and not f.underrun for f in fr) >= 6, pace=1 / pipe.fps)
        assert sum(f.underrun for f in played) == s.counters.underruns
        t0 = time.monotonic()
        event = s.clear()
        after = s.next_frame()
        silence_after = time.monotonic() - t0
        assert silence_after <= 0.2
        assert not after.speech and not after.audio.any()
        assert event["type"] == "playback_finished" and event["interrupted"] is True
        assert event["playback_position"] == pytest.approx(6 * SAMPLE_RATE // pipe.fps / SAMPLE_RATE)
        assert [e["type"] for e in after.events] == ["speaking_stopped", "playback_finished"]
        later = [s.next_frame() for _ in range(20)]  # the clip in flight was given up: nothing of it plays
        assert not any(f.speech for f in later) and s.queue_depth == 0
        assert s.buffered_seconds == 0
        # and the session goes on: the next utterance plays from its start
        for c in chunks(speech):
            s.push(c)
        s.end()
        again = play(s, idle=False, until=stopped)
    assert played[-1].speech
    np.testing.assert_array_equal(np.concatenate([f.audio for f in again])[: len(speech)], speech)


def test_a_full_queue_drops_video_never_audio(pipe, inputs):
    portrait, speech = inputs
    with LiveSession(pipe, portrait, options=LiveOptions(max_ready_frames=4)) as s:
        for c in chunks(speech):
            s.push(c)
        s.end()
        deadline = time.monotonic() + 30
        while s.queue_depth < frame_count(len(speech), pipe.fps):  # nobody pulls: the queue fills
            assert time.monotonic() < deadline and s.error is None
            time.sleep(0.01)
        frames = play(s, idle=False, until=stopped)
    dropped = sum(f.image is None for f in frames)
    assert dropped == s.counters.dropped_video == len(frames) - 4
    np.testing.assert_array_equal(np.concatenate([f.audio for f in frames])[: len(speech)], speech)


def test_buffered_audio_is_bounded(pipe, inputs):
    portrait, speech = inputs
    with LiveSession(pipe, portrait, options=LiveOptions(max_buffered_seconds=0.5)) as s:
        s.push(speech[: SAMPLE_RATE // 4])
        with pytest.raises(EmoteError, match="more than 0.5 s of audio buffered"):
            s.push(speech[: SAMPLE_RATE // 2])
        assert s.counters.refused_audio_seconds == 0.5


@pytest.mark.parametrize(
    "data, message",
    [
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", "WAV data, not raw PCM"),
        (b"ID3\x04" + bytes(16), "MP3 data, not raw PCM"),
        (b"\x00\x01\x02", "not whole s16le samples"),
    ],
)
def test_audio_that_is_not_pcm_is_refused_by_name(data, message):
    with pytest.raises(EmoteError, match=message):
        PcmDecoder("s16le").decode(data)


def test_f32_that_is_not_float_pcm_is_refused():
    s16 = (np.sin(np.arange(640) / 5) * 20000).astype("<i2")
    with pytest.raises(EmoteError, match="not float32 PCM"):  # s16 bytes sent as f32le: huge values
        PcmDecoder("f32le").decode(np.repeat(s16, 2).tobytes())
    with pytest.raises(EmoteError, match="NaN or infinite"):
        PcmDecoder("f32le").decode(np.array([0.1, np.nan, 0.2], "<f4").tobytes())
    with pytest.raises(EmoteError, match="audio format 'mp3'"):
        PcmDecoder("mp3")


def test_pipeline_timings_stay_bounded_in_a_long_session():
    from emote.runtime.pipeline import TIMINGS_KEPT, Timings

    t = Timings()
    for i in range(TIMINGS_KEPT + 5):
        t.add("denoise_step", float(i))
    assert len(t.calls["denoise_step"]) == TIMINGS_KEPT and t.calls["denoise_step"][-1] == TIMINGS_KEPT + 4
