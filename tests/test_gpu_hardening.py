"""The GPU path's failure modes, checked without a GPU: fakes stand in for ONNX Runtime's session,
cuda-python's runtime and TensorRT where the logic around them is what is tested.

A provider that does not load is an error with ORT's reason; each GPU extra pins one CUDA major;
the GPU tests' gate counts skips; `emote build --device N` builds on N; a refused capture is said
once with its reason; zeroing a buffer is ordered before a write on the other stream.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from emote.bundle import GraphSpec
from emote.engines import cuda
from emote.engines.probe import GPU_EXTRAS, CudaDriver, gpu_extra
from emote.errors import EmoteError

ROOT = Path(__file__).resolve().parents[1]
CUDA_LOG = (
    "2026-01-01 12:00:00.000 [E:onnxruntime:Default, provider_bridge_ort.cc:1862 TryGetProviderInfo_CUDA] "
    "/src/provider_bridge_ort.cc:1539 onnxruntime::Provider& onnxruntime::ProviderLibrary::Get() [ONNXRuntimeError] : 1 : "
    "FAIL : Failed to load library libonnxruntime_providers_cuda.so with error: libcudnn_adv.so.9: cannot open shared object file\n"
    "2026-01-01 12:00:00.001 [W:onnxruntime:Default, onnxruntime_pybind_state.cc:965 CreateExecutionProviderInstance] "
    "Failed to create CUDAExecutionProvider. Require cuDNN 9.* and CUDA 12.*\n"
)


# -- ONNX Runtime: a provider asked for that does not load ---------------------------------------
class FakeSession:
    """An InferenceSession whose providers differ from those asked, logging as ORT's C++ logger does."""

    made: list[dict] = []
    loads = ("CPUExecutionProvider",)
    log = CUDA_LOG

    def __init__(self, path, options, providers, **kwargs):
        FakeSession.made.append({"providers": [p for p, _ in providers], **kwargs})
        os.write(2, self.log.encode())  # file descriptor 2, as native code writes

    def get_providers(self):
        return list(self.loads)


@pytest.fixture
def fake_ort(monkeypatch):
    from emote.engines import onnxruntime as ortb

    available = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ortb.ort, "get_available_providers", lambda: available)
    monkeypatch.setattr(ortb.ort, "InferenceSession", FakeSession)
    FakeSession.made = []
    return ortb


def test_a_gpu_provider_that_does_not_load_is_an_error_naming_it_and_orts_reason(fake_ort, tmp_path, capfd):
    be = fake_ort.OnnxRuntimeBackend(providers=["cuda"])
    with pytest.raises(EmoteError) as e:
        be._open(GraphSpec.standalone(tmp_path / "g.onnx"))
    msg = str(e.value)
    assert "\n" not in msg and "did not load CUDAExecutionProvider for g.onnx" in msg
    assert "libcudnn_adv.so.9: cannot open shared object file" in msg and "it would run on CPUExecutionProvider" in msg
    assert FakeSession.made[0]["enable_fallback"] == 0  # ORT's own retry on the CPU is off
    assert "Failed to create CUDAExecutionProvider" in capfd.readouterr().err  # ORT's log still reaches the user


