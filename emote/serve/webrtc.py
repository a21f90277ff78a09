"""WebRTC for a session (aiortc): ``POST /sessions/{id}/offer`` -> answer; audio and video tracks on one clock.

One pacer drives both tracks: the audio track's ``recv`` sleeps until its 20 ms chunk is due
(aiortc leaves pacing to the track: aiortc#764) and, every second chunk, takes the session's
next frame, whose image it hands to the video track. So the two tracks start together (a
track that starts late stays out of sync, its RTCP anchored at send time: aiortc#901), their
timestamps come from the same frame index (audio: samples at 16 kHz; video: 90 kHz), and the
video queue is bounded (2 frames): a video sender that falls behind loses images, counted,
never audio.

The browser's microphone (an incoming audio track) is the session's audio in, behind a noise
gate (what stays under -50 dBFS for the gap is not speech: the utterance ends, the idle loop
returns). A data channel carries JSON both ways: the session's events out, ``clear``, ``end`` and
``say`` (text in) in. ICE: host candidates only (no STUN, no TURN): loopback and LAN.
"""

from __future__ import annotations

import asyncio
import json
import time
from fractions import Fraction

import numpy as np

from ..bundle import SAMPLE_RATE
from ..errors import EmoteError
from ..runtime.live import PcmDecoder

VIDEO_CLOCK = 90_000  # RTP's video clock rate
VIDEO_QUEUE = 2  # frames the video sender may lag behind the audio before images are dropped
GATE_DBFS = -50.0  # microphone chunks quieter than this are not speech
GATE_HOLD = 0.3  # seconds the gate stays open after the last loud chunk (the gap that ends an utterance)


class NoiseGate:
    """Passes a microphone's audio while it is loud, and for ``hold`` seconds after."""

    def __init__(self, dbfs: float = GATE_DBFS, hold: float = GATE_HOLD):
        self.threshold = 10 ** (dbfs / 20)
        self.hold = hold
        self._open_until = 0.0
        self._clock = 0.0  # seconds of audio seen (the gate keeps the media's time, not the wall's)

    def __call__(self, x: np.ndarray) -> bool:
        self._clock += len(x) / SAMPLE_RATE
        if len(x) and float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) >= self.threshold:
            self._open_until = self._clock + self.hold
        return self._clock <= self._open_until


