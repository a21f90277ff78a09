"""`emote serve --ray`: two replicas behind Ray Serve's proxy on 127.0.0.1, real WebSocket clients.

Sessions spread over the replicas, a session's stream reaches the replica holding it, the
total limit refuses cleanly, the first frame through Ray's proxy against `emote serve`
directly, and a replica killed mid-session: what the client sees, and a new session on the
replica still alive. Bounded: every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import time

import numpy as np
import pytest

pytest.importorskip("ray.serve")
websockets = pytest.importorskip("websockets")

from conftest import SERVE_KEY  # noqa: E402

from emote.bundle import SAMPLE_RATE  # noqa: E402
from emote.errors import EmoteError  # noqa: E402
from emote.runtime.examples import SPEECH  # noqa: E402
from emote.serve.client import create_session, open_stream  # noqa: E402
from emote.serve.protocol import unpack_frame  # noqa: E402
from emote.serve.ray_app import HEADER, wait_ready  # noqa: E402

REPLICAS = 2
PER_REPLICA = 1  # --max-sessions of each replica: the total limit is 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_url(tiny_bundle):
    """`emote serve --ray` as users run it: a subprocess (its own local Ray instance) on 127.0.0.1; (url, /readyz of each replica).

    The process group is killed at the end: Ray's own processes go with it, whatever state the test left them in.
    """
    import signal
    import subprocess
    import sys

    port = free_port()
    cmd = [sys.executable, "-m", "emote.cli", "serve", "--bundle", str(tiny_bundle), "--ray", "--replicas", str(REPLICAS)]
    cmd += ["--port", str(port), "--api-key", SERVE_KEY, "--max-sessions", str(PER_REPLICA), "--backend", "onnxruntime"]
    everything = range(os.cpu_count() or 1)  # make test pins each worker to a core: Ray's processes get all of them
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: os.sched_setaffinity(0, everything),
    )
    try:
        said = []  # Ray's own notes come first (token authentication, ...)
        while not (said and said[-1].startswith("emote serve --ray: http://127.0.0.1:")):
            said.append(proc.stdout.readline())
            assert said[-1] and len(said) < 200, "".join(said)  # "" is the end of the output: the process ended
        url = said[-1].split()[3]
        yield url, wait_ready(url, REPLICAS, timeout=240)
    finally:
        proc.send_signal(signal.SIGTERM)  # Serve shuts down, the sessions end
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(45)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


async def first_frame(url: str, info: dict, seconds: float = 1.0) -> tuple[float, int]:
    """Stream ``seconds`` of speech at real-time pace; (seconds from the first chunk to the first speech frame, frames)."""
    from emote.runtime.audio import load_audio

    speech = load_audio(SPEECH)[: int(seconds * SAMPLE_RATE)]
    base = url.replace("http://", "ws://")
    ws = await open_stream(base, info)
    try:
        t0 = time.monotonic()
        step = SAMPLE_RATE // 50
        for i in range(0, len(speech), step):
            await ws.send((np.clip(speech[i : i + step], -1, 1) * 32767).astype("<i2").tobytes())
            await asyncio.sleep(max(0.0, t0 + (i + step) / SAMPLE_RATE - time.monotonic()))
        await ws.send(json.dumps({"type": "end"}))
        first, frames = None, 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            message = await asyncio.wait_for(ws.recv(), 30)
            if isinstance(message, str):
                if json.loads(message)["type"] == "speaking_stopped" and frames:
                    break
                continue
            header, jpeg, _ = unpack_frame(message)
            if header["speech"] and not header["underrun"]:
                first = first if first is not None else time.monotonic() - t0
                frames += 1
        assert first is not None, "no speech frame"
        return first, frames
    finally:
        await ws.close()


def test_sessions_spread_stick_and_fail_over(ray_url, server):
    url, ready = ray_url
    limits = {r["replica"]: r["session_limit"] for r in ready}
    assert len(limits) == REPLICAS and all(v == PER_REPLICA for v in limits.values())
    print(f"\nsessions per replica: {limits} (real-time factors {[round(r['real_time_factor'], 2) for r in ready]})")

    a = create_session(url, SERVE_KEY, example="portrait")
    b = create_session(url, SERVE_KEY, example="portrait")
    assert a["replica"] != b["replica"], "both sessions on one replica"
    assert a["headers"] == {HEADER: a["id"]}
    with pytest.raises(EmoteError, match=r"429 this server runs 1 session\(s\) at once"):
        create_session(url, SERVE_KEY, example="portrait")  # the total limit: both replicas full

    # each stream reaches its session's replica (the other one would refuse it), and streams
    through_ray, frames = asyncio.run(first_frame(url, a))
    assert frames >= 20
    direct_info = create_session(server[0], SERVE_KEY, example="portrait")
    direct, _ = asyncio.run(first_frame(server[0], direct_info))
    print(f"first frame: {through_ray * 1000:.0f} ms through Ray's proxy, {direct * 1000:.0f} ms from emote serve directly")

    # a stream without the routing header may land anywhere: the replica without the session says so
    async def unrouted():
        async with websockets.connect(url.replace("http://", "ws://") + b["stream"], open_timeout=10) as ws:
            return json.loads(await asyncio.wait_for(ws.recv(), 10))

    answers = [asyncio.run(unrouted()) for _ in range(12)]  # each replica is picked at random: both get some (p = 1 - 2**-11)
    elsewhere = [m for m in answers if m["type"] == "error" and f"session {b['id']} is not on replica" in m["message"]]
    assert elsewhere and all(HEADER in m["message"] for m in elsewhere)
    # the holder's answers: the stream (once: closing it ends the session), then why it ended
    assert all(m["type"] == "ready" or m in elsewhere or "has ended" in m["message"] for m in answers)

    # a replica killed mid-session: the client's stream ends, within a bound; nothing hangs
    # (a stream's end ends its session: a, and b, whose stream an unrouted client opened, are over)
    d = create_session(url, SERVE_KEY, example="portrait")
    pids = {r["replica"]: r["pid"] for r in ready}

    async def killed_mid_stream():
        ws = await open_stream(url.replace("http://", "ws://"), d)
        try:
            await ws.send(np.zeros(SAMPLE_RATE // 10, "<i2").tobytes())
            await asyncio.wait_for(ws.recv(), 10)
            os.kill(pids[d["replica"]], signal.SIGKILL)  # the replica's process dies
            t0 = time.monotonic()
            try:
                while True:
                    await asyncio.wait_for(ws.recv(), 20)
            except websockets.exceptions.ConnectionClosed as e:
                return f"closed ({e.rcvd.code if e.rcvd else 'no close frame'})", time.monotonic() - t0
        finally:
            await ws.close()

    seen, after = asyncio.run(killed_mid_stream())
    print(f"replica killed mid-session: the client's stream {seen} {after:.1f} s after the kill")
    assert after < 20
    deadline = time.monotonic() + 60
    while True:  # a new session: on the replica alive (or on the one Ray starts in the dead one's place)
        try:
            c = create_session(url, SERVE_KEY, example="portrait")
            break
        except EmoteError as e:
            assert time.monotonic() < deadline, f"no new session after the kill: {e}"
            time.sleep(1)
    assert c["replica"] != d["replica"]
    _, frames = asyncio.run(first_frame(url, c, seconds=0.5))
    assert frames >= 10
    print(f"new session after the kill on {c['replica']} (killed: {d['replica']})")


def test_ray_options_are_checked_before_any_work(tiny_bundle, capsys, monkeypatch):
    from emote.cli import main
    from emote.serve.ray_app import app_builder

    monkeypatch.setattr("emote.serve.ray_app.serve_ray", lambda *a, **k: pytest.fail("a bad option started a server"))

    for argv, message in [
        (["--replicas", "2"], "--replicas need --ray"),
        (["--ray", "--port", "0"], "--ray needs a fixed --port"),
        (["--ray", "--replicas", "0"], "--replicas must be at least 1, got 0"),
        (["--ray", "--replicas", "3", "--max-replicas", "2"], "--max-replicas 2 is below --replicas 3"),
        (["--ray", "--replica-cpus", "0"], "--replica-cpus must be positive, got 0.0"),
        (["--ray", "--hop", "9"], "--hop 9: a hop of 9 frames: give 2..4"),
    ]:
        assert main(["serve", "--bundle", str(tiny_bundle), *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    with pytest.raises(EmoteError, match=r"takes bundle=B and .*got \['replica'\]"):
        app_builder({"bundle": str(tiny_bundle), "replica": "2"})
