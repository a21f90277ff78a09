"""CUDA memory, streams, events and graphs for the TensorRT backend, over cuda-python's runtime API.

Why cuda-python (``cuda.bindings.runtime``) and not pycuda: it is NVIDIA's own
binding, ships prebuilt wheels for x86-64 and aarch64 (Jetson) that import
without a GPU or a CUDA toolkit (pycuda compiles against the toolkit at install),
it is what TensorRT's own Python samples use, and it exposes stream capture and
graph launch (``cudaStreamBeginCapture`` ... ``cudaGraphLaunch``) one to one.

Every call goes through ``check``, which turns a CUDA error code into an
``EmoteError`` naming the call and what it was for (the tensor, the stream).
Everything allocated here has an owner with ``close()``; nothing is freed by a
finalizer behind the caller's back. Imported only by the TensorRT backend: the
package works without cuda-python. Knows CUDA and nothing of diffusion.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass

import numpy as np

from ..errors import EmoteError

INSTALL_HINT = (
    "pip install 'emote-edge[gpu-cu12]' or 'emote-edge[gpu-cu13]', the one `emote doctor` names for the driver "
    "(on JetPack 6: pip install 'cuda-python>=12.6.1,<13')"
)
# the modules cuda-python's runtime binding lives in: 12.6.1 moved it to cuda.bindings, 13.0 removed cuda.cudart
RUNTIME_MODULES = ("cuda.bindings", "cuda.cudart")


class CudaError(EmoteError):
    """A CUDA runtime call failed; the message names the call and its object."""


_RT = None


def cudart():
    """The CUDA runtime module of cuda-python, imported on first use."""
    global _RT
    if _RT is None:
        try:
            from cuda.bindings import runtime  # cuda-python >= 12.6.1 (release notes: "cuda.cudart -> cuda.bindings.runtime")
        except ImportError:
            try:
                from cuda import cudart as runtime  # cuda-python 12.0 to 12.6.0; removed in 13.0
            except ImportError:
                raise EmoteError(f"cuda-python is not installed: {INSTALL_HINT}") from None
        _RT = runtime
    return _RT


def installed() -> bool:
    """cuda-python's runtime binding is there, looked up without importing it. An empty 'cuda'
    namespace (left by an uninstall, or made by another NVIDIA package) does not count."""
    from .probe import has_module

    return any(has_module(m) for m in RUNTIME_MODULES)


def device_count() -> int:
    """How many GPUs the CUDA runtime sees; 0 without cuda-python, a driver or a device (never raises)."""
    if not installed():
        return 0
    try:
        err, count = cudart().cudaGetDeviceCount()
    except Exception:  # noqa: BLE001 - a broken install counts no device; `emote doctor` says why
        return 0
    return int(count) if err == cudart().cudaError_t.cudaSuccess else 0


def check(result, what: str):
    """Unwrap a cuda-python result tuple ``(err, *values)``; a non-success code raises, naming ``what``."""
    rt = cudart()
    err, values = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
    if err != rt.cudaError_t.cudaSuccess:
        name = rt.cudaGetErrorName(err)[1]
        text = rt.cudaGetErrorString(err)[1]
        name = name.decode() if isinstance(name, bytes) else str(name)
        text = text.decode() if isinstance(text, bytes) else str(text)
        raise CudaError(f"CUDA {what} failed: {name} ({text})")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


_THREAD = threading.local()  # the device this module last made current on each host thread


def set_device(index: int) -> None:
    """Make GPU ``index`` current on this host thread, as CUDA needs before any allocation, build,
    context or launch meant for it (the current device is per thread). A thread that already has it
    makes no call, so this is cheap on every call and makes no CUDA call inside a stream capture."""
    if getattr(_THREAD, "device", None) != index:
        check(cudart().cudaSetDevice(index), f"cudaSetDevice({index})")
        _THREAD.device = index


@dataclass(frozen=True)
class DeviceInfo:
    index: int
    name: str
    major: int
    minor: int
    total_bytes: int
    integrated: bool  # Jetson: GPU and CPU share one memory

    @property
    def compute_capability(self) -> str:
        return f"{self.major}.{self.minor}"


def device_info(index: int = 0) -> DeviceInfo:
    """The GPU ``index`` as the CUDA runtime sees it; no GPU or no driver is one clear error."""
    rt = cudart()
    err, count = rt.cudaGetDeviceCount()
    if err == rt.cudaError_t.cudaErrorInsufficientDriver:
        # a driver older than the CUDA runtime cuda-python links statically (cuda-python 13 on a CUDA 12
        # driver: minor-version compatibility stops at the major version) reads the same as no driver:
        # tell them apart by the driver's version (0: no driver)
        derr, driver = rt.cudaDriverGetVersion()
        if derr == rt.cudaError_t.cudaSuccess and driver > 0:
            runtime = check(rt.cudaRuntimeGetVersion(), "cudaRuntimeGetVersion")
            raise EmoteError(
                f"the NVIDIA driver supports CUDA {cuda_version(driver)}, older than the CUDA {cuda_version(runtime)} "
                f"cuda-python was built for: pip install 'cuda-python~={cuda_version(driver)}.0' (or update the driver)"
            )
    if err in (rt.cudaError_t.cudaErrorNoDevice, rt.cudaError_t.cudaErrorInsufficientDriver):
        name = rt.cudaGetErrorName(err)[1]
        raise EmoteError(
            f"no NVIDIA GPU with a working driver here ({name.decode() if isinstance(name, bytes) else name}): "
            "the TensorRT backend needs one; `emote doctor` lists what this machine has"
        )
    count = check((err, count), "cudaGetDeviceCount")
    if index >= count:
        raise EmoteError(f"CUDA device {index} does not exist ({count} device(s) here)")
    prop = check(rt.cudaGetDeviceProperties(index), f"cudaGetDeviceProperties({index})")
    name = prop.name.split(b"\0", 1)[0].decode() if isinstance(prop.name, bytes) else str(prop.name)
    return DeviceInfo(index, name.strip(), int(prop.major), int(prop.minor), int(prop.totalGlobalMem), bool(prop.integrated))


def cuda_version(v: int) -> str:
    """CUDA's integer version as 'major.minor': 12060 -> '12.6' (1000 * major + 10 * minor)."""
    return f"{v // 1000}.{(v % 1000) // 10}"