def test_the_tensorrt_provider_falling_back_to_cuda_is_an_error_too(fake_ort, tmp_path, monkeypatch):
    monkeypatch.setattr(FakeSession, "loads", ("CUDAExecutionProvider", "CPUExecutionProvider"))
    monkeypatch.setattr(FakeSession, "log", "")
    be = fake_ort.OnnxRuntimeBackend(providers=["tensorrt", "cuda"], engines=tmp_path)
    with pytest.raises(EmoteError, match=r"did not load TensorrtExecutionProvider .*\(ONNX Runtime logged no reason\)"):
        be._open(GraphSpec.standalone(tmp_path / "g.onnx"))
    monkeypatch.setattr(FakeSession, "loads", ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"))
    assert be._open(GraphSpec.standalone(tmp_path / "g.onnx")).get_providers()[0] == "TensorrtExecutionProvider"


def test_a_provider_that_raises_while_the_session_is_made_is_an_error_not_a_cpu_retry(fake_ort, tmp_path, monkeypatch):
    def raising(self, *a, **k):
        raise RuntimeError("TensorRT EP failed to create engine from network\nmore")

    monkeypatch.setattr(FakeSession, "__init__", raising)
    be = fake_ort.OnnxRuntimeBackend(providers=["tensorrt"], engines=tmp_path)
    with pytest.raises(EmoteError, match=r"with TensorrtExecutionProvider, CPUExecutionProvider: TensorRT EP failed to create engine"):
        be._open(GraphSpec.standalone(tmp_path / "g.onnx"))


def test_orts_reason_is_the_library_error_where_it_logged_one():
    from emote.engines.onnxruntime import load_failure

    assert load_failure("CUDAExecutionProvider", CUDA_LOG.splitlines()).startswith("Failed to load library libonnxruntime_providers_cuda")
    generic = CUDA_LOG.splitlines()[1:]
    assert load_failure("CUDAExecutionProvider", generic).startswith("Failed to create CUDAExecutionProvider")
    assert load_failure("TensorrtExecutionProvider", ["unrelated"]) == "ONNX Runtime logged no reason"


# -- the GPU extras: each one CUDA major -------------------------------------------------------
# onnxruntime-gpu's CUDA major per release, from its [cuda] extra on PyPI: 1.26.0 requires
# nvidia-cuda-runtime-cu12, 1.27.0 nvidia-cuda-runtime-cu13 (CUDA 12 is the default build since 1.19)
ORT_GPU = {12: ("1.20.0", "1.26.0"), 13: ("1.27.0", "1.31.1")}


def test_each_gpu_extra_pins_one_cuda_major():
    tomllib = pytest.importorskip("tomllib")
    from packaging.requirements import Requirement

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    gpu = {name: [Requirement(r) for r in reqs] for name, reqs in extras.items() if name.startswith("gpu")}
    assert set(gpu) == set(GPU_EXTRAS.values())  # doctor's names are the extras pyproject has
    for major, name in GPU_EXTRAS.items():
        reqs = {r.name: r.specifier for r in gpu[name]}
        trt = [n for n in reqs if n.startswith("tensorrt")]
        assert trt == [f"tensorrt-cu{major}"], f"{name}: TensorRT for CUDA {major} by name, not the bare metapackage"
        cp = reqs["cuda-python"]
        assert cp.contains(f"{major}.9.0") and not cp.contains(f"{major + 1}.0.0") and not cp.contains(f"{major - 1}.9.0"), name
        ort = reqs["onnxruntime-gpu"]
        for other, (first, last) in ORT_GPU.items():
            assert (ort.contains(first) or ort.contains(last)) == (other == major), f"{name}: onnxruntime-gpu of CUDA {other}"


def test_the_extra_named_for_a_driver_is_the_newest_it_runs():
    assert gpu_extra(CudaDriver(13000, 1, ""))[0] == "gpu-cu13" and "gpu-cu12 also runs" in gpu_extra(CudaDriver(13000, 1, ""))[1]
    assert gpu_extra(CudaDriver(12020, 1, ""))[0] == "gpu-cu12"  # r535: CUDA 12.2
    none, line = gpu_extra(CudaDriver(11080, 1, ""))
    assert none is None and "supports CUDA 11.8" in line and "r525" in line
    assert gpu_extra(CudaDriver(0, 0, "no CUDA driver: libcuda not found")) == (None, "none fits: no CUDA driver: libcuda not found")


def test_gpu_check_without_a_gpu_ends_in_one_line(tmp_path):
    """Here (no CUDA driver) or anywhere without a device: one line, before anything is installed."""
    if subprocess.run([sys.executable, str(ROOT / "emote/engines/probe.py")], capture_output=True, text=True).stdout.split("\t")[0] != "0":
        pytest.skip("this machine has a GPU")
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable}
    out = subprocess.run(["bash", str(ROOT / "bench/gpu_check.sh")], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0 and out.stderr == ""
    assert out.stdout.count("\n") == 1 and out.stdout.startswith("gpu-check: no NVIDIA GPU here")
    assert not (tmp_path / "out").exists()
    strict = subprocess.run(["bash", str(ROOT / "bench/gpu_check.sh")], capture_output=True, text=True, env={**env, "REQUIRE_GPU": "1"})
    assert strict.returncode == 2


# -- the GPU tests' gate: skips counted -----------------------------------------------------------
def junit(tmp_path, cases: str) -> Path:
    path = tmp_path / "result.xml"
    path.write_text(f'<?xml version="1.0"?><testsuites><testsuite name="pytest">{cases}</testsuite></testsuites>')
    return path


SKIP = '<testcase name="{n}"><skipped type="pytest.skip" message="needs an NVIDIA GPU with TensorRT">skip</skipped></testcase>'


@pytest.mark.parametrize(
    "cases, rc, says",
    [
        (SKIP.format(n="a") + SKIP.format(n="b"), 1, "all 2 were skipped, so nothing on the GPU was proven"),
        ("", 1, "none was collected"),
        ('<testcase name="a"/>' + SKIP.format(n="b"), 0, "GPU tests: 1 passed, 0 failed, 0 error, 1 skipped"),
        ('<testcase name="a"/><testcase name="b"><failure message="x">x</failure></testcase>', 1, "FAILED"),
    ],
)
def test_gpu_tests_gate_fails_when_every_gpu_test_skipped(tmp_path, cases, rc, says):
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench/gpu_tests_gate.py"), str(junit(tmp_path, cases))], capture_output=True, text=True
    )
    assert out.returncode == rc and says in out.stdout
    if "skipped>" in cases or "<skipped" in cases:
        assert "skipped" in out.stdout and "needs an NVIDIA GPU with TensorRT" in out.stdout  # the reason, once per distinct reason


