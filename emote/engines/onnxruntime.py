"""ONNX Runtime backend: CPU by default; CUDA and TensorRT execution providers where installed.

Sessions are created once per graph. ``bind`` makes an ``IOBinding`` over the
caller's buffers (numpy arrays bound by pointer on the CPU), so a bound call
allocates nothing and copies nothing: ``run_with_iobinding`` writes straight into
the output arrays. Knows ONNX Runtime and nothing of diffusion.

On the CPU provider at the full optimization level, the optimized graph of each bundle
graph is saved once (``optimized_model_filepath``) into
``<bundle>/engines/onnxruntime-<cpu>-ort<version>-<bundle hash>/`` and later sessions load
it with ONNX Runtime's own optimizations off: a second process skips them (the demo
bundle's seven sessions: 3.9 s -> 2.6 s on a loaded 2-core AVX2 Zen 3, bench/RESULTS.md).
Keyed like TensorRT plans: the optimized graph holds layouts chosen for this CPU's kernels
(NCHWc blocks), so another CPU model, ONNX Runtime version or bundle never reads it.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..bundle import GraphSpec
from ..errors import EmoteError
from .base import Backend, Buffer, Graph, cache_folder, check_feed
from .engine_key import slug
from .probe import cpu_class

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
                "for CUDA/TensorRT install the GPU extra `emote doctor` names (gpu-cu12 or gpu-cu13)"
            )
        out.append(full)
    if "CPUExecutionProvider" not in out:
        out.append("CPUExecutionProvider")  # the fallback for nodes a device provider does not take
    return out


GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
# Providers that capture one CUDA graph per session whatever the run's gpu_graph_id: ORT added
# graph ids to the CUDA EP only ("TRT ep and ROCM ep hasn't applied this feature", ORT PR 19636).
ONE_GRAPH_PER_SESSION = ("TensorrtExecutionProvider",)


def provider_options(
    providers: list[str],
    *,
    device_id: int = 0,
    fp16: bool = False,
    int8: bool = False,
    cuda_graph: bool = False,
    cache_dir: Path | None = None,
    workspace_gb: float | None = None,
    opt_level: int | None = None,
) -> list[tuple[str, dict[str, str]]]:
    """ONNX Runtime's (provider, options) list for our settings; option names as ORT's CUDA and TensorRT
    execution providers spell them, values as strings (what ORT parses).

    fp16/int8 apply to the TensorRT EP only: it may pick fp16 kernels for an fp32 graph, and
    int8 lets it take the Q/DQ nodes of an int8 graph. The CUDA EP runs the graph's own types.
    """
    out: list[tuple[str, dict[str, str]]] = []
    for p in providers:
        if p == "CUDAExecutionProvider":
            opts = {
                "device_id": str(device_id),
                # shapes are static: search the best convolution algorithm once per session
                "cudnn_conv_algo_search": "EXHAUSTIVE",
            }
            if cuda_graph:
                opts["enable_cuda_graph"] = "1"
            out.append((p, opts))
        elif p == "TensorrtExecutionProvider":
            opts = {"device_id": str(device_id), "trt_fp16_enable": str(fp16), "trt_int8_enable": str(int8)}
            if cache_dir is not None:
                opts.update(
                    trt_engine_cache_enable="True",
                    trt_engine_cache_path=str(cache_dir),
                    trt_timing_cache_enable="True",
                    trt_timing_cache_path=str(cache_dir),
                )
            if cuda_graph:
                opts["trt_cuda_graph_enable"] = "True"
            if workspace_gb is not None:
                opts["trt_max_workspace_size"] = str(int(workspace_gb * 2**30))
            if opt_level is not None:
                opts["trt_builder_optimization_level"] = str(opt_level)
            out.append((p, opts))
        else:
            out.append((p, {}))
    return out


def check_providers(spec: GraphSpec, asked: list[str], loaded: list[str], log: list[str] | tuple = ()) -> None:
    """A provider asked for that the session did not load is an error naming it and ORT's reason: ONNX
    Runtime itself only logs why (a CUDA or cuDNN library it could not open, a driver too old) and runs
    the graph on the CPU, or the TensorRT provider's nodes on the CUDA provider without our options."""
    missing = [p for p in asked if p not in loaded]
    if missing:
        raise EmoteError(
            f"ONNX Runtime did not load {missing[0]} for {spec.file} ({load_failure(missing[0], log)}); "
            f"it would run on {', '.join(loaded)}: check the CUDA/cuDNN/TensorRT libraries and the driver (`emote doctor`)"
        )


