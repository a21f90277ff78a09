"""TensorRT backend: native plans, device buffers allocated once, the step loop as one CUDA graph.

``load`` finds the plan of a bundle graph in its engine folder (see ``engine_key``)
and builds it first when it is missing or its key does not match this GPU,
TensorRT version or bundle. ``alloc`` returns device buffers (cuda-python), each
with a pinned host mirror made on first copy. ``bind`` creates one execution
context per binding and sets every tensor address once; a bound call is one
``execute_async_v3`` on the backend's current stream, checked, naming the graph.

Contexts are created with user-managed device memory: one scratch block per
stream, sized to the largest engine, is shared by every context that runs on
that stream (a stream runs one context at a time, so they never overlap); the
decoder, which runs on the second stream, gets the second block.

``loop`` stages the sampler table in device memory and captures the K step
calls (row copies + ``execute_async_v3``) as one CUDA graph on the first clip,
then replays it for every clip. Imports TensorRT and cuda-python only when a
backend is created: the package works without them. Knows TensorRT and CUDA,
nothing of diffusion.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..bundle import GraphSpec
from ..errors import EmoteError
from .base import Backend, Buffer, Graph, check_feed
from .engine_key import BuildOptions, default_engine_dir
from .steploop import StepPlan, Timer
from .trt_build import declared_io, ensure_plan, expected_key, import_tensorrt, make_logger


def check_engine_io(graph: str, engine_io: dict, declared: dict) -> None:
    """The engine's tensors must be the bundle's, name for name, shape and dtype: the failing tensor is named."""
    missing, extra = set(declared) - set(engine_io), set(engine_io) - set(declared)
    if missing or extra:
        parts = ([f"missing {', '.join(sorted(missing))}"] if missing else []) + (
            [f"unexpected {', '.join(sorted(extra))}"] if extra else []
        )
        raise EmoteError(
            f"{graph}: the TensorRT plan's tensors differ from the bundle's ({'; '.join(parts)}): rebuild with `emote build --force`"
        )
    for name, (shape, dtype) in declared.items():
        eshape, edtype = engine_io[name]
        if tuple(eshape) != tuple(shape) or np.dtype(edtype) != np.dtype(dtype):
            raise EmoteError(
                f"{graph}: tensor {name!r} is {np.dtype(edtype).name}{list(eshape)} in the plan, "
                f"{np.dtype(dtype).name}{list(shape)} in the bundle: rebuild with `emote build --force`"
            )


class TrtGraph(Graph):
    def __init__(self, backend: TensorRTBackend, name: str, key: str, engine, declared: dict):
        trt = backend.trt
        self.backend, self.name, self.key, self.engine = backend, name, key, engine
        io, modes = {}, {}
        for i in range(engine.num_io_tensors):
            n = engine.get_tensor_name(i)
            try:
                dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(n)))
            except TypeError:  # nptype knows no numpy type for bf16, fp8, int4, ...
                raise EmoteError(
                    f"{key}: tensor {n!r} of the TensorRT plan is {engine.get_tensor_dtype(n)}, which has no "
                    "numpy type: the bundle's graphs must keep their inputs and outputs fp32/fp16/int"
                ) from None
            io[n] = (tuple(int(d) for d in engine.get_tensor_shape(n)), dtype)
            modes[n] = engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT
        check_engine_io(key, io, declared)
        self.inputs = {n: io[n] for n in io if modes[n]}
        self.outputs = {n: io[n] for n in io if not modes[n]}
        self.scratch = int(engine.device_memory_size_v2)

    def bind(self, inputs: dict[str, Buffer], outputs: dict[str, Buffer]) -> TrtCall:
        from .cuda import DeviceBuffer

        be, trt = self.backend, self.backend.trt
        be.cuda.set_device(be.device_id)  # a context belongs to the device current when it is made
        # user-managed scratch: the backend shares one block per stream between all contexts
        context = self.engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        if context is None:
            raise EmoteError(f"{self.name}: TensorRT could not create an execution context: {be.log.last()}")
        bound = {}
        for role, specs, bufs in (("input", self.inputs, inputs), ("output", self.outputs, outputs)):
            for name, spec in specs.items():
                if name not in bufs:
                    raise ValueError(f"{self.name}: no buffer for {role} {name!r}")
                buf = bufs[name]
                if not isinstance(buf, DeviceBuffer):
                    raise ValueError(f"{self.name}: {role} {name!r} is not a device buffer (allocate it with backend.alloc)")
                check_feed(self.name, name, spec, buf)
                if not context.set_tensor_address(name, buf.ptr):
                    raise EmoteError(f"{self.name}: TensorRT refused the address of tensor {name!r}: {be.log.last()}")
                bound[name] = buf
        call = TrtCall(be, self.name, context, bound)
        be.calls.append(call)
        return call

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One call through temporary device buffers (not for hot loops)."""
        be = self.backend
        temp = {n: be.alloc(*spec) for n, spec in {**self.inputs, **self.outputs}.items()}
        try:
            for n in self.inputs:
                be.from_host(temp[n], np.ascontiguousarray(feeds[n]))
            call = self.bind({n: temp[n] for n in self.inputs}, {n: temp[n] for n in self.outputs})
            call()
            out = {n: np.array(be.to_host(temp[n])) for n in self.outputs}
            call.release()
            be.calls.remove(call)
            return out
        finally:
            be.free(temp.values())