# -- a fake cuda-python runtime: what the CUDA layer asks of it ------------------------------------
@pytest.fixture
def fake_cudart(monkeypatch):
    calls = []
    rt = SimpleNamespace(
        cudaError_t=SimpleNamespace(cudaSuccess=0),
        cudaSetDevice=lambda i: calls.append(("cudaSetDevice", i, threading.get_ident())) or (0,),
    )
    monkeypatch.setattr(cuda, "_RT", rt)
    monkeypatch.setattr(cuda, "_THREAD", threading.local())
    return calls


def test_the_device_is_made_current_once_per_thread(fake_cudart):
    cuda.set_device(1)
    cuda.set_device(1)
    worker = threading.Thread(target=cuda.set_device, args=(1,))
    worker.start()
    worker.join()
    cuda.set_device(0)
    assert [(c[0], c[1]) for c in fake_cudart] == [("cudaSetDevice", 1)] * 2 + [("cudaSetDevice", 0)]
    assert fake_cudart[0][2] != fake_cudart[1][2]  # the second thread made its own call


def test_emote_build_device_n_builds_on_device_n(tmp_path, fake_cudart, monkeypatch, capsys):
    """From the command line to TensorRT: device N's properties asked, N made current before every
    build, the plans keyed by N's name. The bundle, TensorRT and the build itself are fakes."""
    from emote import bundle as bundle_module
    from emote.cli import main
    from emote.engines import trt_build
    from emote.runtime import pipeline

    fake = SimpleNamespace(path=tmp_path, hash="abc123")
    monkeypatch.setattr(bundle_module.Bundle, "open", classmethod(lambda cls, path, check_hashes=True: fake))
    specs = [SimpleNamespace(key=k, file=f"{k}.onnx", sha256="0" * 64, bundle_hash="abc123") for k in ("denoise_step", "vae_decoder")]
    monkeypatch.setattr(trt_build, "plan_sources", lambda bundle, precision: specs)
    monkeypatch.setattr(pipeline, "buffer_bytes", lambda *a: 0)
    monkeypatch.setattr(trt_build, "import_tensorrt", lambda: SimpleNamespace(__version__="10.3.0"))
    asked, builds = [], []
    monkeypatch.setattr(cuda, "device_info", lambda i: asked.append(i) or cuda.DeviceInfo(i, f"NVIDIA GPU {i}", 8, 9, 2**34, False))

    def ensure_plan(trt, spec, engine_dir, expected, **kw):
        builds.append((getattr(cuda._THREAD, "device", None), expected.gpu))
        return b"plan", trt_build.BuildResult(spec.key, engine_dir / f"{spec.key}.plan", "built", 0.0, "no plan yet", 4)

    monkeypatch.setattr(trt_build, "ensure_plan", ensure_plan)
    (tmp_path / "engines").mkdir()
    assert main(["build", str(tmp_path), "--device", "1", "--engines", str(tmp_path / "engines")]) == 0
    assert asked == [1] and [(c[0], c[1]) for c in fake_cudart] == [("cudaSetDevice", 1)]
    assert builds == [(1, "NVIDIA GPU 1")] * 2  # every plan built with device 1 current, keyed by its name
    assert "2 built" in capsys.readouterr().out


