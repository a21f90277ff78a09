"""`emote serve` as users run it (a subprocess on 127.0.0.1, an ephemeral port) and real clients: HTTP, WebSocket, WebRTC (aiortc), `emote client`."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import time
import urllib.request

import numpy as np
import pytest

pytest.importorskip("fastapi")
websockets_sync = pytest.importorskip("websockets.sync.client")

from conftest import SERVE_KEY as KEY  # noqa: E402
from conftest import SERVE_ORIGIN  # noqa: E402

from emote.bundle import SAMPLE_RATE  # noqa: E402
from emote.errors import EmoteError  # noqa: E402
from emote.runtime.examples import PORTRAIT, SPEECH  # noqa: E402
from emote.serve.client import create_session, http  # noqa: E402
from emote.serve.protocol import unpack_frame  # noqa: E402


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory):
    import soundfile as sf

    from emote.runtime.audio import load_audio

    path = tmp_path_factory.mktemp("serve") / "speech.wav"
    sf.write(path, load_audio(SPEECH)[: int(1.2 * SAMPLE_RATE)], SAMPLE_RATE)
    return path


def sessions_now(url) -> int:
    with urllib.request.urlopen(url + "/readyz", timeout=5) as r:
        return json.loads(r.read())["sessions"]


def wait_sessions(url, n: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while sessions_now(url) != n:
        assert time.monotonic() < deadline, f"sessions never came to {n}"
        time.sleep(0.1)


@contextlib.contextmanager
def connect(url, info):
    """The session's stream and its first message (ready, or the error)."""
    with websockets_sync.connect(url.replace("http://", "ws://") + info["stream"], open_timeout=10, close_timeout=2, max_size=None) as ws:
        yield ws, json.loads(ws.recv(timeout=10))


def frames_until(ws, until, timeout: float = 30.0):
    """Frames (header, jpeg, audio, arrival time) and events until ``until(frames, events)``."""
    frames, events, deadline = [], [], time.monotonic() + timeout
    while not until(frames, events):
        m = ws.recv(timeout=max(0.1, deadline - time.monotonic()))
        if isinstance(m, str):
            events.append((json.loads(m), time.monotonic()))
        else:
            frames.append((*unpack_frame(m), time.monotonic()))
    return frames, events


def test_ready_reports_the_measured_limit_and_metrics(server):
    url, ready = server
    assert ready["real_time_factor"] > 0
    assert ready["session_limit"] == min(2, max(1, int(0.8 / ready["real_time_factor"])))
    assert ready["pipelines"] == ready["session_limit"]  # --warm: every session's pipeline made before ready
    with urllib.request.urlopen(url + "/healthz", timeout=5) as r:
        assert json.loads(r.read()) == {"status": "ok"}
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    for name in (
        "emote_sessions_active",
        "emote_sessions_limit",
        "emote_real_time_factor",
        "emote_first_frame_seconds",
        "emote_queue_depth_frames",
    ):
        assert name in text


def test_client_video_equals_generate_within_codec_loss(server, tiny_bundle, speech_wav, tmp_path):
    """`emote client --fast` (every frame sent as made) gets `emote generate`'s frames for the same inputs and seed, through JPEG."""
    from emote.cli import main
    from emote.runtime.video import probe_video
    from emote.serve.protocol import decode_jpeg, encode_jpeg

    url, _ = server
    out, got, ref = tmp_path / "client.mp4", tmp_path / "client.npy", tmp_path / "generate.npy"
    client = ["client", url, "--api-key", KEY, "--image", str(PORTRAIT), "--audio", str(speech_wav), "-o", str(out)]
    assert main([*client, "--fast", "--npy", str(got)]) == 0
    generate = [
        "generate",
        "--bundle",
        str(tiny_bundle),
        "--image",
        str(PORTRAIT),
        "--audio",
        str(speech_wav),
        "-o",
        str(tmp_path / "g.mp4"),
    ]
    assert main([*generate, "--npy", str(ref), "--quiet", "--backend", "onnxruntime"]) == 0
    expected = np.stack([decode_jpeg(encode_jpeg(f)) for f in np.load(ref)])  # the wire's codec, nothing else
    np.testing.assert_array_equal(np.load(got), expected)
    info = probe_video(out)
    assert info["frames"] == len(expected) == 30 and info["audio_seconds"] == pytest.approx(1.2, abs=0.05)
    wait_sessions(url, 0)