class SessionMedia:
    """The session's frames as two aiortc tracks paced by one clock."""

    def __init__(self, session, metrics=None):
        from aiortc.mediastreams import MediaStreamTrack

        self.session, self.live, self.metrics = session, session.live, metrics
        self.fps = self.live.fps
        self.spf = self.live.spf
        self.chunk = self.spf // 2  # audio packets: half a frame, 20 ms at 25 fps
        self.video_queue: asyncio.Queue = asyncio.Queue(VIDEO_QUEUE)
        self.events: list = []  # where the session's events go (the data channel's send)
        self.t0: float | None = None
        self.dropped = 0
        self._last_image = None
        self._audio_sent_at: dict[int, float] = {}
        media = self

        class Audio(MediaStreamTrack):
            kind = "audio"

            def __init__(self):
                super().__init__()
                self.j = 0
                self.current = None

            async def recv(self):
                return await media._audio(self)

        class Video(MediaStreamTrack):
            kind = "video"

            async def recv(self):
                return await media._video()

        self.audio_track, self.video_track = Audio(), Video()

    async def _audio(self, track):
        import av

        loop = asyncio.get_running_loop()
        if self.t0 is None:
            self.t0 = loop.time()
        j = track.j
        wait = self.t0 + j * self.chunk / SAMPLE_RATE - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        half = j % 2
        if half == 0:
            frame = self.live.next_frame()
            track.current = frame.audio
            self._frame(frame)
        pcm = track.current[half * self.chunk : (half + 1) * self.chunk]
        out = av.AudioFrame.from_ndarray((np.clip(pcm, -1, 32767 / 32768) * 32768).astype(np.int16)[None], format="s16", layout="mono")
        out.sample_rate, out.pts, out.time_base = SAMPLE_RATE, j * self.chunk, Fraction(1, SAMPLE_RATE)
        track.j += 1
        return out

    def _frame(self, frame) -> None:
        for e in frame.events:
            for send in self.events:
                send(json.dumps(e))
        if frame.image is not None:
            self._last_image = frame.image
        if self.video_queue.full():  # the video sender is behind: its oldest image goes, the audio plays on
            self.video_queue.get_nowait()
            self.dropped += 1
            if self.metrics is not None:
                self.metrics.dropped.labels(reason="webrtc").inc()
        self._audio_sent_at[frame.index] = time.monotonic()
        self.video_queue.put_nowait((frame.index, self._last_image))
        if self.metrics is not None:
            self.metrics.frames.labels(kind="speech" if frame.speech else "idle").inc()

    async def _video(self):
        import av

        index, image = await self.video_queue.get()
        out = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        out.pts, out.time_base = index * (VIDEO_CLOCK // self.fps), Fraction(1, VIDEO_CLOCK)
        sent = self._audio_sent_at.pop(index, None)
        if sent is not None and self.metrics is not None:
            self.metrics.av_offset.labels(transport="webrtc").observe(time.monotonic() - sent)
        return out

    async def read_microphone(self, track) -> None:
        """The browser's audio track -> the session (through the noise gate)."""
        from aiortc.mediastreams import MediaStreamError

        decoder, gate = None, NoiseGate()
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            pcm = frame.to_ndarray()
            channels = len(frame.layout.channels)
            if pcm.dtype == np.int16:
                x = pcm.astype(np.float32) / 32768.0
            else:
                x = pcm.astype(np.float32)
            x = x.reshape(-1, channels).mean(axis=1) if frame.format.is_packed else x.reshape(channels, -1).mean(axis=0)
            if decoder is None or decoder.rate != frame.sample_rate:
                decoder = PcmDecoder("f32le", frame.sample_rate, 1)
            x16 = decoder.decode(x)
            self.session.last_message = time.monotonic()
            if gate(x16) and len(x16):
                try:
                    self.live.push_samples(x16)
                except EmoteError as e:
                    for send in self.events:
                        send(json.dumps({"type": "error", "message": str(e)}))
                    raise


async def answer(session, sessions, offer: dict, metrics=None, say=None) -> dict:
    """The SDP answer to ``offer`` ({"sdp", "type"}); the connection lives until the session ends."""
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    if offer.get("type") != "offer" or not isinstance(offer.get("sdp"), str):
        raise EmoteError('the body must be {"sdp": "...", "type": "offer"} (RTCPeerConnection.localDescription)')
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))  # host candidates only: no STUN server is asked
    media = SessionMedia(session, metrics)
    tasks: list[asyncio.Task] = []

    def end(reason: str) -> None:
        if session.ended is None:
            asyncio.get_running_loop().run_in_executor(None, sessions.end, session.id, reason)

    async def microphone(track) -> None:
        try:
            await media.read_microphone(track)
        except EmoteError as e:  # more audio buffered than the watchdog allows: the session ends, saying so
            end(f"max_buffered: {e}")

    @pc.on("track")
    def on_track(track):
        if track.kind == "audio":
            tasks.append(asyncio.ensure_future(microphone(track)))

    @pc.on("datachannel")
    def on_channel(channel):
        media.events.append(lambda text: channel.send(text) if channel.readyState == "open" else None)

        @channel.on("message")
        def on_message(message):
            session.last_message = time.monotonic()
            try:
                command = json.loads(message)
                kind = command["type"]
            except (ValueError, KeyError, TypeError):
                command, kind = {}, None
            if kind == "clear":
                session.live.clear()
            elif kind == "end":
                session.live.end()
            elif kind == "say" and say is not None:
                tasks.append(asyncio.ensure_future(reporting(say(command.get("text")))))
            else:
                channel.send(
                    json.dumps(
                        {"type": "error", "message": 'commands are {"type": "clear"}, {"type": "end"} or {"type": "say", "text": "..."}'}
                    )
                )

        async def reporting(job) -> None:
            try:
                await job
            except EmoteError as e:
                if channel.readyState == "open":
                    channel.send(json.dumps({"type": "error", "message": str(e)}))

    @pc.on("connectionstatechange")
    async def on_state():
        if pc.connectionState in ("failed", "closed"):
            end(f"closed: the WebRTC connection {pc.connectionState}")

    async def watch():
        try:
            while session.ended is None:
                await asyncio.sleep(0.25)
        finally:
            for t in tasks:
                t.cancel()
            await pc.close()

    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer["sdp"], type="offer"))
        kinds = {t.kind for t in pc.getTransceivers()}
        if kinds != {"audio", "video"}:
            raise EmoteError(f"the offer must hold an audio and a video transceiver, got {', '.join(sorted(kinds)) or 'none'}")
        # both tracks before the answer, so both start with the connection, on the one pacer
        pc.addTrack(media.audio_track)
        pc.addTrack(media.video_track)
        await pc.setLocalDescription(await pc.createAnswer())
    except EmoteError:
        await pc.close()
        raise
    except ValueError as e:
        await pc.close()
        raise EmoteError(f"unusable SDP offer: {e}") from None
    session.streaming = True
    tasks.append(asyncio.ensure_future(watch()))
    session.webrtc = (pc, tasks, media)
    return {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type}
