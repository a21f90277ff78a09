"""`emote serve --ray`: the session server as a Ray Serve deployment, scaled past one process or machine.

Each replica is the whole `emote serve` app (emote/serve/app.py) with its own pipelines and
sessions, admitting as many sessions as its own measured real-time factor allows (the same
``floor(0.8 / rtf)``, ``--max-sessions`` capping it). Ray's HTTP proxy is the one address:

- routing is the project's own Ray request router (emote/serve/ray_router.py): a new session
  (POST /sessions) goes to the replica with the most free session slots; the session's later
  requests (its WebSocket, its WebRTC offer, DELETE) carry the header
  ``serve_multiplexed_model_id: <session id>``, given in the answer to POST /sessions, and go
  to the replica holding it, and only there: the replica registers each session it creates as
  one of its multiplexed "models" (``serve.multiplexed``). Ray's routers learn the id within a
  second; a stream that arrives before is told so (close code 4409) and `emote client` retries.
  Browsers cannot set headers on a WebSocket: the kiosk page talks to one `emote serve`, not
  through Ray;
- autoscaling (``--max-replicas``) on requests in flight per replica, which for long-lived
  streams is sessions per replica: the target is ``--target-sessions`` (default: the per-replica
  cap), upscaling after 5 s above it, downscaling only after 5 minutes below;
- downscaling drains: a replica being stopped takes no new requests, and Ray waits for its open
  streams to end, up to the maximum session length (``graceful_shutdown_timeout_s``), so no
  session is cut. A replica that dies takes its sessions with it: their streams close, and a
  new session goes to a replica that is alive.

Also a `serve run` target: ``serve run emote.serve.ray_app:app_builder bundle=B replicas=2``
(docs/scaling.md).
"""

from __future__ import annotations

import math
import signal
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import EmoteError
from .sessions import ServeConfig

STATS_PERIOD = 0.5  # seconds between a replica's reports of its free session slots to the router

HEADER = "serve_multiplexed_model_id"  # Ray Serve's routing header for multiplexed ids
HELD = 4096  # session ids a replica keeps registered (live and recently ended: a late request is told why it ended)
DEPLOYMENT = "emote"
UPSCALE_DELAY = 5.0
DOWNSCALE_DELAY = 300.0
DRAIN_MARGIN = 60.0  # seconds past the maximum session length a draining replica is given


@dataclass(frozen=True)
class Scale:
    """How many replicas and how big: ``replicas`` at start (and at least), up to ``max_replicas``."""

    replicas: int = 2
    max_replicas: int | None = None
    cpus: float = 1.0  # Ray CPUs per replica: its backend runs ceil(cpus) threads
    target_sessions: int | None = None  # autoscaling's target of sessions per replica

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise EmoteError(f"--replicas must be at least 1, got {self.replicas}")
        if self.max_replicas is not None and self.max_replicas < self.replicas:
            raise EmoteError(f"--max-replicas {self.max_replicas} is below --replicas {self.replicas}")
        if self.cpus <= 0:
            raise EmoteError(f"--replica-cpus must be positive, got {self.cpus}")
        if self.target_sessions is not None and self.target_sessions < 1:
            raise EmoteError(f"--target-sessions must be at least 1, got {self.target_sessions}")


def _replica_class():
    """The deployment's class, made on first use (Ray is an optional extra: `pip install emote-edge[ray]`)."""
    from ray import serve

    from .app import Placement, create_app
    from .sessions import Sessions

    @serve.ingress()
    class SessionReplica:
        def __init__(self, cfg: ServeConfig):
            self.cfg = cfg
            self.name = f"replica {serve.get_replica_context().replica_id.unique_id}"
            self.sessions = Sessions(cfg)

        @serve.multiplexed(max_num_models_per_replica=HELD)
        async def _hold(self, sid: str) -> str:
            """Registers ``sid`` with Ray's router as held here (called for sessions made here only)."""
            return sid

        def __serve_build_asgi_app__(self):
            return create_app(self.cfg, self.sessions, Placement(self.name, HEADER, self._hold))

        def record_routing_stats(self) -> dict:
            """Free session slots, for the router (emote/serve/ray_router.py): the limit once measured, less the sessions here."""
            s = self.sessions
            free = 0 if s.limit is None else s.limit - s.taken
            return {"free_slots": free, "at": time.time()}

        def check_health(self) -> None:
            if self.sessions.ready_error:  # the measurement failed: Ray replaces the replica
                raise RuntimeError(self.sessions.ready_error)

    return SessionReplica