def versions() -> tuple[str, str]:
    """(driver CUDA version, runtime CUDA version) as 'major.minor'."""
    rt = cudart()
    return (
        cuda_version(check(rt.cudaDriverGetVersion(), "cudaDriverGetVersion")),
        cuda_version(check(rt.cudaRuntimeGetVersion(), "cudaRuntimeGetVersion")),
    )


def nbytes(shape: tuple[int, ...], dtype) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


class DeviceBuffer:
    """A device allocation with a numpy-like shape and dtype; ``buf[a:b]`` is a view along axis 0.

    Views share the owner's memory and free nothing; only the owner's ``close`` frees.
    """

    def __init__(self, ptr: int, shape: tuple[int, ...], dtype, owner: DeviceBuffer | None = None, label: str = ""):
        self.ptr, self.shape, self.dtype = int(ptr), tuple(int(s) for s in shape), np.dtype(dtype)
        self.owner, self.label = owner, label
        self.pinned: PinnedBuffer | None = None  # host staging, made on first host copy
        self.staged = None  # event recorded after the last copy through ``pinned``

    @classmethod
    def allocate(cls, shape: tuple[int, ...], dtype, label: str = "") -> DeviceBuffer:
        size = max(nbytes(shape, dtype), 1)  # cudaMalloc(0) returns no usable pointer
        ptr = check(cudart().cudaMalloc(size), f"cudaMalloc of {size} bytes for {label or 'a buffer'}")
        return cls(int(ptr), shape, dtype, label=label)

    @property
    def nbytes(self) -> int:
        return nbytes(self.shape, self.dtype)

    def __getitem__(self, index) -> DeviceBuffer:
        if not isinstance(index, slice) or index.step not in (None, 1):
            raise TypeError("device buffers slice along axis 0 with a contiguous slice only")
        start, stop, _ = index.indices(self.shape[0])
        row = nbytes(self.shape[1:], self.dtype)
        return DeviceBuffer(
            self.ptr + start * row,
            (max(stop - start, 0), *self.shape[1:]),
            self.dtype,
            owner=self.owner or self,
            label=f"{self.label}[{start}:{stop}]",
        )

    def close(self) -> None:
        if self.pinned is not None:
            self.pinned.close()
            self.pinned = None
        if self.staged is not None:
            self.staged.close()
            self.staged = None
        if self.owner is None and self.ptr:
            check(cudart().cudaFree(self.ptr), f"cudaFree of {self.label or 'a buffer'}")
        self.ptr = 0


class PinnedBuffer:
    """Page-locked host memory seen as a numpy array: the host side of asynchronous copies."""

    def __init__(self, shape: tuple[int, ...], dtype, label: str = ""):
        size = max(nbytes(shape, dtype), 1)
        self.ptr = int(check(cudart().cudaMallocHost(size), f"cudaMallocHost of {size} bytes for {label or 'a buffer'}"))
        raw = (ctypes.c_uint8 * size).from_address(self.ptr)
        self.array = np.frombuffer(raw, np.uint8, count=nbytes(shape, dtype)).view(dtype).reshape(shape)
        self.label = label

    def close(self) -> None:
        if self.ptr:
            self.array = None
            check(cudart().cudaFreeHost(self.ptr), f"cudaFreeHost of {self.label or 'a buffer'}")
            self.ptr = 0


