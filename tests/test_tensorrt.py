"""The GPU path: what can be checked without a GPU here, and the GPU checks (marked, skipped without one).

Without a GPU: engine keys and their mismatch handling, plan sources and buffer sizes
from the manifest, the engine-vs-manifest tensor check, the step-loop plan over the
pipeline's real bindings, the ONNX Runtime provider options and device-buffer path,
and the one-line errors of TensorRT commands where TensorRT or a GPU is missing.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from emote.bundle import Bundle, GraphSpec
from emote.cli import main
from emote.engines.cuda import installed as cuda_python_installed
from emote.engines.engine_key import (
    BuildOptions,
    EngineKey,
    check_plan,
    default_engine_dir,
    engine_dir_name,
    plan_paths,
    read_key,
    sha256_bytes,
)
from emote.engines.probe import has_module
from emote.engines.steploop import Step, StepPlan
from emote.engines.tensorrt import check_engine_io
from emote.engines.trt_build import declared_io, ensure_plan, expected_key, plan_sources
from emote.errors import EmoteError
from emote.runtime.face import Portrait

NO_TRT = not has_module("tensorrt")


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    return Bundle.open(tiny_bundle)


def key_for(bundle, graph="denoise_step", **over):
    name, _, precision = graph.partition(".")
    k = expected_key(bundle.graph(name, precision or "fp32"), "NVIDIA Jetson Orin Nano", "8.7", "10.3.0")
    return EngineKey(**{**k.__dict__, **over})


# -- import hygiene -------------------------------------------------------------------------
def test_gpu_modules_import_without_tensorrt_or_cuda():
    # cuda-bindings' .pth file imports the bare 'cuda' namespace at interpreter start: compare with that
    gpu = "sorted(m for m in sys.modules if m.split('.')[0] in ('tensorrt', 'cuda', 'pycuda', 'polygraphy'))"
    before = subprocess.run([sys.executable, "-c", f"import sys; print({gpu})"], capture_output=True, text=True, check=True)
    code = (
        "import sys, emote, emote.runtime, emote.cli, emote.engines.tensorrt, emote.engines.trt_build,"
        f" emote.engines.cuda, emote.engines.engine_key, emote.engines.steploop, emote.engines.gpu_report; print({gpu})"
    )
    after = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert after.stdout == before.stdout
    assert "tensorrt" not in after.stdout and "cuda.bindings" not in after.stdout and "pycuda" not in after.stdout


# -- engine keys ----------------------------------------------------------------------------
def test_engine_folder_names_gpu_capability_tensorrt_and_bundle(bundle):
    name = engine_dir_name("NVIDIA GeForce RTX 4090", "8.9", "10.3.0", "0123abcd")
    assert name == "NVIDIA-GeForce-RTX-4090-cc8.9-trt10.3.0-0123abcd"
    d = default_engine_dir(bundle.path, "Orin (nvgpu)", "8.7", "10.3.0", bundle.hash)
    assert d == bundle.path / "engines" / f"Orin-nvgpu-cc8.7-trt10.3.0-{bundle.hash}"


def test_key_records_the_onnx_file_and_its_manifest_hash(bundle):
    k = key_for(bundle, "denoise_step.fp16")
    assert k.graph == "denoise_step.fp16" and k.onnx == bundle.graph("denoise_step", "fp16").file == "denoise_step.fp16.onnx"
    assert k.onnx_sha256 == bundle.files[k.onnx]
    assert k.bundle_hash == bundle.hash
    assert EngineKey.from_json(k.to_json()) == k


@pytest.mark.parametrize(
    "field,value",
    [
        ("gpu", "NVIDIA GeForce RTX 4090"),
        ("compute_capability", "8.9"),
        ("tensorrt", "10.8.0"),
        ("bundle_hash", "ffffffffffffffff"),
        ("onnx_sha256", "0" * 64),
        ("graph", "denoise_step.int8"),
    ],
)
def test_a_key_that_differs_in_any_identity_field_is_refused_naming_it(bundle, field, value):
    want = key_for(bundle)
    found = EngineKey(**{**want.__dict__, field: value})
    reason = want.mismatch(found)
    assert reason is not None and field in reason and value in reason


def test_builder_options_matter_to_emote_build_not_to_the_runtime(bundle):
    want = key_for(bundle, build=BuildOptions(opt_level=5))
    found = key_for(bundle, build=BuildOptions(opt_level=3))
    assert want.mismatch(found) is None
    assert "opt_level=3" in want.mismatch(found, check_build=True)


def test_build_options_are_validated():
    with pytest.raises(EmoteError, match="0 to 5"):
        BuildOptions(opt_level=7)
    with pytest.raises(EmoteError, match="positive"):
        BuildOptions(workspace_gb=0)


def test_plan_is_loaded_only_when_key_and_bytes_match(bundle, tmp_path):
    want = key_for(bundle)
    plan, key = plan_paths(tmp_path, "denoise_step")
    data = b"serialized engine bytes"
    assert check_plan(key, data, want) == "no plan yet"  # no key beside it
    plan.write_bytes(data)
    key.write_text(EngineKey(**{**want.__dict__, "plan_sha256": sha256_bytes(data)}).to_json())
    assert check_plan(key, data, want) is None
    assert "sha256" in check_plan(key, data + b"x", want)  # truncated or replaced plan
    key.write_text("{not json")
    assert read_key(key) is None and check_plan(key, data, want) == "no plan yet"


def test_matching_plan_loads_and_mismatching_one_is_never_loaded(bundle, tmp_path):
    want = key_for(bundle)
    plan, key = plan_paths(tmp_path, "denoise_step")
    data = b"plan"
    plan.write_bytes(data)
    key.write_text(EngineKey(**{**want.__dict__, "plan_sha256": sha256_bytes(data)}).to_json())
    # a matching key: the plan's bytes come back, TensorRT is never asked to build (trt=None)
    got, result = ensure_plan(None, bundle.graph("denoise_step"), tmp_path, want, build=False)
    assert got == data and result.status == "up to date"
    # a plan built on another GPU: refused, and the error says why and what rebuilds it
    other = EngineKey(**{**want.__dict__, "gpu": "NVIDIA A100", "plan_sha256": sha256_bytes(data)})
    key.write_text(other.to_json())
    with pytest.raises(EmoteError, match=r"NVIDIA A100.*emote build"):
        ensure_plan(None, bundle.graph("denoise_step"), tmp_path, want, build=False)


# -- what is built from what, and how big -----------------------------------------------------
def test_plan_sources_take_the_precision_variant_where_the_bundle_has_it(bundle):
    fp32 = {s.name: s.key for s in plan_sources(bundle, "fp32")}
    assert all(k == g for g, k in fp32.items()) and "denoise_step" in fp32 and "vae_decoder" in fp32
    fp16 = {s.name: s.key for s in plan_sources(bundle, "fp16")}
    assert fp16["denoise_step"] == "denoise_step.fp16"
    for g, k in fp16.items():  # every graph without an fp16 variant falls back to fp32
        assert k == (f"{g}.fp16" if bundle.has(g, "fp16") else g)
    with pytest.raises(EmoteError, match="emote quantize"):
        plan_sources(bundle, "int8")


def test_buffer_bytes_from_the_bundle_equal_what_the_pipeline_allocates(bundle):
    from emote.runtime.pipeline import Pipeline, buffer_bytes

    for precision in ("fp32", "fp16"):
        with Pipeline(bundle, backend="onnxruntime", precision=precision, steps=2) as pipe:
            bufs = list(pipe.buf.values()) + pipe.xs + pipe.x0s + [pipe.out_frames, pipe.motion_frames_buf]
            assert buffer_bytes(bundle, "onnxruntime", precision) == sum(b.nbytes for b in bufs)
            assert buffer_bytes(bundle, "tensorrt", precision) == sum(b.nbytes for b in bufs)  # the same plan


def test_engine_tensors_are_checked_against_the_manifest_naming_the_tensor(bundle):
    io = declared_io(bundle.graph("denoise_step"))
    check_engine_io("denoise_step", dict(io), io)  # identical: fine
    shape, dtype = io["x"]
    wrong = {**io, "x": ((shape[0] + 1, *shape[1:]), dtype)}
    with pytest.raises(EmoteError, match=r"tensor 'x' is float32\[.*in the plan"):
        check_engine_io("denoise_step", wrong, io)
    half = {**io, "x": (shape, np.dtype(np.float16))}
    with pytest.raises(EmoteError, match="float16"):
        check_engine_io("denoise_step", half, io)
    with pytest.raises(EmoteError, match="missing row"):
        check_engine_io("denoise_step", {k: v for k, v in io.items() if k != "row"}, io)


# -- the step loop as a plan ------------------------------------------------------------------
def test_step_plan_of_the_pipeline_binds_the_ping_pong_buffers_in_order(bundle):
    from emote.runtime.pipeline import Pipeline

    with Pipeline(bundle, backend="onnxruntime", sampler="dpmpp_2m", steps=4, guidance_steps=1) as pipe:
        plan = pipe.step_plan
        assert [s.stage for s in plan.steps] == ["denoise_step"] + ["denoise_step_cond"] * 3
        assert [(s.reads, s.writes) for s in plan.steps] == [(0, 1), (1, 0), (0, 1), (1, 0)]
        assert plan.result == 0 and plan.noise is None and plan.row is pipe.buf["row"]
        np.testing.assert_array_equal(plan.rows, pipe.sampler.rows)
        assert plan.ops() == [op for i, s in enumerate(plan.steps) for op in (("copy", "row", i), ("run", s.stage, i))]
        # the real bindings (ONNX Runtime keeps the bound buffers on the call): step i reads x[reads], writes x[writes]
        for s in plan.steps:
            _, ins, outs, _ = s.call.keepalive
            assert ins["x"] is pipe.xs[s.reads] and ins["x0_prev"] is pipe.x0s[s.reads]
            assert outs["x_next"] is pipe.xs[s.writes] and outs["x0"] is pipe.x0s[s.writes]
            assert ins["row"] is plan.row
        # the decoder reads the side the last step wrote
        assert pipe.call_decode[plan.result].keepalive[1]["latents"] is pipe.xs[plan.result]


def test_stochastic_samplers_stage_a_noise_row_per_step(bundle):
    from emote.runtime.pipeline import Pipeline

    with Pipeline(bundle, backend="onnxruntime", sampler="lcm", steps=3) as pipe:
        plan = pipe.step_plan
        assert plan.noise is pipe.buf["noise"]
        assert plan.ops()[:3] == [("copy", "row", 0), ("copy", "noise", 0), ("run", plan.steps[0].stage, 0)]
        with pytest.raises(ValueError, match="set_noise"):
            pipe.loop()


def test_step_plan_refuses_a_broken_chain_or_a_short_table():
    def call():
        pass

    steps = (Step(call, "denoise_step", 0, 1), Step(call, "denoise_step", 0, 1))
    with pytest.raises(ValueError, match="step 1 reads side 0"):
        StepPlan(steps, None, np.zeros((2, 8), np.float32))
    with pytest.raises(ValueError, match="3 rows for 2 steps"):
        StepPlan((Step(call, "s", 0, 1), Step(call, "s", 1, 0)), None, np.zeros((3, 8), np.float32))


# -- ONNX Runtime on GPU: options and device buffers --------------------------------------------
def test_provider_options_map_our_settings_to_ort_option_names(tmp_path):
    from emote.engines.onnxruntime import provider_options

    opts = dict(
        provider_options(
            ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
            device_id=1,
            fp16=True,
            cuda_graph=True,
            cache_dir=tmp_path,
            workspace_gb=2,
            opt_level=5,
        )
    )
    assert opts["TensorrtExecutionProvider"] == {
        "device_id": "1",
        "trt_fp16_enable": "True",
        "trt_int8_enable": "False",
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(tmp_path),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(tmp_path),
        "trt_cuda_graph_enable": "True",
        "trt_max_workspace_size": str(2 * 2**30),
        "trt_builder_optimization_level": "5",
    }
    assert opts["CUDAExecutionProvider"] == {"device_id": "1", "cudnn_conv_algo_search": "EXHAUSTIVE", "enable_cuda_graph": "1"}
    assert opts["CPUExecutionProvider"] == {}
    plain = dict(provider_options(["CUDAExecutionProvider"]))
    assert "enable_cuda_graph" not in plain["CUDAExecutionProvider"]


def test_ort_tensorrt_ep_gets_the_int8_flag_for_the_int8_graphs_of_a_bundle(bundle, tmp_path):
    """The TensorRT EP builds weakly typed networks, where Q/DQ nodes need trt_int8_enable; which graphs
    are int8 is what the bundle records of each graph (its GraphSpec's precision)."""
    from dataclasses import replace

    from emote.engines.onnxruntime import OnnxRuntimeBackend

    be = OnnxRuntimeBackend()
    be.providers, be.trt_cache = ["TensorrtExecutionProvider", "CPUExecutionProvider"], tmp_path  # the options only

    def trt_int8(spec) -> str:
        return dict(be.providers_for(spec))["TensorrtExecutionProvider"]["trt_int8_enable"]

    int8 = replace(bundle.graph("denoise_step"), key="denoise_step.int8", precision="int8")
    assert trt_int8(int8) == "True"
    assert trt_int8(bundle.graph("denoise_step")) == trt_int8(bundle.graph("vae_decoder")) == "False"
    assert trt_int8(GraphSpec.standalone(tmp_path / "elsewhere.onnx")) == "False"  # not a graph of a bundle


def test_ort_graph_bindings_each_get_their_own_cuda_graph(bundle):
    """ORT captures a CUDA graph over the addresses bound at capture. The CUDA EP keeps one graph per
    gpu_graph_id: each binding needs its own id. The TensorRT EP keeps one per session (it ignores the
    id): each binding after the first needs its own session, or the pong binding replays the ping graph.
    Checked here with real CPU sessions of the tiny decoder, both bindings against a plain run."""
    from emote.engines.onnxruntime import ONE_GRAPH_PER_SESSION, OnnxRuntimeBackend, OrtGraph

    assert "TensorrtExecutionProvider" in ONE_GRAPH_PER_SESSION and "CUDAExecutionProvider" not in ONE_GRAPH_PER_SESSION
    be = OnnxRuntimeBackend()
    path = bundle.graph("vae_decoder")
    plain = OrtGraph("vae_decoder", be._open(path))
    rng = np.random.default_rng(0)
    feeds = [{n: rng.standard_normal(shape).astype(dtype) for n, (shape, dtype) in plain.inputs.items()} for _ in range(2)]
    outs = [{n: np.zeros(shape, dtype) for n, (shape, dtype) in plain.outputs.items()} for _ in range(2)]

    per_id = OrtGraph("vae_decoder", be._open(path), cuda_graph=True)  # the CUDA EP's way
    calls = [per_id.bind(f, o) for f, o in zip(feeds, outs)]
    assert [c.keepalive[3].get_run_config_entry("gpu_graph_id") for c in calls] == ["1", "2"]
    assert calls[0].session is calls[1].session is per_id.session

    reopened = []
    per_session = OrtGraph(
        "vae_decoder", be._open(path), cuda_graph=True, reopen=lambda: reopened.append(be._open(path)) or reopened[-1]
    )  # the TensorRT EP's way
    calls = [per_session.bind(f, o) for f, o in zip(feeds, outs)]
    assert calls[0].session is per_session.session and reopened == [calls[1].session]
    assert all(c.keepalive[3] is None for c in calls)  # no ids: that EP would ignore them
    for call, f, o in zip(calls[::-1], feeds[::-1], outs[::-1]):  # pong first: each binding keeps its own buffers
        call()
        for name, want in plain.run(f).items():
            np.testing.assert_array_equal(o[name], want)


def test_ort_cuda_graph_without_a_gpu_provider_is_a_clear_error():
    from emote.engines.onnxruntime import OnnxRuntimeBackend

    with pytest.raises(EmoteError, match="cuda or tensorrt provider"):
        OnnxRuntimeBackend(cuda_graph=True)


def test_ort_device_buffer_path_gives_the_same_frames_as_numpy_buffers(bundle, tiny_inputs):
    """OrtValue buffers bound with bind_ortvalue_* (the GPU path), here on the CPU device: same numbers."""
    from emote.runtime.pipeline import Pipeline

    image, mask, audio = tiny_inputs
    portrait = Portrait(image=image, mask=mask, box=(0, 0, 64, 64))
    audio = audio[: int(0.3 * 16000)]
    outs = []
    for options in (None, {"buffer_device": "cpu"}):
        with Pipeline(bundle, backend="onnxruntime", steps=2, backend_options=options) as pipe:
            outs.append(pipe.generate(portrait, audio))
    assert outs[0].shape[0] > 0
    np.testing.assert_array_equal(outs[0], outs[1])


# -- the clear errors ---------------------------------------------------------------------------
@pytest.mark.skipif(not NO_TRT, reason="TensorRT is installed here")
def test_tensorrt_commands_without_tensorrt_say_what_to_install(bundle, tmp_path, capsys):
    assert main(["build", str(bundle.path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "TensorRT is not installed" in err and "pip install" in err
    from emote.engines import open_backend

    with pytest.raises(EmoteError, match="TensorRT is not installed"):
        open_backend("tensorrt")


def test_build_checks_the_precision_before_touching_tensorrt(bundle, capsys):
    assert main(["build", str(bundle.path), "--precision", "int8"]) == 2
    err = capsys.readouterr().err
    assert "no int8 graphs" in err and "emote quantize" in err
    assert main(["build", str(bundle.path), "--opt-level", "9"]) == 2
    assert "0 to 5" in capsys.readouterr().err


def test_generate_rejects_gpu_options_that_do_not_fit_the_backend(bundle, capsys):
    base = ["generate", "--bundle", str(bundle.path), "--image", "x.png", "--audio", "x.wav", "-o", "x.mp4"]
    assert main(base + ["--backend", "tensorrt", "--providers", "cuda"]) == 2
    assert "tensorrt has no option 'providers'" in capsys.readouterr().err
    assert main(base + ["--cuda-graph"]) == 2  # onnxruntime and tensorrt take it: which one?
    assert "fit onnxruntime and tensorrt: name one with --backend" in capsys.readouterr().err
    assert main(base + ["--backend", "onnxruntime", "--cuda-graph"]) == 2
    assert "cuda or tensorrt provider" in capsys.readouterr().err


def test_an_empty_cuda_namespace_is_not_cuda_python(tmp_path):
    """A bare 'cuda' folder (left by an uninstall, or another NVIDIA package's namespace) must not read as
    cuda-python: the GPU checks would then fail on a missing module instead of skipping or saying what to install."""

    def installed_with(path) -> str:
        code = f"import sys; sys.path.insert(0, {str(path)!r}); from emote.engines.cuda import installed; print(installed())"
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()

    (tmp_path / "cuda").mkdir()
    assert installed_with(tmp_path) == str(cuda_python_installed())  # the empty namespace adds nothing
    (tmp_path / "cuda" / "bindings").mkdir()
    (tmp_path / "cuda" / "bindings" / "__init__.py").write_text("")
    assert installed_with(tmp_path) == "True"  # the layout of cuda-python >= 12.6.1


@pytest.mark.skipif(not cuda_python_installed(), reason="cuda-python is not installed")
def test_cuda_without_a_gpu_is_one_clear_error():
    from emote.engines import cuda
    from emote.engines.probe import nvidia_gpus

    if nvidia_gpus():
        pytest.skip("this machine has a GPU")
    with pytest.raises(EmoteError, match="no NVIDIA GPU with a working driver"):
        cuda.device_info(0)
    rt = cuda.cudart()
    with pytest.raises(cuda.CudaError, match=r"CUDA cudaMalloc of 16 bytes for x failed: cudaErrorMemoryAllocation"):
        cuda.check((rt.cudaError_t.cudaErrorMemoryAllocation, None), "cudaMalloc of 16 bytes for x")


def test_doctor_says_whether_tensorrt_will_work(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    for row in ("nvidia driver", "cuda (cuda-python)", "tensorrt (usable)", "backends that will work"):
        assert row in out


# -- on a GPU (bench/gpu_check.sh runs these) ---------------------------------------------------
@pytest.fixture(scope="module")
def engines(tmp_path_factory, tiny_bundle):
    from emote.engines.trt_build import build_engines

    folder = tmp_path_factory.mktemp("engines")
    build_engines(tiny_bundle, "fp16", folder, progress=lambda line: None)
    return folder


@pytest.mark.gpu
def test_gpu_build_is_up_to_date_the_second_time_and_rebuilds_a_foreign_key(tiny_bundle, engines):
    from emote.engines.trt_build import build_engines

    _, again = build_engines(tiny_bundle, "fp16", engines, progress=lambda line: None)
    assert {r.status for r in again} == {"up to date"}
    key_path = engines / "denoise_step.fp16.json"
    key = json.loads(key_path.read_text())
    key["gpu"] = "some other GPU"
    key_path.write_text(json.dumps(key))
    _, third = build_engines(tiny_bundle, "fp16", engines, progress=lambda line: None)
    rebuilt = {r.graph: r for r in third if r.status == "built"}
    assert set(rebuilt) == {"denoise_step.fp16"} and "some other GPU" in rebuilt["denoise_step.fp16"].reason


def _frames(bundle, tiny_inputs, backend="onnxruntime", precision="fp32", **options):
    from emote.runtime.pipeline import Pipeline

    image, mask, audio = tiny_inputs
    overlap = options.pop("overlap", True)
    with Pipeline(bundle, backend=backend, precision=precision, steps=4, backend_options=options or None, overlap=overlap) as pipe:
        return pipe.generate(Portrait(image=image, mask=mask, box=(0, 0, 64, 64)), audio)


def _psnr(a, b) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.mark.gpu
def test_gpu_tensorrt_pipeline_matches_onnxruntime_cpu(tiny_bundle, tiny_inputs, engines):
    ref = _frames(tiny_bundle, tiny_inputs)
    trt32 = _frames(tiny_bundle, tiny_inputs, "tensorrt", "fp32", engines=engines)
    trt16 = _frames(tiny_bundle, tiny_inputs, "tensorrt", "fp16", engines=engines)
    assert trt32.shape == ref.shape
    assert _psnr(ref, trt32) >= 40.0  # fp32 (TF32 convolutions may differ in the last bits)
    assert _psnr(ref, trt16) >= 30.0  # fp16 backbone, fp32 solver: as `emote verify --precision fp16`


@pytest.mark.gpu
def test_gpu_cuda_graph_and_overlap_change_no_frame(tiny_bundle, tiny_inputs, engines):
    graph = _frames(tiny_bundle, tiny_inputs, "tensorrt", "fp16", engines=engines)
    plain = _frames(tiny_bundle, tiny_inputs, "tensorrt", "fp16", engines=engines, cuda_graph=False)
    serial = _frames(tiny_bundle, tiny_inputs, "tensorrt", "fp16", engines=engines, overlap=False)
    np.testing.assert_array_equal(graph, plain)  # the graph replays the very same kernels
    np.testing.assert_array_equal(graph, serial)


@pytest.mark.gpu
def test_gpu_onnxruntime_cuda_with_cuda_graph_matches_cpu(tiny_bundle, tiny_inputs):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is not installed")
    ref = _frames(tiny_bundle, tiny_inputs)
    cuda = _frames(tiny_bundle, tiny_inputs, providers=["cuda"], cuda_graph=True)
    assert _psnr(ref, cuda) >= 40.0