def load_failure(provider: str, log: list[str] | tuple) -> str:
    """ORT's reason for not loading ``provider``, from what its logger wrote while the session was made:
    the library error ('Failed to load library libonnxruntime_providers_cuda.so with error: libcudnn.so.9:
    cannot open shared object file') before the generic 'Failed to create CUDAExecutionProvider'."""
    short = provider.removesuffix("ExecutionProvider").lower()  # 'cuda', 'tensorrt'
    about = [line.strip() for line in log if short in line.lower() or "failed to load library" in line.lower()]
    if not about:
        return "ONNX Runtime logged no reason"
    for line in about:  # the cause: ORT's status text after 'FAIL : '
        if "FAIL : " in line:
            return line.rsplit("FAIL : ", 1)[1].strip()[:300]
    line = about[0]
    return (line.split("] ", 1)[1] if line.startswith("20") and "] " in line else line)[:300]


@contextmanager
def native_stderr(enabled: bool = True) -> Iterator[list[str]]:
    """The lines native code (ONNX Runtime's C++ logger) writes to file descriptor 2 inside the block,
    passed on to stderr afterwards unchanged, so a warning is read, not lost."""
    lines: list[str] = []
    if not enabled:
        yield lines
        return
    sys.stderr.flush()
    with tempfile.TemporaryFile() as tmp:
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode(errors="replace")
            lines.extend(text.splitlines())
            if text:
                sys.stderr.write(text)
                sys.stderr.flush()


class OrtBuffer:
    """An ``OrtValue`` on a device, with the shape and dtype the backend contract reads."""

    def __init__(self, value: ort.OrtValue, shape: tuple[int, ...], dtype: np.dtype):
        self.value, self.shape, self.dtype = value, tuple(shape), np.dtype(dtype)

    def __len__(self) -> int:
        return self.shape[0]


