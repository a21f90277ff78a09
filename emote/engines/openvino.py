"""OpenVINO backend: CPUs (f32, bf16 where the CPU has it, int8 from Q/DQ graphs), Intel GPUs and NPUs.

Each graph is compiled once per backend; its infer request is bound to the caller's
buffers once (``ov.Tensor`` over the numpy arrays, shared memory: no copies in or
out) and reused for every call. ``precision`` is what the pipeline asked for: fp32,
bf16 and fp16 run the bundle's fp32 graphs with that inference-precision hint (the
device converts), int8 runs the Q/DQ graphs (float parts at ``inference_precision``,
f32 unless set). OpenVINO's own CPU default is bf16 where the CPU has it, so the
hint is always set explicitly.

Compiled models are cached on disk beside the bundle a graph comes from, in
``<bundle>/engines/openvino-<device>-ov<version>-<bundle hash>/`` (keyed like
TensorRT plans: a cache of another device, version or bundle is never read;
inside it OpenVINO keys each blob by model and compile options), so a second start
skips compilation. Imported only when selected: the package works without
OpenVINO. Knows OpenVINO and nothing of diffusion.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection
from pathlib import Path

import numpy as np

from ..bundle import GraphSpec
from ..errors import EmoteError
from .base import Backend, Buffer, Graph, cache_folder, check_feed
from .probe import VNNI_FLAGS, cpu_flags

PRECISIONS = ("fp32", "bf16", "fp16", "int8")
HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16", "int8": "f32"}  # int8: the float parts stay f32
CAPABILITY = {"fp32": "FP32", "bf16": "BF16", "fp16": "FP16", "int8": "INT8"}  # OPTIMIZATION_CAPABILITIES names


def import_openvino():
    try:
        import openvino as ov
    except ImportError:
        raise EmoteError("OpenVINO is not installed: pip install 'emote-edge[openvino]'") from None
    return ov


def ov_dtype(element_type) -> np.dtype:
    return np.dtype(element_type.to_dtype())


class OpenVINOGraph(Graph):
    """A compiled model whose ports are named as in the ONNX file.

    Names come from the model as read, in port order: after compilation a port may
    carry several tensor names (OpenVINO merges the names of tensors it fuses away, e.g.
    an input feeding a Cast), and ``get_any_name`` returns the first in sort order, which
    need not be the graph's. Ports are bound by index.
    """

    def __init__(self, name: str, compiled, input_names: list[str], output_names: list[str]):
        self.name, self.compiled = name, compiled
        self._in, self._out = input_names, output_names
        for names, ports in ((input_names, compiled.inputs), (output_names, compiled.outputs)):
            for n, p in zip(names, ports, strict=True):
                if n not in p.get_names():
                    raise EmoteError(f"OpenVINO: {name} port {p.get_index()} is {sorted(p.get_names())}, expected {n!r}")
        self.inputs = {n: (tuple(p.get_shape()), ov_dtype(p.get_element_type())) for n, p in zip(input_names, compiled.inputs)}
        self.outputs = {n: (tuple(p.get_shape()), ov_dtype(p.get_element_type())) for n, p in zip(output_names, compiled.outputs)}

    def bind(self, inputs: dict[str, Buffer], outputs: dict[str, Buffer]) -> Callable[[], None]:
        ov = import_openvino()
        req = self.compiled.create_infer_request()
        for i, name in enumerate(self._in):
            if name not in inputs:
                raise ValueError(f"{self.name}: no buffer for input {name!r}")
            check_feed(self.name, name, self.inputs[name], inputs[name])
            req.set_input_tensor(i, ov.Tensor(inputs[name], shared_memory=True))
        for i, name in enumerate(self._out):
            if name not in outputs:
                raise ValueError(f"{self.name}: no buffer for output {name!r}")
            check_feed(self.name, name, self.outputs[name], outputs[name])
            req.set_output_tensor(i, ov.Tensor(outputs[name], shared_memory=True))

        def call() -> None:
            req.infer()

        call.keepalive = (req, inputs, outputs)  # the tensors share the arrays' memory
        return call


class OpenVINOBackend(Backend):
    """``OpenVINOBackend(device="CPU", precision="bf16", threads=2, streams=1)``.

    cache_dir: where compiled models are cached; None: beside the bundle of each graph
    loaded (no cache for a graph outside a bundle; a read-only bundle compiles every time
    and says so once); ``cache=False`` compiles every time.
    """

    name = "openvino"

    def __init__(
        self,
        device: str = "CPU",
        precision: str = "fp32",
        threads: int | None = None,
        streams: int = 1,
        cache_dir: str | Path | None = None,
        cache: bool = True,
        inference_precision: str | None = None,
        allow_inexact_int8: bool = False,
    ):
        ov = import_openvino()
        if precision not in PRECISIONS:
            raise EmoteError(f"OpenVINO precision {precision!r}: one of {', '.join(PRECISIONS)}")
        if inference_precision is not None and inference_precision not in ("fp32", "bf16", "fp16"):
            raise EmoteError(f"OpenVINO inference precision {inference_precision!r}: one of fp32, bf16, fp16")
        if threads is not None and threads < 1 or streams < 1:
            raise EmoteError(f"OpenVINO threads {threads} / streams {streams}: give positive numbers")
        self.core = ov.Core()
        available = self.core.available_devices
        if device.split(".")[0] not in {d.split(".")[0] for d in available}:
            raise EmoteError(f"OpenVINO device {device!r} not found (available: {', '.join(available)})")
        caps = capabilities(self.core, device)
        if precision == "int8" and device.startswith("CPU") and not allow_inexact_int8 and not int8_exact(cpu_flags()):
            raise EmoteError(INEXACT_INT8.format(cpu=self.core.get_property("CPU", "FULL_DEVICE_NAME")))
        for p in {precision, inference_precision or precision}:
            if CAPABILITY[p] not in caps:
                raise EmoteError(
                    f"OpenVINO {device} has no {p} ({self.core.get_property(device, 'FULL_DEVICE_NAME')}: "
                    f"{', '.join(c for c in caps if c in CAPABILITY.values())})"
                )
        self.device, self.precision = device, precision
        self.hint = HINTS[inference_precision or precision]
        self.threads, self.streams = threads or len(os.sched_getaffinity(0)), streams
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.cache, self._said_uncached = cache, False
        self.version = ov.__version__.split("-")[0]

    def config(self, cache_dir: Path | None) -> dict[str, object]:
        cfg: dict[str, object] = {
            "INFERENCE_PRECISION_HINT": self.hint,
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": self.streams,
        }
        if self.device.startswith("CPU"):
            cfg["INFERENCE_NUM_THREADS"] = self.threads
        if cache_dir is not None:
            cfg["CACHE_DIR"] = str(cache_dir)
        return cfg

    def cache_for(self, spec: GraphSpec) -> Path | None:
        """The compiled-model cache for ``spec``'s bundle, created; None without caching or outside a bundle."""
        if not self.cache or (self.cache_dir is None and not spec.bundle_hash):
            return None  # a graph outside a bundle (a benchmark's GEMM): nothing to key a cache by
        dev = self.device.replace(".", "_")
        path = self.cache_dir or spec.folder / "engines" / f"openvino-{dev}-ov{self.version}-{spec.bundle_hash}"
        return cache_folder(self, path, "OpenVINO's compiled-model cache", "compiling every time")

    def load(self, spec: GraphSpec) -> OpenVINOGraph:
        cache = self.cache_for(spec)
        try:
            model = self.core.read_model(str(spec.path))
            names_in = [p.get_any_name() for p in model.inputs]
            names_out = [p.get_any_name() for p in model.outputs]
            compiled = self.core.compile_model(model, self.device, self.config(cache))
        except RuntimeError as e:
            raise EmoteError(f"OpenVINO cannot compile {spec.path} for {self.device}: {str(e).splitlines()[0]}") from None
        return OpenVINOGraph(spec.name, compiled, names_in, names_out)


