"""ONNX Runtime backend: CPU by default; CUDA and TensorRT execution providers where installed.

Sessions are created once per graph. ``bind`` makes an ``IOBinding`` over the
caller's buffers (numpy arrays bound by pointer on the CPU), so a bound call
allocates nothing and copies nothing: ``run_with_iobinding`` writes straight into
the output arrays. Knows ONNX Runtime and nothing of diffusion.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..errors import EmoteError
from .base import Backend, Buffer, Graph, check_feed

# ONNX type strings as ONNX Runtime reports them -> numpy dtypes
ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
}

PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
}


def resolve_providers(names: list[str] | None) -> list[str]:
    """Provider names or aliases -> ONNX Runtime provider names; unavailable ones are a clear error."""
    available = ort.get_available_providers()
    if not names:
        return ["CPUExecutionProvider"]
    out = []
    for n in names:
        full = PROVIDER_ALIASES.get(n.lower(), n)
        if full not in available:
            raise EmoteError(
                f"ONNX Runtime provider {n!r} is not available here (available: {', '.join(available)}); "
                "for CUDA/TensorRT install the gpu extra: pip install 'emote-edge[gpu]'"
            )
        out.append(full)
    if "CPUExecutionProvider" not in out:
        out.append("CPUExecutionProvider")  # the fallback for nodes a device provider does not take
    return out


class OrtGraph(Graph):
    def __init__(self, name: str, session: ort.InferenceSession):
        self.name, self.session = name, session
        self.inputs = {i.name: (tuple(i.shape), np.dtype(ORT_DTYPES[i.type])) for i in session.get_inputs()}
        self.outputs = {o.name: (tuple(o.shape), np.dtype(ORT_DTYPES[o.type])) for o in session.get_outputs()}

    def bind(self, inputs: dict[str, Buffer], outputs: dict[str, Buffer]) -> Callable[[], None]:
        missing = set(self.inputs) - set(inputs)
        if missing:
            raise ValueError(f"{self.name}: no buffer for input(s) {', '.join(sorted(missing))}")
        io = self.session.io_binding()
        for name, buf in inputs.items():
            if name not in self.inputs:
                continue  # extra buffers are allowed: one feed dict may serve several graphs
            check_feed(self.name, name, self.inputs[name], buf)
            if not buf.flags.c_contiguous:
                raise ValueError(f"{self.name}: input {name!r} must be C-contiguous")
            io.bind_input(name, "cpu", 0, buf.dtype, list(buf.shape), buf.ctypes.data)
        for name, (shape, dtype) in self.outputs.items():
            if name not in outputs:
                raise ValueError(f"{self.name}: no buffer for output {name!r}")
            buf = outputs[name]
            check_feed(self.name, name, (shape, dtype), buf)
            io.bind_output(name, "cpu", 0, buf.dtype, list(buf.shape), buf.ctypes.data)
        session = self.session

        def call() -> None:
            session.run_with_iobinding(io)

        call.keepalive = (io, inputs, outputs)  # buffers must outlive the binding
        return call


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(
        self,
        providers: list[str] | None = None,
        threads: int | None = None,
        optimization: str = "all",
        spinning: bool = False,
    ):
        self.providers = resolve_providers(providers)
        self.threads = threads
        self.optimization = optimization
        self.spinning = spinning
        self.sessions: list[ort.InferenceSession] = []

    def session_options(self) -> ort.SessionOptions:
        so = ort.SessionOptions()
        so.graph_optimization_level = {
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        }[self.optimization]
        so.intra_op_num_threads = self.threads or len(os.sched_getaffinity(0))
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3
        # Each session owns a thread pool whose threads spin after a call. The runtime
        # alternates seven sessions: spinning pools of idle sessions steal the cores of
        # the busy one (measured on 2 cores: up to 4x slower steps). Off by default.
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spinning else "0")
        return so

    def load(self, name: str, path: Path) -> OrtGraph:
        try:
            session = ort.InferenceSession(str(path), self.session_options(), providers=self.providers)
        except Exception as e:  # onnxruntime raises its own exception types for bad files
            raise EmoteError(f"ONNX Runtime cannot load {path}: {str(e).splitlines()[0]}") from None
        self.sessions.append(session)
        return OrtGraph(name, session)

    def close(self) -> None:
        self.sessions.clear()
