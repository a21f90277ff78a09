"""`emote serve`: the HTTP and WebSocket API over live sessions (docs/serving.md).

    POST   /sessions                  API key; a portrait upload or a named example -> id, token, stream URL
    DELETE /sessions/{id}             API key
    WS     /sessions/{id}/ws?token=   binary audio in; frames (JPEG + their audio) and JSON events out
    POST   /sessions/{id}/offer?token= WebRTC: an SDP offer -> the answer; audio + video tracks on one clock
    GET    /healthz /readyz /metrics  liveness, readiness (the measured limit), Prometheus metrics
    GET    /                          the kiosk page (emote/serve/static/)

Every error is a JSON body ``{"error": "one line"}`` with its status; the server stays up.
"""

import asyncio
import json
import os
import secrets
import time
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request, WebSocket
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.websockets import WebSocketDisconnect, WebSocketState

from ..bundle import SAMPLE_RATE
from ..errors import EmoteError
from .protocol import NOT_HERE, encode_jpeg, pack_frame
from .sessions import ServeConfig, Session, Sessions

STATIC = Path(__file__).parent / "static"  # the kiosk page: plain HTML, CSS and JavaScript, no build step
EXAMPLES = ("portrait",)  # named portraits: emote/assets/portrait.png
WATCH_SECONDS = 0.5  # the watchdogs' period
DRAIN = 4  # an upload up to this many times the limit is read (and dropped) before the 413: the client sees the answer
STATS_FRAMES = 25
SAY_AHEAD = 2.0  # seconds of synthesised speech pushed ahead of playback (the buffer watchdog is 10 s)  # a stats event every this many frames (1 s at 25 fps)


