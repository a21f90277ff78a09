"""`emote serve` under load, on loopback: first-frame latency, sessions at the admission limit, a soak, create/delete cycles.

    python bench/serve_load.py --bundle build/demo-bundle --part all -o build/serve-load.json

Parts (each starts its own `emote serve` subprocess on 127.0.0.1 at a free port):
- first-frame: one WebSocket session, the example speech at real-time pace in 20 ms chunks:
  seconds from the first chunk of an utterance to its first speech frame (5 utterances, each
  after the session is back to idle); and the same with the utterance's audio sent at once
  (what the model costs, without waiting for the audio to arrive).
- load: as many sessions as /readyz admits, each streaming the example speech at real-time pace
  at once: frames per second each received, audio samples received against sent (none may be
  lost), underruns and dropped images as counted by the client; then one more POST (429).
- soak: one session streaming speech with pauses for --soak-seconds; the server's RSS sampled
  every 5 s, its slope (MB per minute) by least squares.
- cycles: --cycles create/delete pairs; the sessions left and the server's RSS before and after.
- idle: in-process: the idle loop (made once from silence, crossfaded) against generating idle
  frames live: CPU seconds per second of idle, and how large the loop's seam is against the
  model's own frame-to-frame change.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from emote.bundle import SAMPLE_RATE
from emote.runtime.audio import load_audio
from emote.runtime.examples import SPEECH
from emote.serve.client import create_session, http
from emote.serve.protocol import unpack_frame

KEY = "bench-key"
CHUNK = 320  # 20 ms at 16 kHz


def cpu_name() -> str:
    """The CPU class the figures are labelled with (as `emote doctor` prints it)."""
    from emote.engines.probe import cpu_class

    return cpu_class().label


class Server:
    def __init__(self, bundle: str, *extra: str):
        cmd = [sys.executable, "-m", "emote.cli", "serve", "--bundle", bundle, "--port", "0", "--api-key", KEY, *extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("emote serve: http://"):
            raise SystemExit(f"the server did not start: {line}{self.proc.stdout.read()}")
        self.url = line.split()[2]
        deadline = time.monotonic() + 300
        while True:
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=5) as r:
                    self.ready = json.loads(r.read())
                    return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise SystemExit("the server never got ready") from None
                time.sleep(0.5)

    def rss_mb(self) -> float:
        import psutil

        return psutil.Process(self.proc.pid).memory_info().rss / 2**20

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def stream(
    url: str, speech: np.ndarray, *, utterances: int = 1, pause: float = 1.0, at_once: bool = False, until: float | None = None
):
    """One session: ``utterances`` of ``speech`` at real-time pace (or each sent at once), ``pause`` s of nothing between.

    Returns per-utterance first-frame latencies and the counts of what came back.
    """
    import websockets

    info = await asyncio.to_thread(create_session, url, KEY, example="portrait", audio_format="f32le")
    out = {"first_frame": [], "frames": 0, "speech_frames": 0, "speech_samples": 0, "underruns": 0, "dropped": 0, "sent_samples": 0}
    async with websockets.connect(url.replace("http://", "ws://") + info["stream"], max_size=None) as ws:
        await ws.recv()  # ready
        t_start = time.monotonic()
        pending = {"sent_at": None, "done": asyncio.Event()}

        async def receive():
            async for m in ws:
                if isinstance(m, str):
                    e = json.loads(m)
                    if e["type"] == "speaking_stopped":
                        pending["done"].set()
                    elif e["type"] in ("error", "closed"):
                        raise RuntimeError(e)
                    continue
                h, jpeg, audio = unpack_frame(m)
                out["frames"] += 1
                if h["underrun"]:
                    out["underruns"] += 1
                elif h["speech"]:
                    if pending["sent_at"] is not None:
                        out["first_frame"].append(time.monotonic() - pending["sent_at"])
                        pending["sent_at"] = None
                    out["speech_frames"] += 1
                    out["speech_samples"] += len(audio)
                    out["dropped"] += not jpeg

        reader = asyncio.create_task(receive())
        n = 0
        while n < utterances or (until is not None and time.monotonic() - t_start < until):
            pending["done"].clear()
            t0 = time.monotonic()
            for i in range(0, len(speech), CHUNK):
                if not at_once:
                    await asyncio.sleep(max(0.0, t0 + i / SAMPLE_RATE - time.monotonic()))
                if pending["sent_at"] is None and i == 0:
                    pending["sent_at"] = time.monotonic()
                await ws.send(speech[i : i + CHUNK].astype("<f4").tobytes())
            out["sent_samples"] += len(speech)
            await ws.send(json.dumps({"type": "end"}))
            await asyncio.wait_for(pending["done"].wait(), 60 + 4 * len(speech) / SAMPLE_RATE)
            await asyncio.sleep(pause)
            n += 1
        out["seconds"] = time.monotonic() - t_start
        reader.cancel()
    return out  # closing the stream ended the session


def part_first_frame(args, speech):
    s = Server(args.bundle, *args.server_args)
    try:
        live = asyncio.run(stream(s.url, speech[: 2 * SAMPLE_RATE], utterances=5, pause=1.0))
        buffered = asyncio.run(stream(s.url, speech[: 2 * SAMPLE_RATE], utterances=5, pause=1.0, at_once=True))
    finally:
        s.close()
    return {
        "rtf": s.ready["real_time_factor"],
        "limit": s.ready["session_limit"],
        "first_frame_realtime_s": live["first_frame"],
        "first_frame_at_once_s": buffered["first_frame"],
        # a first frame that comes early only to stall later would show here: speech frames due but not made
        "realtime_speech_frames": live["speech_frames"],
        "realtime_underruns": live["underruns"],
    }


def part_load(args, speech):
    s = Server(args.bundle, *args.server_args)
    try:
        limit = s.ready["session_limit"]

        async def all_of_them():
            return await asyncio.gather(*(stream(s.url, speech, utterances=1, pause=0.5) for _ in range(limit)))

        results = asyncio.run(all_of_them())
        time.sleep(1.0)
        made = [create_session(s.url, KEY, example="portrait") for _ in range(limit)]
        try:
            create_session(s.url, KEY, example="portrait")
            refused = None
        except Exception as e:  # the 429, as the client reports it
            refused = str(e)
        for info in made:
            http("DELETE", s.url + f"/sessions/{info['id']}", api_key=KEY)
    finally:
        s.close()
    spf = SAMPLE_RATE // 25
    rows = []
    for r in results:
        rows.append(
            {
                "fps_received": r["frames"] / r["seconds"],
                "audio_lost_samples": max(0, r["sent_samples"] - r["speech_samples"]),
                "speech_frames": r["speech_frames"],
                "expected_frames": -(-r["sent_samples"] * 2 // spf) // 2,
                "underruns": r["underruns"],
                "dropped_images": r["dropped"],
                "first_frame_s": r["first_frame"],
            }
        )
    return {"rtf": s.ready["real_time_factor"], "limit": limit, "sessions": rows, "one_more": refused}


def part_soak(args, speech):
    longer = str(args.soak_seconds + 60)  # neither watchdog may end the soak's session
    s = Server(args.bundle, *args.server_args, "--idle-timeout", longer, "--max-session-seconds", longer)
    samples = []
    try:

        async def soak():
            async def sample():
                while True:
                    samples.append((time.monotonic(), s.rss_mb()))
                    await asyncio.sleep(5)

            sampler = asyncio.create_task(sample())
            r = await stream(s.url, speech[: 3 * SAMPLE_RATE], utterances=1, pause=2.0, until=args.soak_seconds)
            sampler.cancel()
            return r

        r = asyncio.run(soak())
    finally:
        s.close()
    t = np.array([a for a, _ in samples]) - samples[0][0]
    m = np.array([b for _, b in samples])
    half = len(t) // 2  # the slope after the first half: allocators settle during warm-up
    slope = float(np.polyfit(t[half:] / 60, m[half:], 1)[0]) if len(t) - half >= 3 else float("nan")
    return {
        "seconds": r["seconds"],
        "rss_start_mb": float(m[0]),
        "rss_end_mb": float(m[-1]),
        "rss_slope_mb_per_min_second_half": slope,
        "frames": r["frames"],
        "underruns": r["underruns"],
        "audio_lost_samples": max(0, r["sent_samples"] - r["speech_samples"]),
    }


def part_cycles(args, speech):
    s = Server(args.bundle, *args.server_args)
    try:
        for _ in range(20):  # warm: the pool's pipeline, the allocators
            http("DELETE", s.url + f"/sessions/{create_session(s.url, KEY, example='portrait')['id']}", api_key=KEY)
        before = s.rss_mb()
        t0 = time.monotonic()
        for _ in range(args.cycles):
            http("DELETE", s.url + f"/sessions/{create_session(s.url, KEY, example='portrait')['id']}", api_key=KEY)
        seconds = time.monotonic() - t0
        after = s.rss_mb()
        with urllib.request.urlopen(s.url + "/readyz", timeout=5) as r:
            left = json.loads(r.read())["sessions"]
    finally:
        s.close()
    return {"cycles": args.cycles, "seconds": seconds, "sessions_left": left, "rss_before_mb": before, "rss_after_mb": after}


def part_idle(args, speech):
    import resource

    from emote.runtime import Pipeline
    from emote.runtime.examples import example_inputs
    from emote.runtime.live import LiveOptions, LiveSession

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    with Pipeline(args.bundle) as pipe:
        portrait, _ = example_inputs(pipe.resolution)
        opts = LiveOptions()
        c0, t0 = cpu(), time.perf_counter()
        with LiveSession(pipe, portrait, options=opts) as s:
            while s.idle is None:
                if s.error:
                    raise s.error
                time.sleep(0.01)
            make_cpu, make_wall = cpu() - c0, time.perf_counter() - t0
            loop = s.idle
            c1 = cpu()
            for _ in range(250):  # 10 s of idle frames
                s.next_frame()
            loop_cpu_per_s = (cpu() - c1) / 10
        # live: generating idle frames from silence as they are needed
        silence = np.zeros(4 * SAMPLE_RATE, np.float32)
        pipe.generate(portrait, silence[: SAMPLE_RATE // 2])
        c2 = cpu()
        raw = pipe.generate(portrait, silence)
        live_cpu_per_s = (cpu() - c2) / 4
    step = lambda a, b: float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())
    inside = [step(raw[i], raw[i + 1]) for i in range(len(raw) - 1)]
    return {
        "idle_loop_frames": len(loop),
        "make_once_wall_s": make_wall,
        "make_once_cpu_s": make_cpu,
        "loop_cpu_s_per_idle_s": loop_cpu_per_s,
        "live_cpu_s_per_idle_s": live_cpu_per_s,
        "seam_step": step(loop[-1], loop[0]),
        "model_step_median": float(np.median(inside)),
        "model_step_p90": float(np.percentile(inside, 90)),
    }


PARTS = {"first-frame": part_first_frame, "load": part_load, "soak": part_soak, "cycles": part_cycles, "idle": part_idle}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--part", default="all", help=f"{', '.join(PARTS)} or all (comma-separated)")
    ap.add_argument("--soak-seconds", type=float, default=300.0)
    ap.add_argument("--cycles", type=int, default=1000)
    ap.add_argument("--server-args", default="", help="extra `emote serve` arguments, e.g. '--backend onnxruntime'")
    ap.add_argument("-o", "--out", default="build/serve-load.json")
    args = ap.parse_args()
    args.server_args = args.server_args.split()
    parts = list(PARTS) if args.part == "all" else [p.strip() for p in args.part.split(",")]
    speech = load_audio(SPEECH)
    record = {"cpu": cpu_name(), "load_average": os.getloadavg(), "command": " ".join(sys.argv), "results": {}}
    for name in parts:
        print(f"== {name}", flush=True)
        record["results"][name] = PARTS[name](args, speech)
        print(json.dumps(record["results"][name], indent=1), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
