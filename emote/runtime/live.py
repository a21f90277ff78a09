"""A live session: one prepared portrait, audio chunks in as they arrive, frames and their audio out on one clock.

The session owns a ``Pipeline`` (its buffers) and a worker thread. The portrait is
prepared and its ReferenceNet run once, when the session starts; each utterance (audio
that arrives without a pause of ``gap_seconds``, or up to ``end()``) is then one video
of the pipeline's clip loop, exactly as ``emote generate`` cuts the same audio.

Playout is pulled: the caller's pacer (a WebSocket sender, a WebRTC track) calls
``next_frame()`` once per video frame. Frame ``k`` of the session carries the audio
samples ``[k * spf, (k + 1) * spf)`` of the session's own clock (``spf`` = 16000 / fps
samples); timestamps are counted in samples, never read from a wall clock, so video
and audio cannot drift apart however long the session runs. With no speech ready the
frame is an idle one (a loop made once from silence, crossfaded at its seam) with
silent audio, so the stream never stops or freezes.

``clear()`` (barge-in) drops the queued audio, the clip in flight (the worker gives it up
at its next denoising step) and the frames not yet played, and reports how much of the
utterance had played. Queues are bounded: frames waiting past ``max_ready_frames`` lose
their image (counted in ``dropped_video``; the pacer shows the previous one) but never
their audio; audio beyond ``max_buffered_seconds`` is refused with an error, not dropped.

No web framework here, no wall-clock timestamps on media, nothing but numpy and the
pipeline: the server (``emote.serve``) is a layer above.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from ..bundle import SAMPLE_RATE
from ..errors import EmoteError
from .audio import AudioSource

FORMATS = {"s16le": np.dtype("<i2"), "f32le": np.dtype("<f4")}
# The first bytes of files people send where raw PCM is expected: refused by name.
CONTAINERS = {
    b"RIFF": "WAV",
    b"ID3": "MP3",
    b"\xff\xfb": "MP3",
    b"\xff\xf3": "MP3",
    b"OggS": "Ogg",
    b"fLaC": "FLAC",
    b"\x1aE\xdf\xa3": "WebM",
}


class Cleared(Exception):
    """Raised inside the worker's clip loop to give up the clip in flight (barge-in, speech over idle, close)."""


@dataclass(frozen=True)
class LiveOptions:
    seed: int = 0  # the noise of every utterance's clips, as `emote generate --seed`
    idle_seconds: float = 2.0  # the idle loop's length before its crossfade, made once from silence
    crossfade_frames: int = 6  # frames blended across the idle loop's seam
    gap_seconds: float = 0.3  # no audio for this long ends an utterance (its last clip is trimmed)
    prebuffer_seconds: float = 0.08  # an utterance starts playing this long after its first clip is ready: jitter margin
    max_ready_frames: int = 250  # images of generated frames waiting to play (10 s at 25 fps); past it the oldest go
    max_buffered_seconds: float = 10.0  # audio received and not yet played; more is refused (a watchdog)
    # frames each clip keeps (runtime.clips): a clip waits for that much audio and the look-ahead, not a whole
    # clip's (4: 240 ms for the demo models, not 400), for clip/hop times the compute. None: whole clips.
    hop_frames: int | None = None

    def __post_init__(self) -> None:
        if self.idle_seconds <= 0 or self.gap_seconds <= 0 or self.max_buffered_seconds <= 0:
            raise EmoteError("idle_seconds, gap_seconds and max_buffered_seconds must be positive")
        if self.crossfade_frames < 0 or self.prebuffer_seconds < 0 or self.max_ready_frames < 1:
            raise EmoteError("crossfade_frames and prebuffer_seconds must be >= 0, max_ready_frames >= 1")


@dataclass(frozen=True)
class MediaFrame:
    index: int  # frame number on the session's clock
    pts: int  # the frame's first sample on the session's clock (16 kHz): index * samples per frame
    image: np.ndarray | None  # uint8 (H, W, 3); None: dropped under load (show the previous image)
    audio: np.ndarray  # float32 (samples per frame,) at 16 kHz: the audio that plays with this frame
    speech: bool  # generated from speech (False: idle)
    dropped: bool = False  # the image was dropped from a full queue (else image None is an underrun)
    events: tuple[dict, ...] = ()  # what happened at this frame: speaking_started/stopped, playback_finished

    @property
    def underrun(self) -> bool:
        """Speech was due but not generated yet: the previous image held, silence played (a stall)."""
        return self.speech and self.image is None and not self.dropped