def application(cfg: ServeConfig, scale: Scale = Scale()):
    """The bound Ray Serve application: `serve.run(application(cfg, scale))`."""
    from ray import serve
    from ray.serve.config import RequestRouterConfig

    threads = max(1, math.ceil(scale.cpus))
    cfg = ServeConfig(**{**asdict(cfg), "threads": cfg.threads or threads})
    options: dict = {
        "name": DEPLOYMENT,
        "ray_actor_options": {"num_cpus": scale.cpus},
        # admission is the replica's own (429 past its measured limit): Ray must not queue or refuse first
        "max_ongoing_requests": 1000,
        "graceful_shutdown_timeout_s": cfg.max_session_seconds + DRAIN_MARGIN,
        "graceful_shutdown_wait_loop_s": 1.0,
        "health_check_period_s": 5.0,
        "request_router_config": RequestRouterConfig(
            request_router_class="emote.serve.ray_router:SessionRouter", request_routing_stats_period_s=STATS_PERIOD
        ),
    }
    if scale.max_replicas is not None and scale.max_replicas > scale.replicas:
        options["autoscaling_config"] = {
            "min_replicas": scale.replicas,
            "initial_replicas": scale.replicas,
            "max_replicas": scale.max_replicas,
            "target_ongoing_requests": scale.target_sessions or cfg.max_sessions or 1,
            "upscale_delay_s": UPSCALE_DELAY,
            "downscale_delay_s": DOWNSCALE_DELAY,
        }
    else:
        options["num_replicas"] = scale.replicas
    return serve.deployment(_replica_class(), **options).bind(cfg)


NUMBERS = {
    "replicas": int,
    "max_replicas": int,
    "target_sessions": int,
    "max_sessions": int,
    "threads": int,
    "max_upload_bytes": int,
    "cpus": float,
    "token_ttl": float,
    "idle_timeout": float,
    "max_session_seconds": float,
    "max_buffered_seconds": float,
    "hop": int,
    "send_timeout": float,
}


def app_builder(args: dict):
    """`serve run emote.serve.ray_app:app_builder bundle=B [replicas=N max_replicas=M max_sessions=K api_key=KEY ...]`:
    the fields of ServeConfig and Scale, by name."""
    fields = {**ServeConfig.__dataclass_fields__, **Scale.__dataclass_fields__}
    unknown = sorted(set(args) - set(fields))
    if unknown or "bundle" not in args:
        raise EmoteError(f"emote.serve.ray_app:app_builder takes bundle=B and {', '.join(sorted(set(fields) - {'bundle'}))}; got {unknown}")

    def value(k, v):
        if k == "bundle":
            return Path(v)
        if k == "cors_origins":
            return tuple(v.split(",")) if isinstance(v, str) else tuple(v)
        return NUMBERS[k](v) if k in NUMBERS else v

    typed = {k: value(k, v) for k, v in args.items()}
    scale = Scale(**{k: v for k, v in typed.items() if k in Scale.__dataclass_fields__})
    return application(ServeConfig(**{k: v for k, v in typed.items() if k in ServeConfig.__dataclass_fields__}), scale)


def start(cfg: ServeConfig, scale: Scale, *, host: str = "127.0.0.1", port: int = 8000, address: str | None = None) -> str:
    """Ray (a local instance, or the cluster at ``address``), Serve's proxy on host:port, the app; returns its URL."""
    try:
        import ray
        from ray import serve
    except ImportError:
        raise EmoteError("--ray needs Ray Serve: pip install 'emote-edge[ray]' (or 'ray[serve]')") from None
    if not ray.is_initialized():
        if address:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": host, "port": port})
    serve.run(application(cfg, scale), name=DEPLOYMENT, route_prefix="/")
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def wait_ready(url: str, replicas: int, timeout: float = 300.0) -> list[dict]:
    """Until ``replicas`` distinct replicas answer /readyz as ready (their limits measured); their answers."""
    import json
    import urllib.error
    import urllib.request

    seen: dict[str, dict] = {}
    deadline = time.monotonic() + timeout
    while len(seen) < replicas:
        if time.monotonic() > deadline:
            raise EmoteError(f"{url}: {len(seen)} of {replicas} replicas ready after {timeout:g} s")
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=10) as r:
                body = json.loads(r.read())
                seen[body["replica"]] = body
        except (urllib.error.URLError, OSError, ValueError, KeyError):
            time.sleep(0.5)
    time.sleep(2 * STATS_PERIOD)  # the router's view of free slots is a report old: let it see every limit
    return list(seen.values())


def serve_ray(cfg: ServeConfig, scale: Scale, *, host: str, port: int, address: str | None = None) -> None:
    """`emote serve --ray`: start, say where, run until interrupted, then shut Serve down (sessions end)."""
    from ray import serve

    url = start(cfg, scale, host=host, port=port, address=address)
    print(f"emote serve --ray: {url} ({scale.replicas} replica(s) of bundle {cfg.bundle}; /readyz per replica)", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        stop.wait()
    finally:
        import ray

        print("emote serve --ray: stopping (open sessions end)", flush=True)
        serve.shutdown()
        ray.shutdown()
