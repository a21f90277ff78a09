"""The CUDA layer alone on a real GPU: emote/engines/cuda.py over cuda-python, no TensorRT.

    python bench/gpu_smoke.py [--device N] [--mb 16]

Runs on any NVIDIA machine with cuda-python and numpy, in seconds:
  1. device properties and the driver's and runtime's CUDA versions
  2. pinned host <-> device round trips (bytes compared)
  3. two streams ordered by an event: the side stream's copy seen by the main stream
  4. a CUDA graph of memsets and copies captured once and replayed: each replay reads the
     source as it is then (what the denoising loop's graph relies on)
  5. the capture-refusal path: a synchronous call inside a capture is refused with a named
     CUDA error, the capture is aborted, and the stream works afterwards
Prints one line per check and exits 1 if any failed, 2 when there is no GPU or no cuda-python.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emote.engines import cuda  # noqa: E402
from emote.errors import EmoteError  # noqa: E402


class Smoke:
    def __init__(self, n: int):
        self.n, self.owned, self.failures = n, [], 0

    def own(self, obj):
        self.owned.append(obj)
        return obj

    def device(self, shape=None, label="") -> cuda.DeviceBuffer:
        return self.own(cuda.DeviceBuffer.allocate(shape or (self.n,), np.float32, label=label))

    def pinned(self, label="") -> cuda.PinnedBuffer:
        return self.own(cuda.PinnedBuffer((self.n,), np.float32, label=label))

    def check(self, name: str, fn) -> None:
        t0 = time.perf_counter()
        try:
            detail = fn()
        except (EmoteError, AssertionError) as e:
            self.failures += 1
            print(f"FAILED  {name}: {e}")
            return
        print(f"PASSED  {name} ({(time.perf_counter() - t0) * 1e3:.1f} ms){': ' + detail if detail else ''}")

    def close(self) -> None:
        for obj in reversed(self.owned):
            obj.close()


def round_trip(s: Smoke, main: cuda.Stream) -> str:
    src, back, dev = s.pinned("source"), s.pinned("back"), s.device(label="round trip")
    src.array[:] = np.random.default_rng(0).standard_normal(s.n, dtype=np.float32)
    main.copy(dev.ptr, src.ptr, dev.nbytes, "h2d", "round trip")
    main.copy(back.ptr, dev.ptr, dev.nbytes, "d2h", "round trip")
    main.synchronize()
    assert np.array_equal(src.array, back.array), "the bytes back from the device differ from those sent"
    t0 = time.perf_counter()
    for _ in range(10):
        main.copy(dev.ptr, src.ptr, dev.nbytes, "h2d", "timing")
    main.synchronize()
    return f"{10 * dev.nbytes / (time.perf_counter() - t0) / 1e9:.1f} GB/s host to device"


def streams_and_events(s: Smoke, main: cuda.Stream, side: cuda.Stream) -> str:
    src, back = s.pinned("side source"), s.pinned("main result")
    a, b = s.device(label="written on side"), s.device(label="copied on main")
    src.array[:] = np.arange(s.n, dtype=np.float32)
    done = s.own(cuda.Event("side done"))
    side.copy(a.ptr, src.ptr, a.nbytes, "h2d", "side write")
    done.record(side)
    main.wait(done)  # main's copy of a must see the side stream's write
    main.copy(b.ptr, a.ptr, b.nbytes, "d2d", "a -> b")
    main.copy(back.ptr, b.ptr, b.nbytes, "d2h", "b back")
    main.synchronize()
    assert np.array_equal(back.array, src.array), "the main stream did not see the side stream's copy"
    return ""


def capture_and_replay(s: Smoke, main: cuda.Stream) -> str:
    src, back = s.pinned("graph source"), s.pinned("graph result")
    a, out = s.device(label="graph input"), s.device(label="graph output")
    half = s.n // 2
    graph = s.own(cuda.CapturedGraph(main, "copies and memsets"))
    graph.begin()
    main.memset(out.ptr, out.nbytes, "output")  # zeros everywhere, then the first half from the input
    main.copy(out.ptr, a.ptr, out[0:half].nbytes, "d2d", "input[:half] -> output[:half]")
    main.copy(back.ptr, out.ptr, out.nbytes, "d2h", "output back")
    graph.end()
    for value in (1.0, 7.0, -3.5):  # each replay reads the input as it is at launch
        src.array[:] = value
        main.copy(a.ptr, src.ptr, a.nbytes, "h2d", "input")
        graph.launch()
        main.synchronize()
        want = np.concatenate([np.full(half, value, np.float32), np.zeros(s.n - half, np.float32)])
        assert np.array_equal(back.array, want), f"replay with input {value} gave {back.array[[0, -1]]}"
    t0 = time.perf_counter()
    for _ in range(100):
        graph.launch()
    main.synchronize()
    return f"3 replays checked; {(time.perf_counter() - t0) / 100 * 1e6:.0f} us per launch"


def capture_refusal(s: Smoke, main: cuda.Stream) -> str:
    graph = s.own(cuda.CapturedGraph(main, "refused"))
    graph.begin()
    try:
        main.synchronize()  # a synchronous wait on a capturing stream: capture must refuse it
    except cuda.CudaError as e:
        refused = str(e)
    else:
        raise AssertionError("cudaStreamSynchronize inside a capture was not refused")
    graph.abort()
    round_trip(s, main)  # the stream, and the sticky error state, are usable again
    return refused


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", type=int, default=0, help="CUDA device index")
    ap.add_argument("--mb", type=float, default=16, help="MB per test buffer")
    args = ap.parse_args()
    try:
        info = cuda.device_info(args.device)
        cuda.set_device(args.device)
        driver, runtime = cuda.versions()
    except EmoteError as e:
        print(f"gpu_smoke: {e}")
        return 2
    print(f"device {info.index}: {info.name}, compute capability {info.compute_capability}, {info.total_bytes / 2**30:.1f} GiB")
    print(f"driver supports CUDA {driver}; cuda-python runtime {runtime}")
    s = Smoke(max(int(args.mb * 2**20) // 4, 2))
    main_stream, side = s.own(cuda.Stream("main")), s.own(cuda.Stream("side"))
    try:
        s.check("pinned round trip", lambda: round_trip(s, main_stream))
        s.check("two streams ordered by an event", lambda: streams_and_events(s, main_stream, side))
        s.check("graph of copies and memsets, captured and replayed", lambda: capture_and_replay(s, main_stream))
        s.check("capture refused inside, stream usable after", lambda: capture_refusal(s, main_stream))
    finally:
        main_stream.synchronize()
        s.close()
    print(f"gpu_smoke: {4 - s.failures} of 4 passed")
    return 1 if s.failures else 0


if __name__ == "__main__":
    sys.exit(main())