def test_client_at_real_time_pace_keeps_audio_and_video_together(server, speech_wav, tmp_path, capsys):
    from emote.cli import main

    url, _ = server
    assert main(["client", url, "--api-key", KEY, "--example", "portrait", "--audio", str(speech_wav), "-o", str(tmp_path / "rt.mp4")]) == 0
    line = capsys.readouterr().out
    offset = float(line.split("audio/video offset ")[1].split(" ms")[0])
    assert -45 <= offset <= 125  # ITU-R BT.1359: audio at most 45 ms early, 125 ms late
    first = float(line.split("first frame ")[1].split(" ms")[0])
    assert 0 < first < 10_000


def test_stream_keeps_one_clock_idle_frames_and_barge_in(server):
    """Idle frames with no audio; speech frames carry their own audio (offset 0 on the clock); clear() -> silence <= 200 ms."""
    from emote.runtime.audio import load_audio

    url, _ = server
    info = create_session(url, KEY, example="portrait", audio_format="f32le")
    with connect(url, info) as (ws, ready):
        assert ready["type"] == "ready" and ready["fps"] == 25
        idle, _ = frames_until(ws, lambda f, e: len(f) >= 10)  # no audio sent: idle frames keep coming
        assert all(not h["speech"] and h["jpeg_bytes"] > 0 and not a.any() for h, _, a, _ in idle)
        spf = SAMPLE_RATE // 25
        speech = load_audio(SPEECH)[: 3 * SAMPLE_RATE]
        for i in range(0, len(speech), spf):
            ws.send(speech[i : i + spf].astype("<f4").tobytes())
        frames, _ = frames_until(ws, lambda f, e: sum(h["speech"] and not h["underrun"] for h, *_ in f) >= 20)
        ws.send(json.dumps({"type": "clear"}))
        sent = time.monotonic()
        after, events = frames_until(
            ws, lambda f, e: any(not h["speech"] for h, *_ in f) and any(x["type"] == "playback_finished" for x, _ in e)
        )
    silent_at = next(t for h, _, a, t in after if not h["speech"] and not a.any())
    assert silent_at - sent <= 0.2
    finished = next(x for x, _ in events if x["type"] == "playback_finished")
    assert finished["interrupted"] and finished["playback_position"] > 0
    # one clock: every frame's pts is its index x 640 samples, with no gap or repeat
    every = idle + frames + after
    assert [h["pts"] for h, *_ in every] == [h["index"] * spf for h, *_ in every]
    assert np.all(np.diff([h["index"] for h, *_ in every]) == 1)
    # the audio that came with the speech frames is the speech sent, at lag 0: the A/V offset is 0 ms (BT.1359: -45/+125)
    got = np.concatenate([a for h, _, a, _ in frames + after if h["speech"] and not h["underrun"]])
    n = min(len(got), len(speech))
    np.testing.assert_allclose(got[:n], speech[:n], atol=1 / 32768 + 1e-6)
    wait_sessions(url, 0)


def test_bad_inputs_are_clean_errors_and_the_server_stays_up(server, tmp_path):
    url, _ = server

    def refused(fn, status, text):
        with pytest.raises(EmoteError, match=f"{status} .*{text}"):
            fn()

    refused(lambda: create_session(url, None, example="portrait"), 401, "API key")
    refused(lambda: create_session(url, "wrong", example="portrait"), 401, "API key")
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG" + bytes(600 * 1024))
    refused(lambda: create_session(url, KEY, image=big), 413, "over the limit")
    text = tmp_path / "face.jpg"
    text.write_text("not a picture")
    refused(lambda: create_session(url, KEY, image=text), 400, "not an image")
    refused(lambda: create_session(url, KEY, example="portrait", audio_format="mp3"), 400, "audio format 'mp3'")
    refused(lambda: create_session(url, KEY, example="nobody"), 400, "the examples are portrait")
    refused(lambda: create_session(url, KEY, example="portrait", seed="x"), 400, "expected an integer")
    refused(lambda: http("DELETE", url + "/sessions/nope", api_key=KEY), 404, "no session nope")
    # a wrong token, then an expired one: an error event and the stream closed
    info = create_session(url, KEY, example="portrait", token_ttl=0.3)
    bad = dict(info, stream=info["stream"].split("token=")[0] + "token=wrong")
    with connect(url, bad) as (ws, event):
        assert event == {"type": "error", "message": "wrong token for this session"}
    time.sleep(0.5)
    with connect(url, info) as (ws, event):
        # refused as expired, or already ended by the watchdog for it: either way, said so
        assert event["type"] == "error" and re.search("token expired|ended \\(token_expired: the token expired", event["message"])
    with contextlib.suppress(EmoteError):  # ended already if the watchdog came first
        http("DELETE", url + f"/sessions/{info['id']}", api_key=KEY)
    # audio that is not PCM: an error event, the session goes on; then a client that vanishes mid-stream
    info = create_session(url, KEY, example="portrait")
    with connect(url, info) as (ws, _):
        vanish(ws, url)
    wait_sessions(url, 0)
    with urllib.request.urlopen(url + "/healthz", timeout=5) as r:
        assert r.status == 200


