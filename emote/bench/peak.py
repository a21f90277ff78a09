"""The machine's achievable peak, measured in the same run and the same backend: one big GEMM.

The "fraction of peak" of a graph is its FLOP/s over this GEMM's, so both come
from the same engine, threads and precision on the same (possibly shared) machine.
Only the (backend, precision) pairs a benchmark's variants run are measured: a CPU
without bf16 is never asked for a bf16 GEMM.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..bundle import GraphSpec

N = 1024  # a 1024^3 GEMM: 2.1 GFLOP, large enough to reach the kernels' plateau


def gemm_graph(path: Path, n: int = N, dtype: str = "float32") -> None:
    elem = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16}[dtype]
    w = np.random.default_rng(0).standard_normal((n, n)).astype(dtype)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "w"], ["y"])],
        "gemm",
        [helper.make_tensor_value_info("a", elem, [n, n])],
        [helper.make_tensor_value_info("y", elem, [n, n])],
        [onnx.numpy_helper.from_array(w, "w")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))


def measure_peak(backend, repeat: int = 10, n: int = N, dtype: str = "float32") -> float:
    """Best GFLOP/s of an n^3 GEMM in ``backend`` (a Backend instance) at ``dtype`` (float32, float16)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gemm.onnx"
        gemm_graph(path, n, dtype)
        graph = backend.load(GraphSpec.standalone(path, "gemm"))
        a = backend.alloc((n, n), np.dtype(dtype))
        backend.from_host(a, np.random.default_rng(1).standard_normal((n, n)).astype(dtype))
        y = backend.alloc((n, n), np.dtype(dtype))
        call = graph.bind({"a": a}, {"y": y})
        call()
        best = float("inf")
        for _ in range(repeat):
            t0 = time.perf_counter()
            call()
            backend.synchronize()
            best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


CPU_BACKENDS = ("onnxruntime", "openvino")  # a GPU's peak is not a GEMM on the host


def peak_key(spec) -> str:
    """'<backend>-<precision of its arithmetic>': int8 graphs keep their float parts in fp32."""
    return f"{spec.backend}-{spec.precision if spec.precision in ('fp16', 'bf16') else 'fp32'}"


def measure_peaks(specs, threads: int) -> dict[str, float]:
    """The GEMM peak of every (backend, precision) the runtime variants in ``specs`` use, and only those."""
    from ..engines import open_backend

    peaks = {}
    for key in sorted({peak_key(s) for s in specs if s.kind == "runtime" and s.backend in CPU_BACKENDS}):
        backend, precision = key.split("-")
        # ONNX Runtime's fp16 runs fp16 graphs; OpenVINO's bf16/fp16 run fp32 graphs at that precision
        dtype = "float16" if (backend, precision) == ("onnxruntime", "fp16") else "float32"
        with open_backend(backend, precision, threads=threads) as be:
            peaks[key] = measure_peak(be, dtype=dtype)
    return peaks
