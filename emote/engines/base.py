"""The one contract every backend meets; the runtime sees nothing else of an engine.

A backend opens a bundle's graphs (each handed over as its ``GraphSpec``: file,
tensors, precision, hashes; never the manifest) and allocates buffers. A graph is bound once to
named buffers (``bind``) and the returned call runs it with no allocation and no
copies (``call()``), so that the runtime can bind the per-clip outputs of one graph
as the inputs of the next and replay the step loop over fixed buffers (ping-pong
between two bindings). ``run`` is the convenience path for one-off calls.

Buffers are numpy arrays on the CPU backends; device backends return objects with
the same shape and dtype and copy through ``to_host``/``from_host``.
"""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle import GraphSpec

Buffer = Any  # np.ndarray on CPU backends; a device allocation on GPU backends


class Graph(ABC):
    name: str
    inputs: dict[str, tuple[tuple[int, ...], np.dtype]]
    outputs: dict[str, tuple[tuple[int, ...], np.dtype]]

    @abstractmethod
    def bind(self, inputs: dict[str, Buffer], outputs: dict[str, Buffer]) -> Callable[[], None]:
        """A call that runs the graph reading ``inputs`` and writing ``outputs`` in place."""

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One call with host arrays in and freshly allocated host arrays out (not for hot loops)."""
        outs = {n: np.empty(shape, dtype) for n, (shape, dtype) in self.outputs.items()}
        self.bind({k: np.ascontiguousarray(v) for k, v in feeds.items()}, outs)()
        return outs


class Backend(ABC):
    """Opens graphs and owns their buffers; a context manager that frees what it holds."""

    name: str

    @abstractmethod
    def load(self, spec: GraphSpec) -> Graph:
        """Open the graph of ``spec`` (``GraphSpec.standalone(path)`` for a file outside a bundle)."""

    def alloc(self, shape: tuple[int, ...], dtype: np.dtype | str) -> Buffer:
        return np.zeros(shape, dtype)

    def to_host(self, buf: Buffer) -> np.ndarray:
        return buf

    def from_host(self, buf: Buffer, array: np.ndarray) -> None:
        np.copyto(buf, array, casting="no")

    def synchronize(self) -> None:
        """Wait for queued work (device backends); a no-op on the CPU."""

    # -- the captured step loop and the second stream (defaults: plain host code) ---------
    # A device backend queues calls on a stream and returns at once (``asynchronous``);
    # it stages the sampler table on the device and replays the K step calls as one
    # CUDA graph (``loop``), and runs decode + copy-out on a second stream
    # (``side_stream``/``join``/``to_host_async``). The defaults below are what a CPU
    # backend does: the same order, run in place.
    asynchronous = False

    def copy(self, dst: Buffer, src: Buffer, start: int = 0) -> None:
        """``dst[:] = src[start:start + len(dst)]`` on the device (axis 0), queued like a call."""
        np.copyto(dst, src[start : start + len(dst)], casting="no")

    def loop(self, plan):
        """The K-step loop of ``plan`` (a ``steploop.StepPlan``) as one callable ``loop(timed=None)``."""
        from .steploop import HostLoop

        return HostLoop(self, plan)

    def side_stream(self):
        """Calls made inside ``with backend.side_stream():`` run after, and beside, the work queued so far."""
        from contextlib import nullcontext

        return nullcontext()

    def join(self) -> None:
        """Later calls wait for the side stream's work (on the device; the host does not block)."""

    def to_host_async(self, buf: Buffer) -> Callable[[], np.ndarray]:
        """Queue a copy of ``buf`` to the host; the returned function waits for it and returns the array."""
        return lambda: self.to_host(buf)

    def close(self) -> None:
        """Free sessions and buffers. A CPU backend may load graphs again afterwards."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_feed(graph: str, name: str, expected: tuple[tuple[int, ...], np.dtype], buf: Buffer) -> None:
    """Shape and dtype of a buffer against a graph's declared tensor: the failing tensor is named."""
    shape, dtype = expected
    if tuple(buf.shape) != tuple(shape) or np.dtype(buf.dtype) != np.dtype(dtype):
        raise ValueError(
            f"{graph}: tensor {name!r} is {np.dtype(buf.dtype).name}{list(buf.shape)}, expected {np.dtype(dtype).name}{list(shape)}"
        )


def cache_folder(owner, path: Path, what: str, otherwise: str) -> Path | None:
    """``path`` created for a backend's on-disk cache; None where it cannot be, said once per ``owner``
    (its ``_said_uncached`` flag): ``what`` names the cache, ``otherwise`` what the backend does instead."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        if not owner._said_uncached:
            print(
                f"emote: note: cannot write {what} {path} ({e.strerror}): {otherwise} (pass cache_dir= to cache elsewhere)", file=sys.stderr
            )
            owner._said_uncached = True
        return None
    return path