class Metrics:
    """The server's Prometheus metrics, in a registry of its own (one per app)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        self.active = Gauge("emote_sessions_active", "live sessions", registry=r)
        self.limit = Gauge("emote_sessions_limit", "sessions admitted at once (from the measured real-time factor)", registry=r)
        self.rtf = Gauge("emote_real_time_factor", "generation seconds per second of audio, measured at start-up", registry=r)
        self.created = Counter("emote_sessions_created", "sessions created", registry=r)
        self.rejected = Counter("emote_sessions_rejected", "sessions refused", ["reason"], registry=r)
        self.ended = Counter("emote_sessions_ended", "sessions ended", ["reason"], registry=r)
        self.first_frame = Histogram(
            "emote_first_frame_seconds",
            "first audio chunk of an utterance received -> its first frame sent",
            buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0),
            registry=r,
        )
        self.av_offset = Histogram(
            "emote_av_offset_seconds",
            "send time of a frame's image minus that of its audio (WebSocket: one message, 0)",
            ["transport"],
            buckets=(-0.045, -0.02, 0.0, 0.02, 0.045, 0.125),
            registry=r,
        )
        self.frames = Counter("emote_frames_sent", "frames sent", ["kind"], registry=r)
        self.dropped = Counter("emote_video_frames_dropped", "images dropped (their audio was sent)", ["reason"], registry=r)
        self.underruns = Counter("emote_underrun_frames", "frames where speech was due but not generated yet", registry=r)
        self.queue_depth = Gauge("emote_queue_depth_frames", "generated frames waiting to play, all sessions", registry=r)
        self.buffered = Gauge("emote_buffered_audio_seconds", "audio received and not yet played, all sessions", registry=r)


async def say(live, text, tts_for) -> None:
    """Text in: synthesised (in a thread), then pushed into the session at most SAY_AHEAD s ahead of playback, then ended."""
    from ..runtime.live import PcmDecoder

    if not isinstance(text, str):
        raise EmoteError('say needs text: {"type": "say", "text": "..."}')
    samples, rate = await asyncio.to_thread(tts_for().synthesize, text)
    decoder = PcmDecoder("f32le", rate, 1)
    x = decoder.decode(samples)
    x = np.concatenate([x, decoder.flush()])
    step = 1600  # 0.1 s at 16 kHz
    for i in range(0, len(x), step):
        while live.buffered_seconds > SAY_AHEAD:
            await asyncio.sleep(0.02)
        live.push_samples(x[i : i + step])
    live.end()


def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class Placement:
    """Where a session lives when several servers share one address (a Ray Serve deployment,
    emote/serve/ray_app.py): this server's name, the header that routes a session's requests to
    the server holding it (its value: the session id), and ``hold(sid)``, called once a session is
    created here, which tells the router so."""

    def __init__(self, name: str, header: str, hold):
        self.name, self.header, self.hold = name, header, hold


def create_app(cfg: ServeConfig, sessions: Sessions | None = None, placement: Placement | None = None):
    metrics = Metrics()
    sessions = sessions or Sessions(cfg, metrics)
    voices: dict = {}

    def tts_for():
        """The TTS, made on first use (a server without espeak-ng serves everything else)."""
        if "tts" not in voices:
            from ..runtime.tts import EspeakNG

            voices["tts"] = EspeakNG()
        return voices["tts"]

    sessions.metrics = metrics

    @asynccontextmanager
    async def lifespan(app):
        measuring = asyncio.get_running_loop().run_in_executor(None, sessions.measure)
        measuring.add_done_callback(lambda f: f.exception())  # reported by /readyz, not lost

        async def watch():
            while True:
                await asyncio.sleep(WATCH_SECONDS)
                await asyncio.to_thread(sessions.watch)

        watcher = asyncio.create_task(watch())
        try:
            yield
        finally:
            watcher.cancel()
            await asyncio.to_thread(sessions.close)

    app = FastAPI(title="Emote Edge", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.sessions = sessions
    if cfg.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cfg.cors_origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type"],
        )

    def authorised(request: Request) -> bool:
        if cfg.api_key is None:
            return True
        given = request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        return bool(given) and secrets.compare_digest(given, cfg.api_key)

    @app.exception_handler(EmoteError)
    async def emote_error(request, e: EmoteError):
        return error(400, str(e))

    from fastapi.staticfiles import StaticFiles

    app.mount("/kiosk", StaticFiles(directory=STATIC), name="kiosk")

    @app.get("/", include_in_schema=False)
    async def kiosk():
        return FileResponse(STATIC / "index.html")

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        if sessions.ready_error:
            return error(503, f"not ready: {sessions.ready_error}")
        if not sessions.ready:
            return error(503, "not ready: measuring the real-time factor")
        ready = {
            "status": "ready",
            "real_time_factor": sessions.rtf,
            "session_limit": sessions.limit,
            "sessions": len(sessions.all()),
            "pipelines": sessions.pipelines,
        }
        return ready if placement is None else {**ready, "replica": placement.name, "pid": os.getpid()}

    @app.get("/metrics")
    async def prometheus():
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/sessions")
    async def create(request: Request):
        if not authorised(request):
            metrics.rejected.labels(reason="unauthorised").inc()
            return error(401, "missing or wrong API key: send it as X-API-Key or Authorization: Bearer")
        length = request.headers.get("content-length")
        if length is None:
            return error(411, "POST /sessions needs a Content-Length")
        if int(length) > cfg.max_upload_bytes:
            metrics.rejected.labels(reason="too_large").inc()
            if int(length) <= DRAIN * cfg.max_upload_bytes:  # read and dropped, so that the client reads the answer
                async for _ in request.stream():
                    pass
            return error(413, f"upload of {int(length)} bytes is over the limit of {cfg.max_upload_bytes} bytes")
        body = await request.body()
        if len(body) > cfg.max_upload_bytes:
            return error(413, f"upload over the limit of {cfg.max_upload_bytes} bytes")
        try:
            form = await request.form()
        except Exception as e:  # starlette's multipart parser: a malformed body
            return error(400, f"unreadable form ({e.__class__.__name__}): send multipart/form-data")
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        upload = form.get("image")
        example = fields.get("example")
        if (upload is None or isinstance(upload, str)) == (example is None):
            return error(400, "give an image upload (field image) or an example name (field example), one of them")
        if example is not None and example not in EXAMPLES:
            return error(400, f"example {example!r}: the examples are {', '.join(EXAMPLES)}")
        try:
            options = parse_options(fields)
        except EmoteError as e:
            return error(400, str(e))
        data = await upload.read() if example is None else None

        def load():
            from ..runtime.examples import PORTRAIT
            from ..runtime.image import decode_image, load_image

            return decode_image(data) if data is not None else load_image(PORTRAIT)

        try:  # a bad upload is refused before it takes a slot
            image = await asyncio.to_thread(load)
        except EmoteError as e:
            metrics.rejected.labels(reason="bad_input").inc()
            return error(400, str(e))
        if not sessions.ready:
            return error(503, "not ready: measuring the real-time factor", {"Retry-After": "2"})
        if not sessions.admit():
            metrics.rejected.labels(reason="limit").inc()
            return error(
                429,
                f"this server runs {sessions.limit} session(s) at once in real time (measured real-time factor {sessions.rtf:.2f}): try later",
                {"Retry-After": str(sessions.retry_after())},
            )

        def make() -> Session:
            try:
                return sessions.create(image, **options)  # gives the slot back if it fails
            except EmoteError as e:
                if str(e).startswith("no face found"):
                    raise EmoteError("no face found in the portrait: give face_box=X,Y,W,H (the face in pixels)") from None
                raise

        try:
            s = await asyncio.to_thread(make)
        except EmoteError as e:
            metrics.rejected.labels(reason="bad_input").inc()
            return error(422 if "face" in str(e) else 400, str(e))
        metrics.created.inc()
        pipe = s.pipe
        where = {}
        if placement is not None:  # the session's later requests must come back here: the router learns it now
            await placement.hold(s.id)
            where = {"replica": placement.name, "headers": {placement.header: s.id}}
        return where | {
            "id": s.id,
            "token": s.token,
            "expires_in": round(s.token_expires - time.monotonic(), 1),
            "stream": f"/sessions/{s.id}/ws?token={s.token}",
            "offer": f"/sessions/{s.id}/offer?token={s.token}",
            "fps": pipe.fps,
            "width": pipe.size,
            "height": pipe.size,
            "sample_rate": SAMPLE_RATE,
            "audio_in": {
                "format": options.get("audio_format", "s16le"),
                "rate": options.get("audio_rate", SAMPLE_RATE),
                "channels": options.get("channels", 1),
            },
            "audio_out": {"format": "s16le", "rate": SAMPLE_RATE, "channels": 1},
            "pace": s.pace,
        }

    @app.delete("/sessions/{sid}")
    async def delete(sid: str, request: Request):
        if not authorised(request):
            return error(401, "missing or wrong API key: send it as X-API-Key or Authorization: Bearer")
        if not await asyncio.to_thread(sessions.end, sid, "deleted: DELETE /sessions"):
            return error(404, sessions.missing(sid))
        return {"id": sid, "ended": True}

    @app.post("/sessions/{sid}/offer")
    async def offer(sid: str, request: Request):
        from .webrtc import answer

        s = sessions.get(sid)
        if s is None:
            return error(404, sessions.missing(sid))
        why = sessions.check_token(s, request.query_params.get("token"))
        if why is not None:
            return error(401, why)
        if s.streaming:
            return error(409, "the session already has a stream open")
        try:
            body = await request.json()
        except ValueError:
            return error(400, 'the body must be JSON: {"sdp": "...", "type": "offer"}')
        if not isinstance(body, dict):
            return error(400, 'the body must be JSON: {"sdp": "...", "type": "offer"}')
        try:
            return await answer(s, sessions, body, metrics, say=lambda text: say(s.live, text, tts_for))
        except EmoteError as e:
            return error(400, str(e))

    @app.websocket("/sessions/{sid}/ws")
    async def stream(ws: WebSocket, sid: str):
        origin = ws.headers.get("origin")
        host = ws.headers.get("host", "")
        if origin and cfg.cors_origins and origin not in cfg.cors_origins and origin.split("://")[-1] != host:
            await ws.close(code=1008, reason="origin not allowed")
            return
        await ws.accept()
        s = sessions.get(sid)
        why = sessions.missing(sid) if s is None else sessions.check_token(s, ws.query_params.get("token"))
        if why is None and s.streaming:
            why = "the session already has a stream open"
        if why is not None:
            code = 4401 if why.startswith(("no token", "wrong token", "the session's token")) else 4404
            if s is None and placement is not None and why.startswith("no session"):  # held by another server, or gone with it
                why = (
                    f"session {sid} is not on {placement.name}: send the header {placement.header}: {sid} "
                    "(if you did, its server has gone or the router has not caught up: retry once, else create a new session)"
                )
                code = NOT_HERE
            await ws.send_text(json.dumps({"type": "error", "message": why}))
            await ws.close(code=code)
            return
        s.streaming = True
        s.last_message = time.monotonic()
        live = s.live
        await ws.send_text(json.dumps({"type": "ready", "fps": live.fps, "sample_rate": SAMPLE_RATE, "width": s.pipe.size, "pace": s.pace}))
        reason = "closed: the client closed the stream"

        async def receive():
            nonlocal reason
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                s.last_message = time.monotonic()
                if message.get("bytes") is not None:
                    if s.first_audio is None and live.queue_depth == 0 and not live.buffered_seconds:
                        s.first_audio = time.monotonic()
                    try:
                        live.push(message["bytes"])
                    except EmoteError as e:
                        if "buffered" in str(e):
                            reason = f"max_buffered: {e}"
                            await ws.send_text(json.dumps({"type": "error", "message": str(e)}))
                            return
                        await ws.send_text(json.dumps({"type": "error", "message": str(e)}))
                    continue
                try:
                    command = json.loads(message.get("text") or "")
                    kind = command["type"]
                except (ValueError, KeyError, TypeError):
                    await ws.send_text(
                        json.dumps({"type": "error", "message": 'commands are JSON objects: {"type": "clear"} or {"type": "end"}'})
                    )
                    continue
                if kind == "clear":
                    live.clear()  # its playback_finished event rides the next frame
                    s.first_audio = None
                elif kind == "end":
                    live.end()
                elif kind == "say":
                    speaking.append(asyncio.create_task(say_reporting(command.get("text"))))
                else:
                    await ws.send_text(json.dumps({"type": "error", "message": f"unknown command {kind!r}: clear, end or say"}))

        speaking: list[asyncio.Task] = []

        async def say_reporting(text) -> None:
            try:
                await say(live, text, tts_for)
            except EmoteError as e:
                await ws.send_text(json.dumps({"type": "error", "message": str(e)}))

        async def send_frame(f, jpeg: bool = True) -> None:
            for e in f.events:
                if e["type"] == "speaking_started" and s.first_audio is not None:
                    metrics.first_frame.observe(time.monotonic() - s.first_audio)
                    s.first_audio = None
                await asyncio.wait_for(ws.send_text(json.dumps(e)), cfg.send_timeout)
            if f.dropped:
                metrics.dropped.labels(reason="queue").inc()
            elif f.image is None:
                metrics.underruns.inc()
            image = encode_jpeg(f.image) if (jpeg and f.image is not None) else None
            if not jpeg and f.image is not None:
                metrics.dropped.labels(reason="late").inc()
            await asyncio.wait_for(ws.send_bytes(pack_frame(f.index, f.pts, f.speech, image, f.audio, f.underrun)), cfg.send_timeout)
            metrics.av_offset.labels(transport="websocket").observe(0.0)
            metrics.frames.labels(kind="speech" if f.speech else "idle").inc()
            if f.index % STATS_FRAMES == 0:
                c = live.counters
                stats = {
                    "type": "stats",
                    "frames": c.frames,
                    "dropped_video": c.dropped_video,
                    "underruns": c.underruns,
                    "queue_depth": live.queue_depth,
                    "buffered_seconds": round(live.buffered_seconds, 3),
                }
                await asyncio.wait_for(ws.send_text(json.dumps(stats)), cfg.send_timeout)

        async def send():
            loop = asyncio.get_running_loop()
            period = 1.0 / live.fps
            t0, k = loop.time(), 0
            while s.ended is None:
                if s.pace == "asap":
                    f = live.next_frame(idle=False)
                    if f is None:
                        for e in live.take_events():
                            await asyncio.wait_for(ws.send_text(json.dumps(e)), cfg.send_timeout)
                        await asyncio.sleep(0.005)
                        continue
                    await send_frame(f)
                    continue
                await asyncio.sleep(max(0.0, t0 + k * period - loop.time()))
                due = max(1, int((loop.time() - t0) / period) + 1 - k)  # late (a slow client): the audio of every frame due,
                for i in range(due):  # the image of the newest only
                    await send_frame(live.next_frame(), jpeg=i == due - 1)
                k += due

        async def ended():
            while s.ended is None:
                await asyncio.sleep(WATCH_SECONDS / 2)

        tasks = [asyncio.create_task(t()) for t in (receive, send, ended)]
        try:
            done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in (*pending, *speaking):
                t.cancel()
            for t in done:
                e = t.exception()
                if isinstance(e, asyncio.TimeoutError):
                    reason = f"backpressure: the client read nothing for {cfg.send_timeout:g} s"
                elif isinstance(e, EmoteError):
                    reason = f"error: {e}"
                elif isinstance(e, (WebSocketDisconnect, RuntimeError, OSError)):
                    reason = "closed: the client went away"
                elif e is not None:
                    reason = f"error: {e.__class__.__name__}: {e}"
            if s.ended is not None:
                reason = s.ended
        finally:
            await asyncio.to_thread(sessions.end, sid, reason)
            if ws.client_state == WebSocketState.CONNECTED and not reason.startswith(("closed", "backpressure")):
                try:
                    await asyncio.wait_for(ws.send_text(json.dumps({"type": "closed", "reason": reason})), 1.0)
                    await asyncio.wait_for(ws.close(code=1000 if reason.startswith("deleted") else 1008), 1.0)
                except (asyncio.TimeoutError, RuntimeError, OSError, WebSocketDisconnect):
                    pass

    return app


def parse_options(fields: dict[str, str]) -> dict:
    """The session options of POST /sessions form fields, checked: one-line errors."""
    out: dict = {}
    known = {"example", "seed", "audio_format", "audio_rate", "audio_channels", "pace", "face_box", "token_ttl"}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise EmoteError(f"unknown field {', '.join(unknown)}: the fields are image, {', '.join(sorted(known))}")

    def number(name, kind):
        try:
            return kind(fields[name])
        except ValueError:
            raise EmoteError(f"{name}={fields[name]!r}: expected {'an integer' if kind is int else 'a number'}") from None

    if "seed" in fields:
        out["seed"] = number("seed", int)
    if "audio_format" in fields:
        out["audio_format"] = fields["audio_format"]
    if "audio_rate" in fields:
        out["audio_rate"] = number("audio_rate", int)
    if "audio_channels" in fields:
        out["channels"] = number("audio_channels", int)
    if "pace" in fields:
        out["pace"] = fields["pace"]
    if "token_ttl" in fields:
        out["token_ttl"] = number("token_ttl", float)
        if out["token_ttl"] <= 0:
            raise EmoteError("token_ttl must be positive")
    if "face_box" in fields:
        from ..runtime.face import parse_face_box

        out["face_box"] = parse_face_box(fields["face_box"])
    # the decoder checks format, rate and channels before any work
    from ..runtime.live import PcmDecoder

    PcmDecoder(out.get("audio_format", "s16le"), out.get("audio_rate", SAMPLE_RATE), out.get("channels", 1))
    return out