class TrtCall:
    """One bound execution context: ``call()`` enqueues it on the backend's current stream."""

    def __init__(self, backend: TensorRTBackend, graph: str, context, buffers: dict):
        self.backend, self.graph, self.context, self.buffers = backend, graph, context, buffers
        self.memory = None  # (stream label, pool generation) the context's scratch was set for

    def __call__(self) -> None:
        be = self.backend
        if self.context is None:
            raise EmoteError(f"{self.graph}: called after the TensorRT backend was closed")
        be.cuda.set_device(be.device_id)  # another host thread may call: its current device is its own
        stream = be.current
        want = (stream.label, be.generation)
        if self.memory != want:
            pool = be.scratch_for(stream)
            self.context.set_device_memory(pool.ptr, pool.nbytes)
            self.memory = want
        if not self.context.execute_async_v3(stream.ptr):
            raise EmoteError(f"{self.graph}: TensorRT execute_async_v3 failed on stream {stream.label}: {be.log.last()}")

    def release(self) -> None:
        self.context = None
        self.buffers = {}


def capture_note(reason: str) -> str:
    """The one line said when the denoising loop runs uncaptured although capture was asked for."""
    return f"emote: note: the denoising loop runs uncaptured, not as one CUDA graph: {reason}"


class CapturedLoop:
    """The K step calls of a clip as one CUDA graph, captured on the first call and replayed after.

    The sampler table lives in device memory (staged once); a stochastic sampler's
    noise for all K steps is staged per clip by ``set_noise`` before the replay, so
    the graph itself reads nothing from the host. With ``capture=False`` the same
    device copies and calls are enqueued one by one: the comparison that isolates
    what the graph saves (the host loop would also wait on its pinned staging
    buffer before every step's row copy). Capture refused for any reason (``refuse``,
    or an engine whose enqueue stream capture rejects) is said once, with the reason,
    and ``captured`` then reads False.
    """

    def __init__(self, backend: TensorRTBackend, plan: StepPlan, capture: bool = True):
        self.backend, self.plan, self.capture = backend, plan, capture
        self.rows = backend.alloc(plan.rows.shape, np.float32, label="sampler table")
        backend.from_host(self.rows, np.ascontiguousarray(plan.rows, np.float32))
        self.noise = backend.alloc((plan.k, *plan.noise.shape), np.float32, label="step noise") if plan.noise is not None else None
        self.graph = None
        self.generation = None
        self.failed: str | None = None  # why capture is off for this loop although it was asked for
        self.noise_set = False

    @property
    def captured(self) -> bool:
        """Whether the loop runs (or will run) as one CUDA graph."""
        return self.capture and self.failed is None

    def refuse(self, reason: str) -> None:
        """Run this loop uncaptured from now on, saying why once (nothing is said when capture is off anyway)."""
        if self.captured:
            self.failed = reason
            print(capture_note(reason), file=sys.stderr)

    def set_noise(self, noise: np.ndarray) -> None:
        if self.noise is None:
            raise ValueError("this sampler is deterministic: its step plan has no noise buffer")
        self.backend.from_host(self.noise, np.ascontiguousarray(noise, np.float32))
        self.noise_set = True

    def _enqueue(self, timed: Timer | None = None) -> None:
        be, plan = self.backend, self.plan
        for op, what, i in plan.ops():
            if op == "run":
                if timed is not None:
                    timed(what, plan.steps[i].call)
                else:
                    plan.steps[i].call()
            elif what == "row":
                be.copy_raw(plan.row, self.rows[i : i + 1])
            else:
                be.copy_raw(plan.noise, self.noise[i : i + 1])

    def __call__(self, timed: Timer | None = None) -> None:
        from .cuda import CapturedGraph, CudaError

        be = self.backend
        be.cuda.set_device(be.device_id)  # before the capture: inside it, TrtCall then makes no CUDA call of its own
        if self.noise is not None and not self.noise_set:
            raise ValueError("set_noise() first: the sampler is stochastic")
        if not self.captured:
            self._enqueue(timed)
            return
        if self.graph is not None and self.generation == be.generation:
            self.graph.launch()
            return
        # First clip (or the scratch memory moved): run the steps eagerly, which is this clip's
        # result and TensorRT's one-time setup on first enqueue, then capture the same sequence.
        self._enqueue()
        be.main.synchronize()
        if self.graph is not None:
            self.graph.close()
            self.graph = None
        graph = CapturedGraph(be.main, f"denoise loop ({self.plan.k} steps)")
        graph.begin()
        try:
            self._enqueue()
            graph.end()
        except (EmoteError, CudaError) as e:
            graph.abort()
            graph.close()
            # some engines hold operations that stream capture forbids: run them uncaptured
            self.refuse(f"stream capture failed ({e})")
            return
        self.graph, self.generation = graph, be.generation

    def close(self) -> None:
        if self.graph is not None:
            self.graph.close()
            self.graph = None


