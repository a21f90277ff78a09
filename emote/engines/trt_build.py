"""TensorRT plans from a bundle's ONNX graphs: `emote build`, and the on-demand build of the backend.

Networks are strongly typed: the precision of every tensor comes from the ONNX
(fp16 graphs, int8 graphs with Q/DQ nodes), never from builder precision flags
or calibrators (TensorRT 10.1 deprecated implicit int8 calibration; TensorRT 11
removed the precision flags and makes every network strongly typed). Shapes are
static: the bundle fixes every tensor, so no optimization profile is needed.
A timing cache per engine folder (same GPU, same TensorRT) makes the second
build of a graph, and every graph that shares layer shapes, fast.

TensorRT is imported only when a build runs; the pure parts (which ONNX file a
graph builds from, the keys) work without it. Which file builds for a precision is
the precision policy's answer (``emote.precision``).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .. import precision as policy
from ..bundle import Bundle, GraphSpec
from ..errors import EmoteError
from ..folders import write_atomic
from .engine_key import (
    TIMING_CACHE,
    BuildOptions,
    EngineKey,
    check_plan,
    default_engine_dir,
    plan_paths,
    sha256_bytes,
)

TRT_MIN = (10, 3)  # JetPack 6.1/6.2 ship TensorRT 10.3 (6.0 shipped 8.6); 10.1 added the *_v2 device-memory calls used here
INSTALL_HINT = (
    "install TensorRT >= 10.3 for your CUDA: pip install 'emote-edge[gpu-cu12]' or '[gpu-cu13]' on a workstation "
    "(`emote doctor` names the one for the driver); "
    "on Jetson it comes with JetPack 6.1 or later (apt install python3-libnvinfer, then a venv with --system-site-packages)"
)


def import_tensorrt():
    """The tensorrt module, or one clear error saying what to install."""
    try:
        import tensorrt as trt
    except ImportError:
        raise EmoteError(f"TensorRT is not installed: {INSTALL_HINT}") from None
    if not hasattr(trt, "Builder"):
        # PyPI's bare 'tensorrt' can resolve to a stub that only points elsewhere
        raise EmoteError(f"the installed 'tensorrt' package is a stub without TensorRT's libraries: {INSTALL_HINT}")
    if trt_version_tuple(trt.__version__) < TRT_MIN:
        raise EmoteError(f"TensorRT {trt.__version__} is too old: this needs >= {'.'.join(map(str, TRT_MIN))} ({INSTALL_HINT})")
    return trt


def trt_version_tuple(version: str) -> tuple[int, ...]:
    out = []
    for part in version.split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


def make_logger(trt, verbose: bool = False):
    """A TensorRT logger that keeps the errors it saw, so a failure can quote TensorRT's own words."""

    class Log(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg):
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                self.errors.append(str(msg))
                print(f"TensorRT: {msg}", file=sys.stderr)
            elif verbose:
                print(f"TensorRT: {msg}", file=sys.stderr)

        def last(self) -> str:
            return self.errors[-1].splitlines()[0] if self.errors else "see TensorRT's messages above"

    return Log()


# -- which ONNX file each plan comes from ---------------------------------------------------
def plan_sources(bundle: Bundle, precision: str) -> list[GraphSpec]:
    """The graph each plan builds from at ``precision`` (the precision policy: its variant, else fp32)."""
    return list(policy.graphs_for(bundle, "tensorrt", precision).values())


def expected_key(spec: GraphSpec, gpu: str, compute_capability: str, trt_version: str, build: BuildOptions | None = None) -> EngineKey:
    return EngineKey(
        graph=spec.key,
        onnx=spec.file,
        onnx_sha256=spec.sha256,
        bundle_hash=spec.bundle_hash,
        gpu=gpu,
        compute_capability=compute_capability,
        tensorrt=trt_version,
        build=build or BuildOptions(),
    )


def declared_io(spec: GraphSpec) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """name -> (shape, dtype) of every input and output the bundle declares for a graph."""
    return {name: (shape, np.dtype(dtype)) for name, (shape, dtype) in spec.tensors().items()}


# -- building -------------------------------------------------------------------------------
@dataclass(frozen=True)
class BuildResult:
    graph: str
    plan: Path
    status: str  # 'built' or 'up to date'
    seconds: float
    reason: str  # why it was (re)built
    plan_bytes: int

    def line(self) -> str:
        size = f"{self.plan_bytes / 2**20:.1f} MB"
        if self.status == "built":
            return f"{self.graph:<24} built in {self.seconds:.1f} s ({size}; {self.reason})"
        return f"{self.graph:<24} up to date ({size})"