class Event:
    def __init__(self, label: str = ""):
        rt = cudart()
        # timing off: these events only order streams, and timing-free events are cheaper to wait on
        self.handle = check(rt.cudaEventCreateWithFlags(rt.cudaEventDisableTiming), f"cudaEventCreateWithFlags ({label})")
        self.label = label

    def record(self, stream: Stream) -> None:
        check(cudart().cudaEventRecord(self.handle, stream.handle), f"cudaEventRecord ({self.label} on {stream.label})")

    def synchronize(self) -> None:
        check(cudart().cudaEventSynchronize(self.handle), f"cudaEventSynchronize ({self.label})")

    def close(self) -> None:
        if self.handle is not None:
            check(cudart().cudaEventDestroy(self.handle), f"cudaEventDestroy ({self.label})")
            self.handle = None


class Stream:
    def __init__(self, label: str):
        rt = cudart()
        # non-blocking: no implicit ordering with the legacy default stream, which capture also forbids
        self.handle = check(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking), f"cudaStreamCreateWithFlags ({label})")
        self.label = label

    @property
    def ptr(self) -> int:
        """The cudaStream_t as an integer: what TensorRT's ``execute_async_v3`` takes."""
        return int(self.handle)

    def synchronize(self) -> None:
        check(cudart().cudaStreamSynchronize(self.handle), f"cudaStreamSynchronize ({self.label})")

    def wait(self, event: Event) -> None:
        check(cudart().cudaStreamWaitEvent(self.handle, event.handle, 0), f"cudaStreamWaitEvent ({self.label} waits for {event.label})")

    def memset(self, dst: int, size: int, what: str) -> None:
        if size:
            check(cudart().cudaMemsetAsync(dst, 0, size, self.handle), f"cudaMemsetAsync of {what} ({size} bytes on {self.label})")

    def copy(self, dst: int, src: int, size: int, kind: str, what: str) -> None:
        rt = cudart()
        k = {
            "h2d": rt.cudaMemcpyKind.cudaMemcpyHostToDevice,
            "d2h": rt.cudaMemcpyKind.cudaMemcpyDeviceToHost,
            "d2d": rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice,
        }[kind]
        if size:
            check(rt.cudaMemcpyAsync(dst, src, size, k, self.handle), f"cudaMemcpyAsync {kind} of {what} ({size} bytes on {self.label})")

    def close(self) -> None:
        if self.handle is not None:
            check(cudart().cudaStreamDestroy(self.handle), f"cudaStreamDestroy ({self.label})")
            self.handle = None


class CapturedGraph:
    """Work queued on a stream between ``begin`` and ``end``, instantiated once, launched many times.

    Capture mode is thread-local, as trtexec uses it: other threads may keep making
    CUDA calls that are not legal during capture (e.g. cudaMalloc) without breaking it.
    """

    def __init__(self, stream: Stream, label: str):
        self.stream, self.label = stream, label
        self.graph = self.exec = None

    def begin(self) -> None:
        rt = cudart()
        check(
            rt.cudaStreamBeginCapture(self.stream.handle, rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal),
            f"cudaStreamBeginCapture ({self.label})",
        )

    def end(self) -> None:
        rt = cudart()
        self.graph = check(rt.cudaStreamEndCapture(self.stream.handle), f"cudaStreamEndCapture ({self.label})")
        self.exec = check(rt.cudaGraphInstantiate(self.graph, 0), f"cudaGraphInstantiate ({self.label})")

    def abort(self) -> None:
        """End a capture that went wrong and clear the sticky error it left, as trtexec does."""
        rt = cudart()
        result = rt.cudaStreamEndCapture(self.stream.handle)
        if result[0] == rt.cudaError_t.cudaSuccess and result[1] is not None:
            rt.cudaGraphDestroy(result[1])
        rt.cudaGetLastError()

    def launch(self) -> None:
        check(cudart().cudaGraphLaunch(self.exec, self.stream.handle), f"cudaGraphLaunch ({self.label})")

    def close(self) -> None:
        rt = cudart()
        if self.exec is not None:
            check(rt.cudaGraphExecDestroy(self.exec), f"cudaGraphExecDestroy ({self.label})")
            self.exec = None
        if self.graph is not None:
            check(rt.cudaGraphDestroy(self.graph), f"cudaGraphDestroy ({self.label})")
            self.graph = None