def vanish(ws, url) -> None:
    ws.send(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(64))
    _, events = frames_until(ws, lambda f, e: any(x["type"] == "error" for x, _ in e))
    assert "WAV data, not raw PCM" in next(x for x, _ in events if x["type"] == "error")["message"]
    ws.send(np.zeros(640, "<i2").tobytes())
    frames_until(ws, lambda f, e: len(f) >= 3)
    ws.socket.close()  # no close handshake: the client is gone


def test_a_client_that_never_reads_is_ended_for_backpressure(server):
    """A client that reads nothing (a 4 KB receive buffer, at most one message queued by the client library): the
    server's sends wait, and after its send timeout (5 s) it ends the session, says why to a later connect, and
    stays up for everyone else."""
    import socket

    url, _ = server
    info = create_session(url, KEY, example="portrait")
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    stream = url.replace("http://", "ws://") + info["stream"]
    with websockets_sync.connect(stream, sock=sock, open_timeout=10, close_timeout=1, max_size=None, max_queue=1) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "ready"
        t0 = time.monotonic()
        wait_sessions(url, 0, timeout=90)  # the idle frames (25 a second) fill the buffers; nothing is read
        elapsed = time.monotonic() - t0
    print(f"never-reading client: ended for backpressure {elapsed:.1f} s after its stream opened")
    assert elapsed >= 5.0  # not before the send timeout
    with connect(url, info) as (ws, event):
        assert event["type"] == "error"
        assert f"session {info['id']} has ended (backpressure: the client read nothing for 5 s)" == event["message"]
    with urllib.request.urlopen(url + "/healthz", timeout=5) as r:
        assert r.status == 200
    other = create_session(url, KEY, example="portrait")
    with connect(url, other) as (ws, event):
        assert event["type"] == "ready"
        frames, _ = frames_until(ws, lambda f, e: len(f) >= 5)
        assert len(frames) >= 5


def test_admission_refuses_past_the_limit_with_retry_after(server):
    url, ready = server
    made = [create_session(url, KEY, example="portrait") for _ in range(ready["session_limit"])]
    req = urllib.request.Request(url + "/sessions", data=b"example=portrait", method="POST", headers={"X-API-Key": KEY})
    req.add_header("Content-Type", "application/x-www-form-urlencoded")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 429 and 1 <= int(e.value.headers["Retry-After"]) <= 60
    assert "session(s) at once in real time" in json.loads(e.value.read())["error"]
    for info in made:
        http("DELETE", url + f"/sessions/{info['id']}", api_key=KEY)
    # create/delete cycles leave no session behind
    for _ in range(10):
        info = create_session(url, KEY, example="portrait")
        http("DELETE", url + f"/sessions/{info['id']}", api_key=KEY)
    assert sessions_now(url) == 0