class OrtGraph(Graph):
    def __init__(
        self, name: str, session: ort.InferenceSession, cuda_graph: bool = False, reopen: Callable[[], ort.InferenceSession] | None = None
    ):
        self.name, self.session = name, session
        # ORT captures a CUDA graph over the addresses bound at capture, so every binding of a graph
        # (the step graph has two, ping and pong) needs a graph of its own. The CUDA EP keeps one per
        # gpu_graph_id: each binding gets an id (from 1: 0 is ORT's internal default, -1 turns capture
        # off for a run). The TensorRT EP keeps one per session and would replay the first binding's
        # graph for the second: there ``reopen`` makes a session for each binding after the first.
        self.cuda_graph, self.graph_ids, self.reopen, self.bindings = cuda_graph, 0, reopen, 0
        self.inputs = {i.name: (tuple(i.shape), np.dtype(ORT_DTYPES[i.type])) for i in session.get_inputs()}
        self.outputs = {o.name: (tuple(o.shape), np.dtype(ORT_DTYPES[o.type])) for o in session.get_outputs()}

    def bind(self, inputs: dict[str, Buffer], outputs: dict[str, Buffer]) -> Callable[[], None]:
        missing = set(self.inputs) - set(inputs)
        if missing:
            raise ValueError(f"{self.name}: no buffer for input(s) {', '.join(sorted(missing))}")
        session = self.session
        if self.cuda_graph and self.reopen is not None and self.bindings > 0:
            session = self.reopen()
        self.bindings += 1
        io = session.io_binding()
        for name, buf in inputs.items():
            if name not in self.inputs:
                continue  # extra buffers are allowed: one feed dict may serve several graphs
            check_feed(self.name, name, self.inputs[name], buf)
            if isinstance(buf, OrtBuffer):
                io.bind_ortvalue_input(name, buf.value)
                continue
            if not buf.flags.c_contiguous:
                raise ValueError(f"{self.name}: input {name!r} must be C-contiguous")
            io.bind_input(name, "cpu", 0, buf.dtype, list(buf.shape), buf.ctypes.data)
        for name, (shape, dtype) in self.outputs.items():
            if name not in outputs:
                raise ValueError(f"{self.name}: no buffer for output {name!r}")
            buf = outputs[name]
            check_feed(self.name, name, (shape, dtype), buf)
            if isinstance(buf, OrtBuffer):
                io.bind_ortvalue_output(name, buf.value)
            else:
                io.bind_output(name, "cpu", 0, buf.dtype, list(buf.shape), buf.ctypes.data)
        run_options = None
        if self.cuda_graph and self.reopen is None:
            self.graph_ids += 1
            run_options = ort.RunOptions()
            run_options.add_run_config_entry("gpu_graph_id", str(self.graph_ids))

        def call() -> None:
            session.run_with_iobinding(io, run_options)

        call.keepalive = (io, inputs, outputs, run_options)  # buffers must outlive the binding
        call.session = session
        return call


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(
        self,
        providers: list[str] | None = None,
        threads: int | None = None,
        optimization: str = "all",
        spinning: bool = False,
        *,
        device_id: int = 0,
        fp16: bool = False,
        int8: bool = False,
        cuda_graph: bool = False,
        engines: str | Path | None = None,
        workspace_gb: float | None = None,
        opt_level: int | None = None,
        buffer_device: str | None = None,
        cache_dir: str | Path | None = None,
        cache: bool = True,
    ):
        """cache_dir: where the optimized graphs are saved and read (CPU provider, optimization 'all');
        None: beside the bundle of each graph loaded (none for a graph outside a bundle; a read-only
        bundle optimizes every time and says so once); ``cache=False`` optimizes every time.

        GPU options (CUDA / TensorRT EPs): see ``provider_options``. ``cuda_graph`` needs every node on
        the GPU provider and the buffers on the device; ``engines`` holds the TensorRT EP's engine and
        timing caches (default: ``<bundle>/engines/onnxruntime-tensorrt``).

        buffer_device: where ``alloc`` puts buffers ('cuda' or 'cpu' OrtValues); default: 'cuda' when a
        GPU provider comes first (no copies between host and device inside a call), else numpy arrays.
        """
        self.providers = resolve_providers(providers)
        self.threads = threads
        self.optimization = optimization
        self.spinning = spinning
        self.sessions: list[ort.InferenceSession] = []
        gpu = self.providers[0] in GPU_PROVIDERS
        if cuda_graph and not gpu:
            raise EmoteError("ONNX Runtime CUDA graphs need the cuda or tensorrt provider first (--providers cuda or tensorrt)")
        self.device_id, self.cuda_graph = device_id, cuda_graph
        self.gpu_options = dict(fp16=fp16, int8=int8, workspace_gb=workspace_gb, opt_level=opt_level)
        if engines and "TensorrtExecutionProvider" not in self.providers:
            raise EmoteError("engines (the TensorRT provider's engine caches) needs the tensorrt provider (--providers tensorrt)")
        self.trt_cache = Path(engines) if engines else None
        self.buffer_device = buffer_device or ("cuda" if gpu else None)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.cache, self._said_uncached = cache, False
        if cuda_graph and self.buffer_device != "cuda":
            raise EmoteError("ONNX Runtime CUDA graphs need the buffers on the GPU (buffer_device='cuda')")

    # -- buffers: numpy arrays on the CPU; OrtValues where the buffers live on a device -------
    def alloc(self, shape, dtype):
        if self.buffer_device is None:
            return np.zeros(shape, dtype)
        dtype = np.dtype(dtype)
        value = ort.OrtValue.ortvalue_from_shape_and_type(list(shape), dtype.type, self.buffer_device, self.device_id)
        value.update_inplace(np.zeros(shape, dtype))  # as on the CPU: never uninitialised memory
        return OrtBuffer(value, shape, dtype)

    def from_host(self, buf, array: np.ndarray) -> None:
        if not isinstance(buf, OrtBuffer):
            return super().from_host(buf, array)
        array = np.asarray(array)
        if tuple(array.shape) != buf.shape or array.dtype != buf.dtype:
            raise ValueError(f"cannot copy {array.dtype.name}{list(array.shape)} into a {buf.dtype.name}{list(buf.shape)} buffer")
        buf.value.update_inplace(np.ascontiguousarray(array))

    def to_host(self, buf) -> np.ndarray:
        return buf.value.numpy() if isinstance(buf, OrtBuffer) else buf

    def copy(self, dst, src, start: int = 0) -> None:
        if not isinstance(dst, OrtBuffer):
            return super().copy(dst, src, start)
        # ORT's Python API has no device-to-device copy: through the host (once per clip, small)
        self.from_host(dst, np.ascontiguousarray(self.to_host(src)[start : start + len(dst)]))

    def providers_for(self, spec: GraphSpec) -> list:
        cache = self.trt_cache
        options = dict(self.gpu_options)
        if "TensorrtExecutionProvider" in self.providers:
            if cache is None:
                cache = spec.folder / "engines" / "onnxruntime-tensorrt"
                cache.mkdir(parents=True, exist_ok=True)
            # The TensorRT EP builds weakly typed networks, where Q/DQ nodes need the INT8 builder flag
            # (NVIDIA/TensorRT issue 4021): on for the int8 graphs, as the bundle records them
            options["int8"] = options["int8"] or spec.precision == "int8"
        return provider_options(self.providers, device_id=self.device_id, cuda_graph=self.cuda_graph, cache_dir=cache, **options)

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

    def optimized_dir(self, spec: GraphSpec) -> Path | None:
        """The folder of optimized graphs for ``spec``'s bundle, created; None where nothing is cached."""
        if not self.cache or self.providers != ["CPUExecutionProvider"] or self.optimization != "all":
            return None
        if self.cache_dir is None and not spec.bundle_hash:
            return None  # a graph outside a bundle (a benchmark's GEMM): nothing to key a cache by
        path = self.cache_dir or spec.folder / "engines" / f"onnxruntime-{slug(cpu_class().model)}-ort{ort.__version__}-{spec.bundle_hash}"
        return cache_folder(self, path, "ONNX Runtime's optimized-graph cache", "optimizing every time")

    def _session(self, spec: GraphSpec) -> ort.InferenceSession:
        """A CPU session from the saved optimized graph where there is one, else from the bundle's (saving it)."""
        cache = self.optimized_dir(spec)
        if cache is None:
            return ort.InferenceSession(str(spec.path), self.session_options(), providers=self.providers_for(spec), enable_fallback=0)
        saved = cache / spec.file
        if saved.is_file():
            so = self.session_options()
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # optimized once already
            try:
                return ort.InferenceSession(str(saved), so, providers=self.providers_for(spec), enable_fallback=0)
            except Exception:  # noqa: BLE001 - a damaged cache entry is rebuilt from the bundle's graph, never trusted
                saved.unlink(missing_ok=True)
        # ORT writes the optimized graph (its weights in a file beside it) while making the session: into a
        # temporary folder, then renamed into place, weights first, so a reader never sees half of it
        tmp = Path(tempfile.mkdtemp(prefix=f".{spec.path.stem}.", dir=cache))
        try:
            so = self.session_options()
            so.optimized_model_filepath = str(tmp / spec.file)
            so.add_session_config_entry("session.optimized_model_external_initializers_file_name", f"{spec.file}.data")
            so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
            session = ort.InferenceSession(str(spec.path), so, providers=self.providers_for(spec), enable_fallback=0)
            for f in sorted(tmp.iterdir(), key=lambda f: f.name == spec.file):
                os.replace(f, cache / f.name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return session

    def _open(self, spec: GraphSpec) -> ort.InferenceSession:
        gpu = any(p in GPU_PROVIDERS for p in self.providers)
        try:
            # enable_fallback=0: a provider that raises while the session is made (the TensorRT EP's
            # engine build, say) is an error here, not ORT's retry on the CPU. A provider whose library
            # does not load raises nothing: ORT logs why and leaves it out, which check_providers catches.
            with native_stderr(enabled=gpu) as log:
                session = self._session(spec)
        except Exception as e:  # onnxruntime raises its own exception types for bad files
            on = f" with {', '.join(self.providers)}" if gpu else ""
            raise EmoteError(f"ONNX Runtime cannot load {spec.path}{on}: {(str(e).splitlines() or [type(e).__name__])[0]}") from None
        check_providers(spec, self.providers, session.get_providers(), log)
        self.sessions.append(session)
        return session

    def load(self, spec: GraphSpec) -> OrtGraph:
        # a session per binding costs the graph's weights once more on the device (the step graph
        # and the decoder are bound twice); the TensorRT EP's engine cache spares the second build
        reopen = (lambda: self._open(spec)) if self.cuda_graph and self.providers[0] in ONE_GRAPH_PER_SESSION else None
        return OrtGraph(spec.name, self._open(spec), cuda_graph=self.cuda_graph, reopen=reopen)

    def close(self) -> None:
        self.sessions.clear()
