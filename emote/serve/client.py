"""`emote client`: a portrait and an audio file through a running `emote serve`, to an MP4.

Creates a session (the portrait uploaded), streams the audio over the session's WebSocket at
real-time pace in 20 ms chunks (``fast``: as fast as the server makes frames, at most
``AHEAD`` seconds ahead of them), ends the utterance, and writes the frames it got with the
audio that came with them. With no barge-in, the frames are `emote generate`'s for the same
inputs and seed, through JPEG. It reports the first-frame latency (first chunk sent -> first
speech frame received) and the audio/video offset: the lag between the audio that came with
the frames and the audio they were made from (0 when both ride one clock).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..bundle import SAMPLE_RATE
from ..errors import EmoteError
from .protocol import NOT_HERE, decode_jpeg, unpack_frame

CHUNK_SECONDS = 0.02
AHEAD = 2.0  # --fast: seconds of audio sent ahead of the frames received
MAX_LAG = 0.25  # seconds searched either way for the audio/video offset
STREAM_TRIES = 4  # a stream that reached a server without its session (servers behind one address): retried
RETRY_SECONDS = 0.5


@dataclass(frozen=True)
class ClientSummary:
    frames: int
    expected_frames: int
    audio_seconds: float
    first_frame_seconds: float
    av_offset_ms: float
    dropped_video: int
    underruns: int

    def line(self) -> str:
        return (
            f"{self.frames} frames ({self.expected_frames} expected) for {self.audio_seconds:.2f} s of audio; "
            f"first frame {self.first_frame_seconds * 1000:.0f} ms after the first chunk; "
            f"audio/video offset {self.av_offset_ms:+.1f} ms; {self.dropped_video} video frames dropped, "
            f"{self.underruns} underrun frames (speech due, not yet made: left out of the video)"
        )


def http(
    method: str,
    url: str,
    *,
    api_key: str | None,
    body: bytes | None = None,
    content_type: str | None = None,
    timeout: float = 60.0,
    headers: dict | None = None,
) -> dict:
    """One request; the server's one-line error as an EmoteError. ``headers``: a session's routing headers (POST /sessions gives them)."""
    headers = dict(headers or {})
    if api_key:
        headers["X-API-Key"] = api_key
    if content_type:
        headers["Content-Type"] = content_type
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        try:
            message = json.loads(e.read())["error"]
        except (ValueError, KeyError):
            message = e.reason
        raise EmoteError(f"{method} {url}: {e.code} {message}") from None
    except (urllib.error.URLError, OSError) as e:
        raise EmoteError(f"{method} {url}: cannot reach the server ({getattr(e, 'reason', e)})") from None


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for k, v in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode())
    for k, (name, data) in files.items():
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"; filename="{name}"\r\nContent-Type: application/octet-stream\r\n\r\n'
        parts.append(head.encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def create_session(url: str, api_key: str | None, *, image: str | Path | None = None, example: str | None = None, **fields) -> dict:
    files = {}
    if image is not None:
        path = Path(image)
        if not path.is_file():
            raise EmoteError(f"image {path} not found")
        files["image"] = (path.name, path.read_bytes())
    form = {k: str(v) for k, v in fields.items() if v is not None}
    if example is not None:
        form["example"] = example
    body, ctype = multipart(form, files)
    return http("POST", url.rstrip("/") + "/sessions", api_key=api_key, body=body, content_type=ctype)


def offset_ms(received: np.ndarray, sent: np.ndarray) -> float:
    """The lag (ms) at which the received audio best matches the sent audio (positive: received later)."""
    n = min(len(received), len(sent))
    if n < SAMPLE_RATE // 10:
        return 0.0
    a, b = received[:n] - received[:n].mean(), sent[:n] - sent[:n].mean()
    size = 1 << int(np.ceil(np.log2(2 * n)))
    corr = np.fft.irfft(np.fft.rfft(a, size) * np.conj(np.fft.rfft(b, size)), size)
    m = int(MAX_LAG * SAMPLE_RATE)
    lags = np.concatenate([np.arange(0, m + 1), np.arange(-m, 0)])
    values = np.concatenate([corr[: m + 1], corr[-m:]])
    return float(lags[int(np.argmax(values))]) * 1000 / SAMPLE_RATE


async def open_stream(base: str, info: dict, tries: int = STREAM_TRIES):
    """The session's WebSocket, past its "ready" event. It carries the headers POST /sessions gave
    (servers behind one address route a session's requests by them, emote/serve/ray_app.py); a
    stream closed as not on the server it reached (NOT_HERE: the router not caught up yet) is retried."""
    import websockets

    for attempt in range(1, tries + 1):
        ws = await websockets.connect(
            base + info["stream"], max_size=None, open_timeout=10, close_timeout=2, additional_headers=info.get("headers") or {}
        )
        ready = json.loads(await asyncio.wait_for(ws.recv(), 10))
        if ready.get("type") == "ready":
            return ws
        with contextlib.suppress(asyncio.TimeoutError):  # the server closes after its error: read its code
            await asyncio.wait_for(ws.wait_closed(), 5)
        await ws.close()
        if ws.close_code != NOT_HERE or attempt == tries:
            raise EmoteError(f"the server refused the stream: {ready.get('message', ready)}")
        await asyncio.sleep(RETRY_SECONDS)


async def stream_file(url: str, api_key: str | None, image, audio, *, example=None, fast=False, seed=0, timeout=None):
    """Returns (frames uint8 (N, H, W, 3), received audio 16 kHz, fps, ClientSummary)."""
    import websockets

    from ..runtime.audio import read_audio, resample, to_mono
    from ..runtime.clips import frame_count

    track, rate = read_audio(audio)
    mono = to_mono(track)
    sent16 = resample(mono, rate)
    info = await asyncio.to_thread(
        create_session,
        url,
        api_key,
        image=image,
        example=example,
        seed=seed,
        audio_format="f32le",
        audio_rate=rate,
        pace="asap" if fast else None,
    )
    base = url.rstrip("/").replace("http://", "ws://", 1).replace("https://", "wss://", 1)
    fps = info["fps"]
    expected = frame_count(len(sent16), fps)
    timeout = timeout or 30.0 + 10.0 * len(sent16) / SAMPLE_RATE
    frames, audio_parts = [], []
    first_sent = first_frame = None
    received_seconds = 0.0
    stats = {"dropped_video": 0, "underruns": 0, "underruns_seen": 0, "dropped_seen": 0}
    try:
        async with await open_stream(base, info) as ws:

            async def send():
                nonlocal first_sent
                step = int(CHUNK_SECONDS * rate)
                t0 = time.monotonic()
                for i in range(0, len(mono), step):
                    if fast:
                        while i / rate - received_seconds > AHEAD:
                            await asyncio.sleep(0.01)
                    else:
                        await asyncio.sleep(max(0.0, t0 + i / rate - time.monotonic()))
                    if first_sent is None:
                        first_sent = time.monotonic()
                    await ws.send(mono[i : i + step].astype("<f4").tobytes())
                await ws.send(json.dumps({"type": "end"}))

            async def receive():
                nonlocal first_frame, received_seconds
                speaking = False
                last = None
                async for message in ws:
                    if isinstance(message, str):
                        event = json.loads(message)
                        kind = event.get("type")
                        if kind in ("error", "closed"):
                            raise EmoteError(f"server: {event.get('message') or event.get('reason')}")
                        if kind == "speaking_started":
                            speaking = True
                        elif kind == "speaking_stopped" and speaking:
                            return
                        elif kind == "stats":
                            stats.update({k: event[k] for k in ("dropped_video", "underruns")})
                        continue
                    header, jpeg, pcm = unpack_frame(message)
                    if header["underrun"]:
                        stats["underruns_seen"] += 1
                    if not (speaking and header["speech"]) or header["underrun"]:  # a stall is no frame of the video
                        continue
                    if first_frame is None:
                        first_frame = time.monotonic()
                    if jpeg:
                        last = decode_jpeg(jpeg)
                    else:
                        stats["dropped_seen"] += 1  # dropped under load (queue full or sent late): the previous image
                    if last is None:
                        raise EmoteError("the first speech frame came without its image")
                    frames.append(last)
                    audio_parts.append(pcm)
                    received_seconds += len(pcm) / SAMPLE_RATE
                raise EmoteError("the server closed the stream before the utterance ended")

            sender = asyncio.create_task(send())
            try:
                await asyncio.wait_for(receive(), timeout)
            except asyncio.TimeoutError:
                raise EmoteError(f"no end of the utterance within {timeout:.0f} s") from None
            finally:
                sender.cancel()
    except (OSError, websockets.exceptions.WebSocketException) as e:
        raise EmoteError(f"stream {base}/sessions/{info['id']}/ws: {e.__class__.__name__}: {e}") from None
    finally:
        with contextlib.suppress(EmoteError):  # the stream's end already ended it
            await asyncio.to_thread(http, "DELETE", url.rstrip("/") + f"/sessions/{info['id']}", api_key=api_key, timeout=10)
    received = np.concatenate(audio_parts) if audio_parts else np.zeros(0, np.float32)
    summary = ClientSummary(
        frames=len(frames),
        expected_frames=expected,
        audio_seconds=len(sent16) / SAMPLE_RATE,
        first_frame_seconds=(first_frame - first_sent) if first_frame and first_sent else float("nan"),
        av_offset_ms=offset_ms(received, sent16),
        dropped_video=max(stats["dropped_video"], stats["dropped_seen"]),
        underruns=max(stats["underruns"], stats["underruns_seen"]),
    )
    video = np.stack(frames) if frames else np.zeros((0, info["height"], info["width"], 3), np.uint8)
    return video, received, fps, summary


def run_client(url, api_key, image, audio, out, *, example=None, fast=False, seed=0, npy=None) -> ClientSummary:
    from ..runtime.video import VideoWriter, check_writable, write_npy

    check_writable(out)
    if npy is not None:
        check_writable(npy)
    video, received, fps, summary = asyncio.run(stream_file(url, api_key, image, audio, example=example, fast=fast, seed=seed))
    if not len(video):
        raise EmoteError("the server sent no speech frames")
    if npy is not None:
        write_npy(video, npy)
    with VideoWriter(out, fps, (video.shape[2], video.shape[1]), audio=received, audio_rate=SAMPLE_RATE) as w:
        w.write(video)
    return summary