@dataclass
class Counters:
    frames: int = 0  # frames played
    speech_frames: int = 0
    idle_frames: int = 0
    dropped_video: int = 0  # images dropped from the ready queue (their audio played)
    underruns: int = 0  # frames where speech was due but not generated yet (previous image, silence)
    utterances: int = 0
    cleared: int = 0
    refused_audio_seconds: float = 0.0
    first_frame_latency: deque = field(
        default_factory=lambda: deque(maxlen=100)
    )  # s from an utterance's first audio in to its first clip ready


class PcmDecoder:
    """Raw PCM bytes (s16le or f32le, any rate, interleaved channels) -> float32 mono 16 kHz, chunk by chunk."""

    def __init__(self, fmt: str = "s16le", rate: int = SAMPLE_RATE, channels: int = 1):
        if fmt not in FORMATS:
            raise EmoteError(f"audio format {fmt!r}: expected one of {', '.join(FORMATS)}")
        if not 8000 <= rate <= 192000:
            raise EmoteError(f"audio rate {rate} Hz: expected 8000 to 192000")
        if channels not in (1, 2):
            raise EmoteError(f"audio channels {channels}: expected 1 or 2")
        self.fmt, self.rate, self.channels = fmt, rate, channels
        self.frame_bytes = FORMATS[fmt].itemsize * channels
        self._stream = None
        self._started = False

    def decode(self, data: bytes | np.ndarray) -> np.ndarray:
        if isinstance(data, np.ndarray):
            x = np.asarray(data, np.float32)
        else:
            if not self._started:
                kind = next((name for magic, name in CONTAINERS.items() if bytes(data[:4]).startswith(magic)), None)
                if kind:
                    raise EmoteError(f"audio is {kind} data, not raw PCM: send {self.fmt} samples at {self.rate} Hz")
            if len(data) % self.frame_bytes:
                raise EmoteError(
                    f"audio chunk of {len(data)} bytes is not whole {self.fmt} samples ({self.frame_bytes} bytes per sample x channels)"
                )
            x = np.frombuffer(data, FORMATS[self.fmt]).astype(np.float32)
            if self.fmt == "s16le":
                x /= 32768.0
        if x.size and not np.all(np.isfinite(x)):
            raise EmoteError("audio chunk holds NaN or infinite samples: not float32 PCM")
        if self.fmt == "f32le" and x.size and float(np.abs(x).max()) > 64.0:
            raise EmoteError(f"audio chunk peaks at {float(np.abs(x).max()):.3g}: not float32 PCM in [-1, 1] (is it s16le?)")
        self._started = True
        if self.channels == 2:
            x = x.reshape(-1, 2).mean(axis=1)
        return self._resample(x.astype(np.float32), last=False)

    def _resample(self, x: np.ndarray, last: bool) -> np.ndarray:
        if self.rate == SAMPLE_RATE:
            return x
        if self._stream is None:
            import soxr

            self._stream = soxr.ResampleStream(self.rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
        return self._stream.resample_chunk(x, last=last).astype(np.float32)

    def flush(self) -> np.ndarray:
        """The resampler's tail (end of an utterance); the next chunk starts a fresh stream."""
        tail = self._resample(np.zeros(0, np.float32), last=True) if self._stream is not None else np.zeros(0, np.float32)
        self._stream = None
        return tail

    def reset(self) -> None:
        self._stream = None


def idle_loop(frames: np.ndarray, crossfade: int) -> np.ndarray:
    """A seamless loop of ``frames``: the last ``crossfade`` frames blend into the first ones.

    The loop is frames[c:] with its last c frames blended toward frames[:c] (weights (m+1)/(c+1)),
    so that it wraps from (nearly) frames[c-1] to frames[c], a step the model made itself.
    """
    c = min(crossfade, len(frames) // 2)
    if c == 0:
        return frames
    out = frames[c:].astype(np.float32)
    w = (np.arange(1, c + 1, dtype=np.float32) / (c + 1))[:, None, None, None]
    out[-c:] = (1 - w) * out[-c:] + w * frames[:c].astype(np.float32)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


class LiveSession:
    """``LiveSession(pipe, image)``: ``push(chunk)`` audio as it arrives, ``next_frame()`` once per frame, ``clear()``."""

    def __init__(self, pipe, image, *, options: LiveOptions | None = None, face_box=None, audio: PcmDecoder | None = None, **inputs):
        if pipe.vocals is not None:
            from .pipeline import LIVE_VOCALS

            raise EmoteError(LIVE_VOCALS)
        self.pipe = pipe
        self.options = options or LiveOptions()
        self.decoder = audio or PcmDecoder("f32le")
        self.fps = pipe.fps
        self.spf = SAMPLE_RATE // pipe.fps  # samples per frame: 640 at 25 fps
        pipe.windows_for(self.options.hop_frames)  # a hop this bundle cannot cut: said now, not in the worker
        self.portrait = pipe.bind_portrait(image, face_box, **inputs)  # ReferenceNet once, for the session
        self.counters = Counters()
        self._cond = threading.Condition()
        self._inbox: deque[np.ndarray] = deque()  # speech audio not yet read by the worker
        self._inbox_samples = 0
        self._inbox_since = 0.0  # when the oldest chunk in the inbox arrived
        self._ending = False  # end() asked: the utterance ends once the inbox is read
        self._last_arrival = 0.0
        self._generation = 0  # bumped by clear() and close(): the worker gives up older work
        self._ready: deque[list] = deque()  # [image | None, audio, utterance, first, last] generated, not played
        self._ready_samples = 0
        self._ready_since: float | None = None  # when the first clip of the utterance next to play was ready
        self._busy = 0  # samples the worker read for the utterance in flight and has not yet made frames of
        self._playing: int | None = None  # the utterance now playing
        self._played_in_utterance = 0  # its samples played
        self._events: list[dict] = []
        self._later: list[dict] = []  # events for the frame after this one
        self._last_image = self.portrait.image
        self.idle: np.ndarray | None = None  # the idle loop, once made
        self._idle_pos = 0
        self._closed = False
        self.error: BaseException | None = None  # what stopped the worker, if anything did
        self._worker = threading.Thread(target=self._work, name="emote-live", daemon=True)
        self._worker.start()

    # -- input -----------------------------------------------------------------------------
    @property
    def buffered_seconds(self) -> float:
        """Audio received and not yet played (the inbox, the utterance in flight, the frames ready)."""
        return (self._inbox_samples + self._busy + self._ready_samples) / SAMPLE_RATE

    def push(self, data: bytes | np.ndarray) -> None:
        """Audio as it arrives: raw PCM bytes in the decoder's format, or float32 samples at its rate."""
        self._check_open()
        self.push_samples(self.decoder.decode(data))

    def push_samples(self, x: np.ndarray) -> None:
        """Audio already float32 mono at 16 kHz (a caller with a decoder of its own: a WebRTC track)."""
        self._check_open()
        x = np.asarray(x, np.float32).reshape(-1)
        with self._cond:
            limit = self.options.max_buffered_seconds
            if self.buffered_seconds + len(x) / SAMPLE_RATE > limit:
                self.counters.refused_audio_seconds += len(x) / SAMPLE_RATE
                raise EmoteError(f"more than {limit:g} s of audio buffered and not yet played: send audio at real-time pace")
            if len(x):
                if not self._inbox:
                    self._inbox_since = time.monotonic()
                self._inbox.append(x)
                self._inbox_samples += len(x)
            self._last_arrival = time.monotonic()
            self._cond.notify_all()

    def end(self) -> None:
        """The end of an utterance: its last clip is made from what has arrived (no wait for the gap)."""
        self._check_open()
        tail = self.decoder.flush()
        with self._cond:
            if len(tail):
                self._inbox.append(tail)
                self._inbox_samples += len(tail)
            self._ending = True
            self._cond.notify_all()

    def clear(self) -> dict:
        """Barge-in: drop the queued audio, the clip in flight and the frames not yet played.

        Returns ``{"type": "playback_finished", "playback_position": seconds of the utterance played,
        "interrupted": bool}`` (LiveKit's answer to ``clear_buffer``); the same event rides the next frame.
        """
        self._check_open()
        with self._cond:
            interrupted = bool(self._playing is not None or self._ready or self._inbox or self._busy)
            event = {
                "type": "playback_finished",
                "playback_position": self._played_in_utterance / SAMPLE_RATE if self._playing is not None else 0.0,
                "interrupted": interrupted,
            }
            self._generation += 1
            self._inbox.clear()
            self._inbox_samples = 0
            self._ending = False
            self._ready.clear()
            self._ready_samples = 0
            self._ready_since = None
            self._busy = 0
            if self._playing is not None:
                self._events.append({"type": "speaking_stopped", "utterance": self._playing, "interrupted": True})
            self._playing = None
            self._played_in_utterance = 0
            self._events.append(event)
            self.counters.cleared += 1
            self.decoder.reset()
            self._cond.notify_all()
        return event

    # -- output ----------------------------------------------------------------------------
    def next_frame(self, idle: bool = True) -> MediaFrame | None:
        """The next frame on the session's clock: speech when ready, else idle (``idle=False``: None instead)."""
        self._check_open()
        with self._cond:
            c, o = self.counters, self.options
            speech = None
            if self._later:
                self._events[:0], self._later = self._later, []
            if self._playing is None and self._ready:
                head = self._ready[0]
                due = self._ready_since is not None and time.monotonic() - self._ready_since >= o.prebuffer_seconds
                if due or not idle or any(f[4] for f in self._ready):
                    self._playing = head[2]
                    self._played_in_utterance = 0
                    self._events.append({"type": "speaking_started", "utterance": head[2], "pts": c.frames * self.spf})
            if self._playing is not None:
                if self._ready:
                    speech = self._ready.popleft()
                    self._ready_samples -= len(speech[1])
                elif not idle:
                    return None
            elif not idle:
                return None
            index = c.frames
            dropped = False
            if speech is not None:
                image, audio, utt, _, last = speech
                if image is not None:
                    self._last_image = image
                dropped = image is None
                self._played_in_utterance += len(audio)
                c.speech_frames += 1
                if last:  # the event rides the next frame: the one its pts names
                    self._stopped(utt, (index + 1) * self.spf, later=True)
                is_speech = True
            elif self._playing is not None:  # speech due, not generated yet: hold the image, play silence
                image, audio, is_speech = None, np.zeros(self.spf, np.float32), True
                c.underruns += 1
            else:
                image = self._idle_image()
                audio, is_speech = np.zeros(self.spf, np.float32), False
                self._last_image = image
                c.idle_frames += 1
            c.frames += 1
            events, self._events = tuple(self._events), []
            self._cond.notify_all()
        return MediaFrame(index, index * self.spf, image, audio, is_speech, dropped, events)

    def take_events(self) -> list[dict]:
        """The events not yet carried by a frame (with ``next_frame(idle=False)``, when no frame comes)."""
        with self._cond:
            events = self._events + self._later
            self._events, self._later = [], []
        return events

    def _idle_image(self) -> np.ndarray:
        if self.idle is None:
            return self.portrait.image
        image = self.idle[self._idle_pos % len(self.idle)]
        self._idle_pos += 1
        return image

    @property
    def queue_depth(self) -> int:
        """Frames generated and waiting to play."""
        return len(self._ready)

    # -- the worker ------------------------------------------------------------------------
    def _work(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._closed and not self._inbox and self.idle is not None:
                        self._cond.wait()
                    if self._closed:
                        return
                    has_speech = bool(self._inbox)
                    generation = self._generation
                try:
                    if has_speech:
                        self._utterance(generation)
                    else:
                        self._make_idle(generation)
                except Cleared:
                    self.pipe.backend.synchronize()
        except BaseException as e:  # the session reports it; the server closes it with the message
            self.error = e
            with self._cond:
                self._cond.notify_all()

    def _abort_if(self, stale) -> None:
        if self._closed or stale():
            raise Cleared

    def _make_idle(self, generation: int) -> None:
        """The idle loop from silence; given up (made later) as soon as speech arrives."""
        frames = max(self.pipe.frames, round(self.options.idle_seconds * self.fps))
        silence = np.zeros(frames * self.spf, np.float32)
        stale = lambda: self._generation != generation or bool(self._inbox)
        check = lambda clip, step: self._abort_if(stale)
        clips = list(self.pipe.clips(self.portrait, AudioSource(silence), seed=self.options.seed, progress=check))
        self._abort_if(stale)
        loop = idle_loop(np.concatenate(clips), self.options.crossfade_frames)
        with self._cond:
            self.idle = loop

    def _utterance(self, generation: int) -> None:
        """One utterance: the audio up to a pause (or end()) through the clip loop; its frames into the ready queue."""
        o, spf = self.options, self.spf
        stale = lambda: self._generation != generation
        heard: deque[np.ndarray] = deque()  # the utterance's samples not yet paired with a frame
        first_audio = None
        with self._cond:
            self.counters.utterances += 1
            utt = self.counters.utterances

        def chunks():
            nonlocal first_audio
            while True:
                with self._cond:
                    while True:
                        self._abort_if(stale)
                        if self._inbox:
                            x = np.concatenate(self._inbox)
                            self._inbox.clear()
                            self._inbox_samples = 0
                            self._busy += len(x)
                            break
                        if self._ending:
                            self._ending = False
                            return
                        wait = self._last_arrival + o.gap_seconds - time.monotonic()
                        if wait <= 0:
                            tail = self.decoder.flush()  # the utterance is over: the resampler's tail belongs to it
                            if not len(tail):
                                return
                            x = tail
                            self._busy += len(x)
                            break
                        self._cond.wait(wait)
                if first_audio is None:
                    first_audio = self._inbox_since or time.monotonic()
                heard.append(x)
                yield x

        check = lambda clip, step: self._abort_if(stale)
        source = AudioSource(chunks())
        first = True
        try:
            for frames in self.pipe.clips(self.portrait, source, seed=o.seed, progress=check, hop=o.hop_frames):
                audio = np.concatenate(heard) if heard else np.zeros(0, np.float32)
                need = len(frames) * spf
                if len(audio) < need:  # the last frame's audio: the track's end, padded with silence
                    audio = np.concatenate([audio, np.zeros(need - len(audio), np.float32)])
                heard.clear()
                if len(audio) > need:
                    heard.append(audio[need:])
                with self._cond:
                    self._abort_if(stale)
                    if first:
                        self._ready_since = time.monotonic()
                        if first_audio is not None:
                            self.counters.first_frame_latency.append(self._ready_since - first_audio)
                    self._hand_over([[f, audio[i * spf : (i + 1) * spf], utt, first and i == 0, False] for i, f in enumerate(frames)])
                    self._busy -= min(self._busy, need)
                    self._ready_samples += need
                first = False
        except EmoteError:
            if source.length * self.fps * 2 >= SAMPLE_RATE:  # not "shorter than one video frame": a real failure
                raise
            with self._cond:  # under half a frame of audio (< 20 ms at 25 fps) makes no frame
                self._busy = 0
            return
        with self._cond:
            self._abort_if(stale)
            self._busy = 0
            mine = [f for f in self._ready if f[2] == utt]
            if mine:
                mine[-1][4] = True
            elif self._playing == utt:  # every frame already played: the utterance ends now
                self._stopped(utt, self.counters.frames * spf)
            self._cond.notify_all()

    def _stopped(self, utt: int, pts: int, later: bool = False) -> None:
        (self._later if later else self._events).append({"type": "speaking_stopped", "utterance": utt, "interrupted": False, "pts": pts})
        self._playing = None
        if not self._ready:  # else the next utterance's first clip set it when it was ready
            self._ready_since = None

    def _hand_over(self, frames: list) -> None:
        """Frames into the ready queue (the lock held); past the bound the oldest images go, their audio stays."""
        self._ready.extend(frames)
        excess = sum(item[0] is not None for item in self._ready) - self.options.max_ready_frames  # images held
        for item in self._ready:
            if excess <= 0:
                break
            if item[0] is not None:
                item[0] = None
                self.counters.dropped_video += 1
                excess -= 1
        self._cond.notify_all()

    # -- lifetime --------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise EmoteError("the session is closed")
        if self.error is not None:
            raise EmoteError(f"the session stopped: {self.error}")

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self, timeout: float = 10.0) -> None:
        """Stop the worker (it gives up the clip in flight at its next step); the pipeline is free again."""
        with self._cond:
            self._closed = True
            self._generation += 1
            self._cond.notify_all()
        self._worker.join(timeout)

    def __enter__(self) -> LiveSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
