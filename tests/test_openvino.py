"""OpenVINO backend: same contract as ONNX Runtime; skipped where OpenVINO is not installed."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("openvino")

from emote.bundle import GraphSpec  # noqa: E402
from emote.cli import main  # noqa: E402
from emote.engines.openvino import OpenVINOBackend, devices, int8_exact  # noqa: E402
from emote.engines.probe import cpu_flags  # noqa: E402
from emote.errors import EmoteError  # noqa: E402
from emote.export.parity import psnr_db, verify_bundle  # noqa: E402
from emote.runtime import Pipeline  # noqa: E402


def test_verify_fp32_passes(tiny_bundle, tiny_model):
    rows = verify_bundle(tiny_bundle, tiny_model, OpenVINOBackend(), inputs=("random",))
    assert len({r.graph for r in rows}) == 7  # every graph, named outputs matched (no internal tensor names)
    assert all(r.ok for r in rows), "\n".join(r.line() for r in rows if not r.ok)
    assert min(r.sqnr_db for r in rows if r.output != "frames") >= 60.0


def openvino_computes(precision: str) -> bool:
    """The runtime's own probe: what OpenVINO's CPU device reports it computes natively."""
    from emote.runtime.backend_choice import openvino_native

    return precision in openvino_native()


needs_bf16 = pytest.mark.skipif(
    not openvino_computes("bf16"),
    reason="OpenVINO's CPU device computes no bf16 here (no AVX-512 BF16 or AMX): the bf16 hint would be refused",
)


@needs_bf16
def test_bf16_hint_changes_precision_not_shapes(tiny_bundle, tiny_model):
    rows = verify_bundle(
        tiny_bundle, tiny_model, OpenVINOBackend(precision="bf16"), precision="bf16", inputs=("random",), graphs=["denoise_step"]
    )
    sqnr = min(r.sqnr_db for r in rows)
    assert 15.0 < sqnr < 80.0  # bf16 arithmetic: clearly not fp32-exact, still the same function


# OpenVINO int8 against ONNX Runtime int8 (default optimisations) on the tiny int8 bundle's step graphs, SQNR against
# PyTorch per output, real inputs, per CPU class (bench/RESULTS.md: "OpenVINO and int8" for VNNI, "OpenVINO int8 on
# AVX2 without VNNI" for the other; OpenVINO 2026.4.1, ONNX Runtime 1.32.0):
# - VNNI, AMD EPYC Zen 4 (AVX-512 VNNI): within 0.3 dB; allowed 1.5 dB either way;
# - no VNNI, AMD EPYC Zen 3 (AVX2, FMA, no AVX-512/VNNI): OpenVINO 9.8 (denoise_step x_next 31.0 vs 40.9, x0 20.8
#   vs 30.6) to 15.4 dB (denoise_step_cond) worse, its int16 pair sums saturating; allowed 5 to 18 dB worse (under 5:
#   OpenVINO stopped saturating and its refusal can go).
INT8_GAP_DB = {"vnni": (-1.5, 1.5), "no vnni": (5.0, 18.0)}  # ONNX Runtime's SQNR minus OpenVINO's, per output
NO_VNNI = "this CPU has no VNNI (emote.engines.openvino.int8_exact): OpenVINO refuses int8 here"
HAS_VNNI = "this CPU has VNNI (emote.engines.openvino.int8_exact): OpenVINO's int8 is exact here"


def int8_gaps(bundle, model) -> list[tuple[str, float]]:
    from emote.engines.onnxruntime import OnnxRuntimeBackend

    ov_rows = verify_bundle(bundle, model, OpenVINOBackend(precision="int8", allow_inexact_int8=True), precision="int8", inputs=("real",))
    ort_rows = verify_bundle(bundle, model, OnnxRuntimeBackend(), precision="int8", inputs=("real",))
    assert [(a.graph, a.output) for a in ov_rows] == [(b.graph, b.output) for b in ort_rows]
    return [(f"{a.line()}\n{b.line()}", b.sqnr_db - a.sqnr_db) for a, b in zip(ov_rows, ort_rows, strict=True)]


@pytest.mark.skipif(not int8_exact(cpu_flags()), reason=NO_VNNI)
def test_int8_matches_the_qdq_semantics(tiny_int8_bundle, tiny_model):
    """With VNNI, OpenVINO on the Q/DQ graphs is as close to PyTorch as ONNX Runtime running them."""
    bundle, _ = tiny_int8_bundle
    rows = verify_bundle(bundle, tiny_model, OpenVINOBackend(precision="int8"), precision="int8", inputs=("real",))
    assert all(r.ok for r in rows), "\n".join(r.line() for r in rows)
    lo, hi = INT8_GAP_DB["vnni"]
    for lines, gap in int8_gaps(bundle, tiny_model):
        assert lo < gap < hi, lines


@pytest.mark.skipif(int8_exact(cpu_flags()), reason=HAS_VNNI)
def test_int8_without_vnni_is_refused_and_what_it_would_lose(tiny_int8_bundle, tiny_model):
    """Without VNNI the backend refuses int8, naming the CPU and the alternative; forced, it loses what was measured."""
    with pytest.raises(EmoteError, match=r"OpenVINO int8 is inexact on .*no VNNI.*--backend onnxruntime --precision int8"):
        OpenVINOBackend(precision="int8")
    bundle, _ = tiny_int8_bundle
    lo, hi = INT8_GAP_DB["no vnni"]
    for lines, gap in int8_gaps(bundle, tiny_model):
        assert lo < gap < hi, f"ONNX Runtime - OpenVINO = {gap:.1f} dB\n{lines}"


def test_int8_exact_decides_from_the_cpu_flags(tmp_path, monkeypatch):
    """The decision on made-up CPUs (no CPU assumed): int32 dot products (VNNI, AMX) are exact, x86 without them
    is not, CPUs without x86 flags are not judged; the backend and the default backend act on it."""
    from emote.engines import openvino as ov_engine
    from emote.engines import probe
    from emote.runtime.backend_choice import default_backend

    x86 = {"sse2", "ssse3", "sse4_1", "sse4_2", "avx", "avx2", "fma"}
    assert not int8_exact(x86)  # Zen 3, Haswell ... Raptor Lake without AVX-VNNI
    assert not int8_exact(x86 | {"avx512f", "avx512bw"})  # Skylake-SP: AVX-512 without VNNI saturates as well
    assert not int8_exact({"sse2", "sse4_1"})
    assert int8_exact(x86 | {"avx512f", "avx512_vnni"})  # Cascade Lake, Zen 4
    assert int8_exact(x86 | {"avx_vnni"})  # Alder Lake
    assert int8_exact(x86 | {"avx512f", "avx512_vnni", "amx_int8"})  # Sapphire Rapids
    assert int8_exact(frozenset()) and int8_exact({"fp", "asimd", "asimddp"})  # unknown, ARM: not judged

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse2 sse4_1 avx2 fma\n\nprocessor\t: 1\n")
    assert probe.cpu_flags(cpuinfo) == {"fpu", "sse2", "sse4_1", "avx2", "fma"}
    cpuinfo.write_text("processor\t: 0\nFeatures\t: fp asimd evtstrm\n")  # ARM's /proc/cpuinfo
    assert probe.cpu_flags(cpuinfo) == frozenset() and probe.cpu_flags(tmp_path / "absent") == frozenset()

    monkeypatch.setattr(ov_engine, "cpu_flags", lambda: frozenset(x86))
    monkeypatch.setattr(probe, "cpu_flags", lambda: frozenset(x86))
    with pytest.raises(EmoteError, match=r"inexact on .*use --backend onnxruntime --precision int8"):
        OpenVINOBackend(precision="int8")
    assert OpenVINOBackend(precision="int8", allow_inexact_int8=True).precision == "int8"
    OpenVINOBackend(precision="fp32")  # only int8 is refused
    assert default_backend("int8")[:2] == ("onnxruntime", "int8")
    vnni = frozenset(x86 | {"avx512f", "avx512_vnni"})
    monkeypatch.setattr(ov_engine, "cpu_flags", lambda: vnni)
    monkeypatch.setattr(probe, "cpu_flags", lambda: vnni)
    assert OpenVINOBackend(precision="int8").precision == "int8"
    assert default_backend("int8")[:2] == ("openvino", "int8")  # this machine's OpenVINO CPU lists INT8 (test_devices_and_errors)


def test_int8_saturates_pairwise_sums_without_vnni(tmp_path):
    """The mechanism on one MatMul and one 1x1 Conv (bench/ov_int8_isa.py): without VNNI OpenVINO's result is, to float
    rounding, a u8 x s8 product whose pairwise sums saturate to int16 (activations shifted by +128, the shift taken
    off exactly); with VNNI it is the exact integer result. Weights of 7 bits never saturate."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    cin, cout, n = 64, 16, 16
    w = rng.integers(-127, 128, (cout, cin)).astype(np.int8)
    w[:, :2] = 127  # a pair at full range in every output channel: (127 + 128) x 127 x 2 = 64770 > 32767
    q = rng.integers(-127, 128, (n, cin)).astype(np.int8)

    def run(op: str, weights: np.ndarray) -> np.ndarray:
        wq, tail = (
            (weights.reshape(cout, cin, 1, 1), helper.make_node("Conv", ["d", "wd"], ["y"], kernel_shape=[1, 1]))
            if op == "Conv"
            else (np.ascontiguousarray(weights.T), helper.make_node("MatMul", ["d", "wd"], ["y"]))
        )
        shape = [1, cin, 1, n] if op == "Conv" else [n, cin]
        nodes = [
            helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"]),
            helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["d"]),
            helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=0 if op == "Conv" else 1),
            tail,
        ]
        inits = {
            "s": np.array(1.0, np.float32),
            "zp": np.array(0, np.int8),
            "w": wq,
            "ws": np.ones(cout, np.float32),
            "wz": np.zeros(cout, np.int8),
        }  # unit scales: y is the integer sum
        g = helper.make_graph(
            nodes,
            op,
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
            [numpy_helper.from_array(v, k) for k, v in inits.items()],
        )
        path = tmp_path / f"{op}.onnx"
        onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), str(path))
        x = q.astype(np.float32)
        graph = OpenVINOBackend(precision="int8", cache=False, allow_inexact_int8=True).load(GraphSpec.standalone(path, op))
        y = graph.run({"x": np.ascontiguousarray(x.T.reshape(shape)) if op == "Conv" else x})["y"]
        return y.reshape(cout, n).T if op == "Conv" else y

    def saturating(weights: np.ndarray) -> np.ndarray:
        u, wi = q.astype(np.int64) + 128, weights.astype(np.int64)
        pairs = (u[:, None, :] * wi[None]).reshape(n, cout, cin // 2, 2).sum(-1)
        return np.clip(pairs, -32768, 32767).sum(-1) - 128 * wi.sum(-1)

    exact = q.astype(np.int64) @ w.astype(np.int64).T
    assert np.abs(saturating(w) - exact).max() > 1000  # the model itself differs from the exact sums here
    w7 = np.clip(np.round(w / 2), -63, 63).astype(np.int8)
    for op in ("Conv", "MatMul"):
        want = exact if int8_exact(cpu_flags()) else saturating(w)
        assert np.abs(run(op, w) - want).max() < 0.5, op  # integer sums of up to ~1e6: float rounding only
        assert np.abs(run(op, w7) - q.astype(np.int64) @ w7.astype(np.int64).T).max() < 0.5, op


def test_signed_qdq_after_concat_is_what_openvino_gets_wrong(tmp_path):
    """The evidence behind the quantizer's Concat rule ("OpenVINO and int8" in bench/RESULTS.md): OpenVINO's CPU plugin requantizes a
    signed Q/DQ on a Concat output with a 127x coarser step; unsigned (zero point 128) or without the Concat,
    it is exact. If this starts failing, OpenVINO fixed it and the rule in calibration/quantize.py can go."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    def graph(signed: bool, concat: bool):
        w = np.zeros((4, 4, 1, 1), np.int8)
        w[np.arange(4), np.arange(4)] = 127  # identity 1x1 conv: the output is the dequantized input
        s = np.float32(1 / 127) if signed else np.float32(2 / 127)
        zp = np.array(0, np.int8) if signed else np.array(128, np.uint8)
        nodes = [
            helper.make_node("Concat", ["a", "b"], ["x"], axis=1) if concat else helper.make_node("Identity", ["a"], ["x"]),
            helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"]),
            helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["d"]),
            helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=0),
            helper.make_node("Conv", ["d", "wd"], ["y"], kernel_shape=[1, 1]),
        ]
        c = 2 if concat else 4
        inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, c, 4, 4]) for n in ("ab" if concat else "a")]
        inits = [
            numpy_helper.from_array(v, k)
            for k, v in {"s": np.array(s), "zp": zp, "w": w, "ws": np.full(4, 1 / 127, np.float32), "wz": np.zeros(4, np.int8)}.items()
        ]
        g = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
        path = tmp_path / f"{signed}-{concat}.onnx"
        onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), str(path))
        return path

    x = np.linspace(-0.9, 0.9, 64, dtype=np.float32).reshape(1, 4, 4, 4)
    # identity weights: one product per output, at most 255 x 127 = 32385, never a saturated pair (any CPU)
    ov_backend = OpenVINOBackend(precision="int8", cache=False, allow_inexact_int8=True)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    err = {}
    for signed in (True, False):
        for concat in (True, False):
            path = graph(signed, concat)
            feeds = {"a": x[:, :2], "b": x[:, 2:]} if concat else {"a": x}
            ref = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
            got = ov_backend.load(GraphSpec.standalone(path, "g")).run(feeds)["y"]
            err[signed, concat] = float(np.abs(got - ref).max())
    assert err[True, False] < 1e-5 and err[False, True] < 1e-5 and err[False, False] < 1e-5
    assert err[True, True] > 0.1  # 3 levels instead of 255: values snap to -1, 0, 1


def test_pipeline_on_openvino_matches_onnxruntime_and_caches(tiny_bundle, tiny_inputs):
    from emote.runtime.face import Portrait

    image, mask, audio = tiny_inputs
    portrait = Portrait(image=image, mask=mask, box=(0, 0, 64, 64))
    with Pipeline(tiny_bundle, steps=4, backend="onnxruntime", unmarked_research=True) as ort_pipe:
        a = ort_pipe.generate(portrait, audio[:8000])
    with Pipeline(
        tiny_bundle, steps=4, backend="openvino", precision="fp32", backend_options={"device": "CPU", "threads": 2}, unmarked_research=True
    ) as ov_pipe:
        b = ov_pipe.generate(portrait, audio[:8000])
        c = ov_pipe.generate(portrait, audio[:8000])  # requests and tensors reused: same frames again
        version, bundle_hash = ov_pipe.backend.version, ov_pipe.bundle.hash
    assert psnr_db(a, b) >= 40.0 and np.array_equal(b, c)
    cache = tiny_bundle / "engines" / f"openvino-CPU-ov{version}-{bundle_hash}"
    blobs = sorted(cache.glob("*.blob"))
    assert len(blobs) >= 7  # one compiled model per graph, keyed by device, OpenVINO version and bundle
    stamp = [p.stat().st_mtime_ns for p in blobs]
    with Pipeline(tiny_bundle, steps=4, backend="openvino", precision="fp32", unmarked_research=True) as again:
        assert np.array_equal(again.generate(portrait, audio[:8000]), b)
    assert [p.stat().st_mtime_ns for p in sorted(cache.glob("*.blob"))] == stamp  # loaded, not rebuilt


@needs_bf16
def test_pipeline_bf16_runs_fp32_graphs_hinted(tiny_bundle, tiny_inputs):
    from emote.runtime.face import Portrait

    image, mask, audio = tiny_inputs
    portrait = Portrait(image=image, mask=mask, box=(0, 0, 64, 64))
    with Pipeline(tiny_bundle, steps=4, backend="openvino", precision="bf16") as p:
        assert p.specs["denoise_step"].precision == "fp32" and p.backend.hint == "bf16"
        frames = p.generate(portrait, audio[:8000])
    with Pipeline(tiny_bundle, steps=4, backend="onnxruntime") as ref:
        assert 20.0 < psnr_db(ref.generate(portrait, audio[:8000]), frames) < 99.0


def test_default_backend_and_precision_are_the_measured_choice(tiny_bundle, monkeypatch, capsys):
    """No backend named: OpenVINO at bf16 where the CPU computes it (bench/RESULTS.md), else fp32; without
    OpenVINO, ONNX Runtime fp32. A named backend keeps its own default precision."""
    import sys

    from emote.runtime.backend_choice import default_backend, resolve

    native = next(p for d, _, p in devices() if d == "CPU")
    want = "bf16" if "bf16" in native else "fp32"
    with Pipeline(tiny_bundle, steps=4) as p:
        assert (p.backend.name, p.precision, p.backend.hint) == ("openvino", want, {"bf16": "bf16", "fp32": "f32"}[want])

    def chosen(*args):
        c = resolve(*args)
        return c.backend, c.precision

    assert chosen("onnxruntime", None) == ("onnxruntime", "fp32")
    assert chosen(None, None, {"providers": ["CPUExecutionProvider"]}) == ("onnxruntime", "fp32")  # ORT's options
    assert chosen(None, None, {"device": "CPU"}) == ("openvino", want)  # OpenVINO's option
    assert chosen(None, None, {"threads": 2}) == ("openvino", want)  # every CPU backend's: the default
    assert chosen(None, "fp16") == ("onnxruntime" if "fp16" not in native else "openvino", "fp16")
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    assert "until it has run, openvino at bf16" in " ".join(capsys.readouterr().out.split())
    monkeypatch.setitem(sys.modules, "openvino", None)  # an install without the openvino extra
    assert default_backend()[:2] == ("onnxruntime", "fp32") and default_backend("int8")[:2] == ("onnxruntime", "int8")


def test_devices_and_errors(tiny_bundle, capsys):
    from emote.engines import open_backend

    found = {d: precisions for d, _, precisions in devices()}
    assert "CPU" in found and {"fp32", "int8"} <= set(found["CPU"])
    with pytest.raises(EmoteError, match="device 'NPU9' not found"):
        OpenVINOBackend(device="NPU9")
    with pytest.raises(EmoteError, match="precision 'int4'"):
        OpenVINOBackend(precision="int4")
    for p in ("fp16", "bf16"):  # what this CPU lacks is refused by name (an AVX2-only CPU lacks both)
        if p not in found["CPU"]:
            with pytest.raises(EmoteError, match=f"OpenVINO CPU has no {p}"):
                OpenVINOBackend(precision=p)
    with pytest.raises(EmoteError, match="use --backend openvino for bf16"):
        open_backend("onnxruntime", "bf16")
    assert main(["verify", str(tiny_bundle), "--device", "CPU"]) == 2  # verify's backend is onnxruntime unless named
    assert "onnxruntime has no option 'device'" in capsys.readouterr().err


def test_doctor_lists_openvino_devices_with_precisions(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out.splitlines()
    line = next(x for x in out if x.startswith("openvino devices"))
    assert "CPU (" in line and "fp32" in line and "int8" in line
    from emote.runtime.backend_choice import default_backend

    assert any(x.startswith("default cpu backend") and " ".join(default_backend()[:2]) in x for x in out)
