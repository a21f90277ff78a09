"""OpenVINO backend: CPUs (f32, bf16 where the CPU has it, int8 from Q/DQ graphs), Intel GPUs and NPUs.

Each graph is compiled once per device and precision hint; its infer request is
bound to the caller's buffers once (``ov.Tensor`` over the numpy arrays, shared
memory: no copies in or out) and reused for every call. Compiled models are cached
on disk in a folder keyed like TensorRT plans (device, OpenVINO version, bundle
hash), so a second start skips compilation. Imported only when selected: the
package works without OpenVINO. Knows OpenVINO and nothing of diffusion.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import EmoteError
from .base import Backend, Buffer, Graph, check_feed

HINTS = {"fp32": "f32", "f32": "f32", "bf16": "bf16", "fp16": "f16", "f16": "f16"}


def import_openvino():
    try:
        import openvino as ov
    except ImportError:
        raise EmoteError("OpenVINO is not installed: pip install 'emote-edge[openvino]'") from None
    return ov


def ov_dtype(element_type) -> np.dtype:
    return np.dtype(element_type.to_dtype())


class OpenVINOGraph(Graph):
    def __init__(self, name: str, compiled):
        self.name, self.compiled = name, compiled
        self.inputs = {p.get_any_name(): (tuple(p.get_shape()), ov_dtype(p.get_element_type())) for p in compiled.inputs}
        self.outputs = {p.get_any_name(): (tuple(p.get_shape()), ov_dtype(p.get_element_type())) for p in compiled.outputs}

    def bind(self, inputs: dict[str, Buffer], outputs: dict[str, Buffer]) -> Callable[[], None]:
        ov = import_openvino()
        req = self.compiled.create_infer_request()
        for name, spec in self.inputs.items():
            if name not in inputs:
                raise ValueError(f"{self.name}: no buffer for input {name!r}")
            check_feed(self.name, name, spec, inputs[name])
            req.set_tensor(name, ov.Tensor(inputs[name], shared_memory=True))
        for name, spec in self.outputs.items():
            if name not in outputs:
                raise ValueError(f"{self.name}: no buffer for output {name!r}")
            check_feed(self.name, name, spec, outputs[name])
            req.set_tensor(name, ov.Tensor(outputs[name], shared_memory=True))

        def call() -> None:
            req.infer()

        call.keepalive = (req, inputs, outputs)
        return call


class OpenVINOBackend(Backend):
    """``OpenVINOBackend(device="CPU", precision="bf16", threads=2, streams=1, cache_dir=...)``."""

    name = "openvino"

    def __init__(
        self,
        device: str = "CPU",
        precision: str = "fp32",
        threads: int | None = None,
        streams: int = 1,
        cache_dir: str | Path | None = None,
    ):
        ov = import_openvino()
        if precision not in HINTS:
            raise EmoteError(f"OpenVINO precision {precision!r}: one of fp32, bf16, fp16")
        self.core = ov.Core()
        if device.split(".")[0] not in {d.split(".")[0] for d in self.core.available_devices}:
            raise EmoteError(f"OpenVINO device {device!r} not found (available: {', '.join(self.core.available_devices)})")
        self.device, self.precision = device, precision
        self.threads, self.streams = threads or len(os.sched_getaffinity(0)), streams
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.version = ov.__version__.split("-")[0]

    def config(self) -> dict[str, object]:
        cfg: dict[str, object] = {
            "INFERENCE_PRECISION_HINT": HINTS[self.precision],
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": self.streams,
        }
        if self.device.startswith("CPU"):
            cfg["INFERENCE_NUM_THREADS"] = self.threads
        if self.cache_dir is not None:
            cfg["CACHE_DIR"] = str(self.cache_dir)
        return cfg

    def cache_for(self, bundle_path: Path, bundle_hash: str) -> Path:
        """The compiled-model cache folder of a bundle: keyed by device, OpenVINO version and bundle."""
        dev = self.device.replace(".", "_")
        return bundle_path / "engines" / f"openvino-{dev}-{self.precision}-ov{self.version}-{bundle_hash}"

    def load(self, name: str, path: Path) -> OpenVINOGraph:
        try:
            compiled = self.core.compile_model(str(path), self.device, self.config())
        except RuntimeError as e:
            raise EmoteError(f"OpenVINO cannot compile {path} for {self.device}: {str(e).splitlines()[0]}") from None
        return OpenVINOGraph(name, compiled)


def devices() -> list[tuple[str, str, list[str]]]:
    """(device, full name, supported precisions) of every OpenVINO device here."""
    ov = import_openvino()
    core = ov.Core()
    out = []
    for d in core.available_devices:
        caps = list(core.get_property(d, "OPTIMIZATION_CAPABILITIES"))
        out.append((d, core.get_property(d, "FULL_DEVICE_NAME"), caps))
    return out