# -- TensorRT's loop and buffers over fake streams -------------------------------------------------
class Recorder:
    def __init__(self, log, label):
        self.log, self.label = log, label

    def memset(self, ptr, size, what):
        self.log.append(("memset", self.label))

    def copy(self, dst, src, size, kind, what):
        self.log.append((f"copy {kind}", self.label))

    def wait(self, event):
        self.log.append(("wait", self.label, event.label))

    def record(self, stream):
        self.log.append(("record", self.label, stream.label))

    def synchronize(self):
        self.log.append(("sync", self.label))


def fake_backend(monkeypatch, log):
    from emote.engines.tensorrt import TensorRTBackend

    be = object.__new__(TensorRTBackend)
    buffers = iter(range(1, 1000))

    def allocate(shape, dtype, label=""):
        return cuda.DeviceBuffer(next(buffers) * 4096, shape, dtype, label=label)

    be.cuda = SimpleNamespace(
        DeviceBuffer=SimpleNamespace(allocate=allocate),
        PinnedBuffer=lambda shape, dtype, label="": SimpleNamespace(array=np.zeros(shape, dtype), ptr=1),
        Event=lambda label: Recorder(log, label),
        set_device=lambda i: None,
    )
    be.device_id, be.buffers, be.generation = 0, [], 0
    be.main, be.side = Recorder(log, "main"), Recorder(log, "side")
    be.current = be.main
    be.fork, be.joined, be.zeroed = Recorder(log, "fork to side"), Recorder(log, "side done"), Recorder(log, "buffers zeroed")
    return be


def test_zeroing_on_the_main_stream_comes_before_a_write_on_the_side_stream(monkeypatch):
    log = []
    be = fake_backend(monkeypatch, log)
    buf = be.alloc((2, 3), np.float32)
    with be.side_stream():
        be.from_host(buf, np.ones((2, 3), np.float32))
    memset = log.index(("memset", "main"))
    zeroed = log.index(("record", "buffers zeroed", "main"))
    waits = log.index(("wait", "side", "buffers zeroed"))
    write = log.index(("copy h2d", "side"))
    assert memset < zeroed < waits < write


def test_a_refused_capture_is_said_once_with_its_reason(monkeypatch, capsys):
    from emote.engines import tensorrt
    from emote.engines.steploop import Step, StepPlan, loop_state

    log = []
    be = fake_backend(monkeypatch, log)
    row = be.alloc((1, 4), np.float32)
    ran = []
    plan = StepPlan(
        (Step(lambda: ran.append(0), "denoise_step", 0, 1), Step(lambda: ran.append(1), "denoise_step", 1, 0)), row, np.zeros((2, 4))
    )

    class Uncapturable:
        def __init__(self, stream, label):
            pass

        def begin(self):
            pass

        def end(self):
            raise cuda.CudaError(
                "CUDA cudaStreamEndCapture failed: cudaErrorStreamCaptureInvalidated (operation failed due to a previous error during capture)"
            )

        abort = close = begin

    monkeypatch.setattr(cuda, "CapturedGraph", Uncapturable)
    loop = tensorrt.CapturedLoop(be, plan, capture=True)
    assert loop.captured and loop_state(loop) == "cuda graph"
    for _ in range(3):
        loop()
    err = capsys.readouterr().err
    assert err.count("emote: note: the denoising loop runs uncaptured") == 1 and "cudaErrorStreamCaptureInvalidated" in err
    assert not loop.captured and loop_state(loop).startswith("uncaptured: stream capture failed (CUDA cudaStreamEndCapture failed")
    assert ran == [0, 1] * 4  # clip 1: eager + the failed capture's enqueue; clips 2 and 3 uncaptured

    refused = tensorrt.CapturedLoop(be, plan, capture=True)
    refused.refuse("an observe callback reads every call's inputs on the host, which stream capture forbids")
    refused.refuse("said once")
    assert capsys.readouterr().err.count("emote: note:") == 1 and not refused.captured
    off = tensorrt.CapturedLoop(be, plan, capture=False)
    off.refuse("nothing to say: capture is off")
    assert capsys.readouterr().err == "" and loop_state(off) == "uncaptured (cuda_graph off)"


@pytest.mark.skipif(cuda.installed(), reason="cuda-python is installed here")
def test_gpu_smoke_without_cuda_python_says_so_in_one_line():
    out = subprocess.run([sys.executable, str(ROOT / "bench/gpu_smoke.py")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and out.stderr == "" and out.stdout.startswith("gpu_smoke: cuda-python is not installed")
    assert out.stdout.count("\n") == 1