def test_webrtc_session_from_an_aiortc_client(server):
    """A WebRTC peer on loopback: microphone track in, audio and video out on one clock, events on a data channel."""
    aiortc = pytest.importorskip("aiortc")
    import asyncio
    from fractions import Fraction

    import av
    from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

    from emote.runtime.audio import load_audio

    url, _ = server
    speech = load_audio(SPEECH)[: 2 * SAMPLE_RATE]

    class Microphone(MediaStreamTrack):  # the speech file, 20 ms at a time, at real-time pace
        kind = "audio"

        def __init__(self):
            super().__init__()
            self.i, self.t0 = 0, None

        async def recv(self):
            if self.t0 is None:
                self.t0 = time.monotonic()
            await asyncio.sleep(max(0.0, self.t0 + self.i * 0.02 - time.monotonic()))
            chunk = speech[self.i * 320 : (self.i + 1) * 320] if self.i * 320 < len(speech) else np.zeros(320, np.float32)
            chunk = np.pad(chunk, (0, 320 - len(chunk)))
            frame = av.AudioFrame.from_ndarray((chunk * 32767).astype(np.int16)[None], format="s16", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = SAMPLE_RATE, self.i * 320, Fraction(1, SAMPLE_RATE)
            self.i += 1
            return frame

    async def run():
        info = await asyncio.to_thread(create_session, url, KEY, example="portrait")
        pc = aiortc.RTCPeerConnection(aiortc.RTCConfiguration(iceServers=[]))
        pc.addTrack(Microphone())
        pc.addTransceiver("video", direction="recvonly")
        channel = pc.createDataChannel("events")
        events, video, audio = [], [], []
        channel.on("message", lambda m: events.append(json.loads(m)))
        readers = []

        async def read(track, out):
            try:
                while True:
                    out.append((await track.recv(), time.monotonic()))
            except MediaStreamError:
                return

        pc.on("track", lambda t: readers.append(asyncio.ensure_future(read(t, video if t.kind == "video" else audio))))
        await pc.setLocalDescription(await pc.createOffer())
        body = json.dumps({"sdp": pc.localDescription.sdp, "type": "offer"}).encode()
        answer = await asyncio.to_thread(http, "POST", url + info["offer"], api_key=None, body=body, content_type="application/json")
        await pc.setRemoteDescription(aiortc.RTCSessionDescription(**answer))
        deadline = time.monotonic() + 30
        while not (len(video) >= 50 and any(e["type"] == "speaking_started" for e in events)):
            assert time.monotonic() < deadline, f"{len(video)} video frames, events {events}"
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        await pc.close()
        for r in readers:
            r.cancel()
        return video, audio, events

    video, audio, events = asyncio.run(asyncio.wait_for(run(), 60))
    assert video[0][0].width == 64 and all(f.time_base == Fraction(1, 90000) for f, _ in video)
    pts = [f.pts for f, _ in video]
    assert all(b > a for a, b in zip(pts, pts[1:]))  # one frame per 1/25 s on the sender's clock, in order
    energy = max(float(np.sqrt(np.mean((f.to_ndarray().astype(np.float64) / 32768) ** 2))) for f, _ in audio)
    assert energy > 0.01  # the speech came back with the avatar
    # the sender's side: each frame's image handed to WebRTC within the BT.1359 window of its audio
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        lines = dict(line.rsplit(" ", 1) for line in r.read().decode().splitlines() if line.startswith("emote_av_offset_seconds_"))
    total = float(lines['emote_av_offset_seconds_count{transport="webrtc"}'])
    assert total > 50 and float(lines['emote_av_offset_seconds_bucket{le="0.125",transport="webrtc"}']) == total
    wait_sessions(url, 0)


def test_cors_allows_the_configured_origin_only(server):
    url, _ = server

    def preflight(origin):
        req = urllib.request.Request(url + "/sessions", method="OPTIONS")
        req.add_header("Origin", origin)
        req.add_header("Access-Control-Request-Method", "POST")
        req.add_header("Access-Control-Request-Headers", "x-api-key")
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, r.headers.get("access-control-allow-origin")
        except urllib.error.HTTPError as e:
            return e.code, e.headers.get("access-control-allow-origin")

    assert preflight(SERVE_ORIGIN) == (200, SERVE_ORIGIN)
    assert preflight("http://elsewhere.test")[1] is None
    info = create_session(url, KEY, example="portrait")
    stream = url.replace("http://", "ws://") + info["stream"]
    with pytest.raises(websockets_sync.InvalidStatus):  # a browser page from another origin cannot open the stream
        websockets_sync.connect(stream, origin="http://elsewhere.test", open_timeout=10).close()
    with websockets_sync.connect(stream, origin=SERVE_ORIGIN, open_timeout=10) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "ready"
    wait_sessions(url, 0)


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng (make install installs it)")
def test_text_in_through_espeak_ng(server):
    """{"type": "say"}: the text synthesised by espeak-ng plays as one utterance, every sample of it with its frames."""
    from emote.runtime.clips import frame_count
    from emote.runtime.live import PcmDecoder
    from emote.runtime.tts import EspeakNG

    url, _ = server
    text = "Hello. I am the kiosk."
    samples, rate = EspeakNG().synthesize(text)
    d = PcmDecoder("f32le", rate, 1)
    expected = np.concatenate([d.decode(samples), d.flush()])
    info = create_session(url, KEY, example="portrait", pace="asap")
    with connect(url, info) as (ws, _):
        ws.send(json.dumps({"type": "say", "text": "   "}))
        _, events = frames_until(ws, lambda f, e: any(x["type"] == "error" for x, _ in e))
        assert "no text to say" in events[-1][0]["message"]
        ws.send(json.dumps({"type": "say", "text": text}))
        frames, _ = frames_until(ws, lambda f, e: any(x["type"] == "speaking_stopped" for x, _ in e))
    speech = [(h, a) for h, _, a, _ in frames if h["speech"]]
    assert len(speech) == frame_count(len(expected), 25)
    got = np.concatenate([a for _, a in speech])[: len(expected)]
    np.testing.assert_allclose(got, expected, atol=1 / 32768 + 1e-6)
    wait_sessions(url, 0)