class TensorRTBackend(Backend):
    """``TensorRTBackend(engines=None, build=True, cuda_graph=True, opt_level=3, workspace_gb=None, device_id=0)``.

    engines: the folder of plans (default: ``<bundle>/engines/<gpu>-cc<cc>-trt<version>-<hash>/``).
    build: build missing or mismatching plans on load (else: an error naming `emote build`).
    cuda_graph: replay the step loop as a CUDA graph.
    """

    name = "tensorrt"
    asynchronous = True

    def __init__(
        self,
        engines: str | Path | None = None,
        build: bool = True,
        cuda_graph: bool = True,
        opt_level: int = 3,
        workspace_gb: float | None = None,
        device_id: int = 0,
        threads: int | None = None,  # accepted for a uniform interface: TensorRT's work is on the GPU
        verbose: bool = False,
    ):
        self.trt = import_tensorrt()
        from . import cuda

        self.cuda = cuda
        self.device_id = device_id
        self.gpu = cuda.device_info(device_id)
        cuda.set_device(device_id)  # the streams and events below belong to the current device
        self.engines = Path(engines) if engines else None
        self.build, self.cuda_graph = build, cuda_graph
        self.options = BuildOptions(opt_level, workspace_gb)
        self.log = make_logger(self.trt, verbose)
        self.runtime = self.trt.Runtime(self.log)
        self.main, self.side = cuda.Stream("main"), cuda.Stream("side")
        self.current = self.main
        self.fork, self.joined = cuda.Event("fork to side"), cuda.Event("side done")
        self.zeroed = cuda.Event("buffers zeroed")
        self.buffers: list = []
        self.graphs: list[TrtGraph] = []
        self.calls: list[TrtCall] = []
        self.loops: list = []
        self.pools: dict[str, object] = {}
        self.max_scratch, self.generation = 0, 0
        self.build_results = []

    # -- graphs -----------------------------------------------------------------------------
    def engine_dir(self, spec: GraphSpec) -> Path:
        if self.engines is not None:
            return self.engines
        if not spec.bundle_hash:
            raise EmoteError(f"{spec.path} is not a bundle graph: give the TensorRT backend an engines folder to build it into")
        return default_engine_dir(spec.folder, self.gpu.name, self.gpu.compute_capability, self.trt.__version__, spec.bundle_hash)

    def load(self, spec: GraphSpec) -> TrtGraph:
        name, key = spec.name, spec.key
        self.cuda.set_device(self.device_id)  # a build or a plan on load goes to this backend's GPU, the one its keys name
        expected = expected_key(spec, self.gpu.name, self.gpu.compute_capability, self.trt.__version__, self.options)
        data, result = ensure_plan(self.trt, spec, self.engine_dir(spec), expected, build=self.build)
        self.build_results.append(result)
        engine = self.runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise EmoteError(f"TensorRT cannot deserialize {result.plan}: {self.log.last()} (rebuild: emote build --force)")
        graph = TrtGraph(self, name, key, engine, declared_io(spec))
        if graph.scratch > self.max_scratch:
            self.max_scratch = graph.scratch
            if self.pools:  # a larger engine after the first call: regrow, contexts re-point lazily
                self.synchronize()
                self.free(self.pools.values())
                self.pools.clear()
                self.generation += 1
        self.graphs.append(graph)
        return graph

    def scratch_for(self, stream):
        """The scratch block of ``stream``, shared by every context that runs on it."""
        if stream.label not in self.pools:
            self.pools[stream.label] = self.alloc(
                (max(self.max_scratch, 1),), np.uint8, label=f"scratch of stream {stream.label}", zero=False
            )
        return self.pools[stream.label]

    # -- buffers ----------------------------------------------------------------------------
    def alloc(self, shape, dtype, label: str = "", zero: bool = True):
        self.cuda.set_device(self.device_id)
        buf = self.cuda.DeviceBuffer.allocate(tuple(shape), dtype, label=label or f"{np.dtype(dtype).name}{list(shape)}")
        self.buffers.append(buf)
        if zero:  # as on the CPU backends: a buffer nobody wrote reads as zeros, never as NaN garbage
            self.main.memset(buf.ptr, buf.nbytes, buf.label)
            # the buffer's first write may come on the side stream (from_host inside side_stream):
            # it must wait for the zeros, or the memset lands on top of it
            self.zeroed.record(self.main)
            self.side.wait(self.zeroed)
        return buf

    def free(self, bufs) -> None:
        for b in list(bufs):
            b.close()
            if b in self.buffers:
                self.buffers.remove(b)

    def _staging(self, buf):
        if buf.pinned is None:
            buf.pinned = self.cuda.PinnedBuffer(buf.shape, buf.dtype, label=buf.label)
            buf.staged = self.cuda.Event(f"staging of {buf.label}")
        else:
            buf.staged.synchronize()  # the previous copy through this staging area has left it
        return buf.pinned

    def from_host(self, buf, array: np.ndarray) -> None:
        array = np.asarray(array)
        if tuple(array.shape) != buf.shape or array.dtype != buf.dtype:
            raise ValueError(f"{buf.label}: cannot copy {array.dtype.name}{list(array.shape)} into {buf.dtype.name}{list(buf.shape)}")
        pinned = self._staging(buf)
        np.copyto(pinned.array, array, casting="no")
        self.current.copy(buf.ptr, pinned.ptr, buf.nbytes, "h2d", buf.label)
        buf.staged.record(self.current)

    def to_host_async(self, buf) -> Callable[[], np.ndarray]:
        pinned = self._staging(buf)
        self.current.copy(pinned.ptr, buf.ptr, buf.nbytes, "d2h", buf.label)
        buf.staged.record(self.current)
        event = buf.staged

        def wait() -> np.ndarray:
            event.synchronize()
            return pinned.array  # reused by the next copy of this buffer: copy out what you keep

        return wait

    def to_host(self, buf) -> np.ndarray:
        return self.to_host_async(buf)()

    def copy_raw(self, dst, src) -> None:
        if dst.nbytes != src.nbytes:
            raise ValueError(f"cannot copy {src.label} ({src.nbytes} bytes) into {dst.label} ({dst.nbytes} bytes)")
        self.current.copy(dst.ptr, src.ptr, dst.nbytes, "d2d", f"{src.label} -> {dst.label}")

    def copy(self, dst, src, start: int = 0) -> None:
        view = src[start : start + dst.shape[0]]
        if view.shape != dst.shape or view.dtype != dst.dtype:
            raise ValueError(
                f"cannot copy {view.label} {view.dtype.name}{list(view.shape)} into {dst.label} {dst.dtype.name}{list(dst.shape)}"
            )
        self.copy_raw(dst, view)

    # -- streams ----------------------------------------------------------------------------
    @contextmanager
    def side_stream(self):
        self.fork.record(self.main)
        self.side.wait(self.fork)
        self.current = self.side
        try:
            yield
        finally:
            self.current = self.main

    def join(self) -> None:
        self.joined.record(self.side)
        self.main.wait(self.joined)

    def synchronize(self) -> None:
        self.main.synchronize()
        self.side.synchronize()

    def loop(self, plan: StepPlan):
        loop = CapturedLoop(self, plan, capture=self.cuda_graph)
        self.loops.append(loop)
        return loop

    def close(self) -> None:
        if self.main is None:
            return
        self.synchronize()
        for loop in self.loops:
            loop.close()
        for call in self.calls:
            call.release()  # contexts go before their engines
        self.loops, self.calls = [], []
        self.graphs.clear()
        self.free(self.buffers)
        self.pools.clear()
        for obj in (self.fork, self.joined, self.zeroed, self.side, self.main):
            obj.close()
        self.main = self.side = None
        self.runtime = None
