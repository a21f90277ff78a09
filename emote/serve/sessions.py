"""Sessions of `emote serve`: admission from the measured real-time factor, tokens, pipelines, watchdogs.

A session is a runtime ``LiveSession`` over a pipeline of its own (a pool keeps the
pipelines of ended sessions: a new session costs a ReferenceNet pass, not a model load).
How many run at once is what this machine sustains in real time with this bundle:
``limit = floor(LOAD / rtf)`` (at least 1), ``rtf`` measured at start-up on the example
portrait and speech (generation seconds per second of audio), ``LOAD`` the share of the
machine the sessions may take together. Past the limit a new session is refused (429).
"""

from __future__ import annotations

import math
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from ..bundle import SAMPLE_RATE
from ..errors import EmoteError
from ..runtime.live import LiveOptions, LiveSession, PcmDecoder

LOAD = 0.8  # sessions together may take 80% of the machine: the rest is margin for jitter (the pacer, JPEG, the OS)
MEASURE_SECONDS = 2.0  # of the example speech, for the real-time factor
ENDED_KEPT = 1024  # ended sessions whose reason is kept (a late client is told why, not "no session")


@dataclass(frozen=True)
class ServeConfig:
    bundle: Path
    api_key: str | None = None
    cors_origins: tuple[str, ...] = ()
    token_ttl: float = 60.0  # seconds a session's token opens its stream
    max_upload_bytes: int = 10 << 20
    max_sessions: int | None = None  # an upper bound on the measured limit
    idle_timeout: float = 120.0  # seconds without a message from the client (or without a stream) before the session ends
    max_session_seconds: float = 1800.0
    max_buffered_seconds: float = 10.0
    send_timeout: float = 5.0  # seconds a frame may wait for a client that does not read
    backend: str | None = None
    precision: str | None = None
    threads: int | None = None  # CPU threads of each pipeline's backend (default: all usable cores)
    hop: int | None = None  # frames each live clip keeps (runtime.clips): lower latency, more compute; None: whole clips
    # make the session limit's pipelines at start, before ready (memory: one pipeline per session), so sessions that
    # start together do not wait on model loads (seconds each) while the first of them speaks; else made on demand
    warm: bool = False

    def __post_init__(self) -> None:
        for name in ("token_ttl", "idle_timeout", "max_session_seconds", "max_buffered_seconds", "send_timeout"):
            if getattr(self, name) <= 0:
                raise EmoteError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.max_upload_bytes <= 0:
            raise EmoteError("--max-upload-mb must be positive")
        if self.threads is not None and self.threads < 1:
            raise EmoteError(f"--threads must be at least 1, got {self.threads}")
        if self.max_sessions is not None and self.max_sessions < 1:
            raise EmoteError(f"--max-sessions must be at least 1, got {self.max_sessions}")


@dataclass
class Session:
    id: str
    token: str
    token_expires: float
    live: LiveSession
    pipe: object
    pace: str  # "realtime": idle frames between utterances, paced at the frame rate; "asap": speech frames as made
    created: float = field(default_factory=time.monotonic)
    last_message: float = field(default_factory=time.monotonic)
    streaming: bool = False
    ended: str | None = None  # why it ended (watchdog, DELETE, the stream closed)
    first_audio: float | None = None  # when the utterance now starting got its first chunk (first-frame latency)
    webrtc: object = None  # (peer connection, tasks, media) of a WebRTC stream

    def seconds_left(self, cfg: ServeConfig) -> float:
        return max(0.0, self.created + cfg.max_session_seconds - time.monotonic())