INEXACT_INT8 = (
    "OpenVINO int8 is inexact on {cpu} (no VNNI: its int8 kernels saturate 16-bit sums, 10-15 dB lost "
    "on the denoise step): use --backend onnxruntime --precision int8 "
    "(or OpenVINOBackend(allow_inexact_int8=True) to run it anyway)"
)


def int8_exact(flags: Collection[str]) -> bool:
    """Whether OpenVINO's CPU int8 computes the Q/DQ graphs exactly on a CPU with these /proc/cpuinfo flags.

    Not on x86 without VNNI: there a u8 x s8 product is ``vpmaddubsw``, which saturates the sum of
    each pair of products to int16 (2 x 255 x 127 = 64770 > 32767), and OpenVINO shifts the signed
    activations to u8 and runs the graph's full 8-bit weights through it (jit_avx2_I8, jit_gemm_i8):
    on the tiny int8 bundle x0 falls to 20.8 dB against ONNX Runtime's 30.6 dB (bench/RESULTS.md,
    "OpenVINO int8 on AVX2 without VNNI"). CPUs without x86 flags (ARM, no /proc/cpuinfo): not judged.
    Where this is False, ``OpenVINOBackend(precision="int8")`` refuses unless ``allow_inexact_int8=True``.
    """
    return "sse4_1" not in flags or bool(VNNI_FLAGS & set(flags))


def capabilities(core, device: str) -> list[str]:
    """What the device reports it computes (OPTIMIZATION_CAPABILITIES); an error names the device."""
    try:
        return [str(c) for c in core.get_property(device, "OPTIMIZATION_CAPABILITIES")]
    except RuntimeError as e:
        raise EmoteError(f"OpenVINO cannot tell what {device} computes: {str(e).splitlines()[0]}") from None


def devices() -> list[tuple[str, str, list[str]]]:
    """(device, full name, supported precisions of this project) of every OpenVINO device here."""
    ov = import_openvino()
    core = ov.Core()
    out = []
    for d in core.available_devices:
        caps = capabilities(core, d)
        out.append((d, core.get_property(d, "FULL_DEVICE_NAME"), [p for p in PRECISIONS if CAPABILITY[p] in caps]))
    return out