def build_plan(trt, onnx_path: Path, plan_path: Path, key: EngineKey, timing_cache: Path, verbose: bool = False) -> bytes:
    """Parse ``onnx_path`` into a strongly typed network, build it, write plan + key atomically."""
    log = make_logger(trt, verbose)
    builder = trt.Builder(log)
    flags = 0
    if trt_version_tuple(trt.__version__) < (11,):
        # TensorRT 10: strong typing is opt-in; 11 always types strongly and deprecates the flag
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    if network is None:
        raise EmoteError(f"TensorRT could not create a network for {key.graph}: {log.last()}")
    parser = trt.OnnxParser(network, log)
    # parse_from_file, not parse(bytes): the parser then finds external weight files beside the ONNX
    if not parser.parse_from_file(str(onnx_path)) or parser.num_errors:
        first = parser.get_error(0).desc() if parser.num_errors else log.last()
        raise EmoteError(f"TensorRT cannot parse {onnx_path}: {first.splitlines()[0]}")
    config = builder.create_builder_config()
    config.builder_optimization_level = key.build.opt_level
    if key.build.workspace_gb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(key.build.workspace_gb * 2**30))
    cache_bytes = timing_cache.read_bytes() if timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    # setTimingCache returns false for a cache of another TensorRT/GPU (C++ API: bool; compared with False)
    if cache is None or config.set_timing_cache(cache, False) is False:
        # a cache from another TensorRT or GPU: start a fresh one rather than refuse to build
        print(f"emote: note: ignoring the timing cache {timing_cache} (it does not match this GPU/TensorRT)", file=sys.stderr)
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EmoteError(f"TensorRT could not build {key.graph} from {onnx_path.name}: {log.last()}")
    data = bytes(memoryview(plan))
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(plan_path, data)
    _, key_path = plan_paths(plan_path.parent, key.graph)
    write_atomic(key_path, replace(key, plan_sha256=sha256_bytes(data)).to_json().encode())
    write_atomic(timing_cache, bytes(memoryview(config.get_timing_cache().serialize())))
    return data


def ensure_plan(
    trt,
    spec: GraphSpec,
    engine_dir: Path,
    expected: EngineKey,
    *,
    build: bool,
    check_build: bool = False,
    force: bool = False,
    verbose: bool = False,
) -> tuple[bytes, BuildResult]:
    """The plan of ``spec``: loaded when its key matches, (re)built when it does not and ``build``."""
    graph_key = spec.key
    plan_path, key_path = plan_paths(engine_dir, graph_key)
    data = plan_path.read_bytes() if plan_path.is_file() else None
    if force:
        reason = "--force"
    elif data is None:
        reason = "no plan yet"
    else:
        reason = check_plan(key_path, data, expected, check_build=check_build)
    if reason is None:
        return data, BuildResult(graph_key, plan_path, "up to date", 0.0, "", len(data))
    if not build:
        raise EmoteError(f"no usable TensorRT plan for {graph_key} in {engine_dir} ({reason}): run `emote build {spec.folder}`")
    onnx_path = spec.path
    print(
        f"emote: building the TensorRT plan of {graph_key} ({reason}); this runs once per GPU, TensorRT and bundle",
        file=sys.stderr,
        flush=True,
    )
    t0 = time.perf_counter()
    data = build_plan(trt, onnx_path, plan_path, expected, engine_dir / TIMING_CACHE, verbose)
    return data, BuildResult(graph_key, plan_path, "built", time.perf_counter() - t0, reason, len(data))


def build_engines(
    bundle_path,
    precision: str = "fp32",
    engines: str | Path | None = None,
    *,
    opt_level: int = 3,
    workspace_gb: float | None = None,
    force: bool = False,
    device: int = 0,
    progress=print,
) -> tuple[Path, list[BuildResult]]:
    """`emote build`: a plan for every graph of the bundle at ``precision`` (fp32 where it has no variant)."""
    from .cuda import device_info

    bundle = Bundle.open(bundle_path)
    sources = plan_sources(bundle, precision)  # checks the precision before any GPU work
    options = BuildOptions(opt_level, workspace_gb)
    trt = import_tensorrt()
    from . import cuda

    gpu = device_info(device)
    cuda.set_device(device)  # TensorRT builds on the current device; the key records that device's name
    engine_dir = (
        Path(engines) if engines else default_engine_dir(bundle.path, gpu.name, gpu.compute_capability, trt.__version__, bundle.hash)
    )
    results = []
    for spec in sources:
        expected = expected_key(spec, gpu.name, gpu.compute_capability, trt.__version__, options)
        _, result = ensure_plan(trt, spec, engine_dir, expected, build=True, check_build=True, force=force)
        progress(result.line())
        results.append(result)
    (engine_dir / "build.json").write_text(
        json.dumps(
            {
                "bundle": str(bundle.path),
                "bundle_hash": bundle.hash,
                "precision": precision,
                "gpu": gpu.name,
                "compute_capability": gpu.compute_capability,
                "tensorrt": trt.__version__,
                "graphs": {r.graph: r.plan.name for r in results},
            },
            indent=1,
        )
    )
    return engine_dir, results