class Sessions:
    """The sessions of one server: create (admission), get, end, watchdogs. Thread-safe."""

    def __init__(self, cfg: ServeConfig, metrics=None):
        self.cfg = cfg
        self.metrics = metrics
        self._lock = threading.Lock()
        self._sessions: dict[str, Session] = {}
        self._ended: OrderedDict[str, str] = OrderedDict()  # why the last ENDED_KEPT sessions ended, by id
        self._creating = 0
        self._pool: list = []  # pipelines of ended sessions
        self._pipelines = 0
        self.rtf: float | None = None
        self.limit: int | None = None
        self.ready_error: str | None = None
        self._pipeline_options = {
            "backend": cfg.backend,
            "precision": cfg.precision,
            "backend_options": {"threads": cfg.threads} if cfg.threads else None,
        }

    # -- start-up: the measured limit ---------------------------------------------------------
    def _new_pipeline(self):
        from ..runtime import Pipeline

        return Pipeline(self.cfg.bundle, **{k: v for k, v in self._pipeline_options.items() if v is not None})

    def measure(self) -> None:
        """The real-time factor of one session on this machine and bundle, and the session limit from it."""
        from ..bundle import SAMPLE_RATE
        from ..runtime.examples import example_inputs

        try:
            pipe = self._new_pipeline()
            portrait, speech = example_inputs(pipe.resolution)
            speech = speech[: int(MEASURE_SECONDS * SAMPLE_RATE)]
            pipe.generate(portrait, speech[: pipe.windows.window_samples], hop=self.cfg.hop)  # warm-up: first calls allocate
            t0 = time.perf_counter()
            pipe.generate(portrait, speech, hop=self.cfg.hop)  # a hop's cost counted in the limit
            rtf = (time.perf_counter() - t0) / (len(speech) / SAMPLE_RATE)
        except EmoteError as e:
            self.ready_error = str(e)
            raise
        limit = max(1, math.floor(LOAD / rtf))
        if self.cfg.max_sessions is not None:
            limit = min(limit, self.cfg.max_sessions)
        warmed = [pipe]
        while self.cfg.warm and len(warmed) < limit:
            warmed.append(self._new_pipeline())
            warmed[-1].generate(portrait, speech[: pipe.windows.window_samples], hop=self.cfg.hop)  # its first calls too
        with self._lock:
            self._pool.extend(warmed)
            self._pipelines += len(warmed)
            self.rtf, self.limit = rtf, limit
        if self.metrics is not None:
            self.metrics.rtf.set(rtf)
            self.metrics.limit.set(limit)

    @property
    def ready(self) -> bool:
        return self.limit is not None

    # -- sessions -----------------------------------------------------------------------------
    def retry_after(self) -> int:
        """Seconds until a slot is sure to be free: the soonest end of a session's maximum length (1 to 60)."""
        with self._lock:
            left = [s.seconds_left(self.cfg) for s in self._sessions.values()]
        return int(min(60, max(1, math.ceil(min(left, default=1)))))

    @property
    def taken(self) -> int:
        """Slots in use: live sessions and those being created."""
        with self._lock:
            return len(self._sessions) + self._creating

    def admit(self) -> bool:
        """Reserve a slot (True) or refuse (False): active + being created < limit."""
        with self._lock:
            if self.limit is None or len(self._sessions) + self._creating >= self.limit:
                return False
            self._creating += 1
            return True

    def create(
        self,
        image,
        *,
        face_box=None,
        seed: int = 0,
        audio_format: str = "s16le",
        audio_rate: int = SAMPLE_RATE,
        channels: int = 1,
        pace: str = "realtime",
        token_ttl: float | None = None,
    ) -> Session:
        """A session over a pipeline from the pool (made if none is free); call after ``admit()``."""
        try:
            if pace not in ("realtime", "asap"):
                raise EmoteError(f"pace {pace!r}: expected realtime or asap")
            decoder = PcmDecoder(audio_format, audio_rate, channels)
            with self._lock:
                pipe = self._pool.pop() if self._pool else None
            if pipe is None:
                pipe = self._new_pipeline()
                with self._lock:
                    self._pipelines += 1
            try:
                live = LiveSession(
                    pipe,
                    image,
                    options=LiveOptions(seed=seed, max_buffered_seconds=self.cfg.max_buffered_seconds, hop_frames=self.cfg.hop),
                    face_box=face_box,
                    audio=decoder,
                )
            except BaseException:
                with self._lock:
                    self._pool.append(pipe)
                raise
            ttl = min(self.cfg.token_ttl, token_ttl) if token_ttl else self.cfg.token_ttl
            s = Session(secrets.token_urlsafe(12), secrets.token_urlsafe(24), time.monotonic() + ttl, live, pipe, pace)
            with self._lock:
                self._sessions[s.id] = s
            if self.metrics is not None:
                self.metrics.active.set(len(self._sessions))
            return s
        finally:
            with self._lock:
                self._creating -= 1

    def get(self, sid: str) -> Session | None:
        with self._lock:
            return self._sessions.get(sid)

    def missing(self, sid: str) -> str:
        """Why there is no session ``sid``: it ended (and why), or there never was one."""
        with self._lock:
            reason = self._ended.get(sid)
        return f"session {sid} has ended ({reason})" if reason else f"no session {sid}"

    def check_token(self, s: Session, token: str | None) -> str | None:
        """None if ``token`` opens ``s``'s stream, else why not."""
        if not token:
            return "no token: connect with ?token= from POST /sessions"
        if not secrets.compare_digest(token, s.token):
            return "wrong token for this session"
        if time.monotonic() > s.token_expires:
            return "the session's token expired: create a new session"
        return None

    def end(self, sid: str, reason: str) -> bool:
        """End a session: its worker stops, its pipeline goes back to the pool. False if there was none."""
        with self._lock:
            s = self._sessions.pop(sid, None)
            if s is not None:
                self._ended[sid] = reason
                while len(self._ended) > ENDED_KEPT:
                    self._ended.popitem(last=False)
        if s is None:
            return False
        s.ended = reason
        s.live.close()
        with self._lock:
            self._pool.append(s.pipe)
        if self.metrics is not None:
            self.metrics.active.set(len(self._sessions))
            self.metrics.ended.labels(reason=reason.split(":")[0]).inc()
        return True

    def all(self) -> list[Session]:
        with self._lock:
            return list(self._sessions.values())

    def watch(self) -> None:
        """One watchdog pass: sessions past their maximum length, idle past the timeout, or never streamed."""
        now, cfg = time.monotonic(), self.cfg
        for s in self.all():
            if now - s.created > cfg.max_session_seconds:
                self.end(s.id, f"max_session: the session reached its maximum length ({cfg.max_session_seconds:g} s)")
            elif now - s.last_message > cfg.idle_timeout:
                self.end(s.id, f"idle_timeout: nothing from the client for {cfg.idle_timeout:g} s")
            elif not s.streaming and now > s.token_expires and s.live.counters.frames == 0:
                self.end(s.id, "token_expired: the token expired before a stream was opened")
            elif s.live.error is not None:
                self.end(s.id, f"error: {s.live.error}")
        if self.metrics is not None:
            sessions = self.all()
            self.metrics.queue_depth.set(sum(s.live.queue_depth for s in sessions))
            self.metrics.buffered.set(sum(s.live.buffered_seconds for s in sessions))

    def close(self) -> None:
        for s in self.all():
            self.end(s.id, "shutdown: the server is stopping")
        with self._lock:
            pool, self._pool = self._pool, []
        for p in pool:
            p.close()

    @property
    def pipelines(self) -> int:
        return self._pipelines
