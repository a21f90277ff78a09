"""Running the app: uvicorn on a socket bound first (so that ``--port 0`` can say which port it got)."""

from __future__ import annotations

import ipaddress
import socket
import sys

from ..errors import EmoteError
from .sessions import ServeConfig


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(cfg: ServeConfig, host: str = "127.0.0.1", port: int = 8000, log_level: str = "warning") -> None:
    import uvicorn

    from .app import create_app

    if cfg.api_key is None and not is_loopback(host):
        raise EmoteError(f"--host {host} is reachable from other machines: give --api-key KEY (or serve on 127.0.0.1)")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise EmoteError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    bound = sock.getsockname()[1]
    app = create_app(cfg)
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    print(f"emote serve: http://{shown}:{bound} (bundle {cfg.bundle}; /readyz once the real-time factor is measured)", flush=True)
    if cfg.api_key is None:
        print("emote serve: note: no --api-key: anyone on this machine may create sessions", file=sys.stderr, flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, lifespan="on"))
    server.run(sockets=[sock])
