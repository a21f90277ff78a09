"""`emote bench`: the record, table and plot it writes (structure, not speed), and FLOP counting."""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper
from PIL import Image

from emote.bench.flops import count_flops
from emote.cli import main


def test_bench_quick_writes_json_table_and_plot(tiny_bundle, tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["bench", "--bundle", str(tiny_bundle), "--quick", "--quiet", "-o", str(out)]) == 0
    record = json.loads((out / "results.json").read_text())
    assert {"machine", "threads", "bundle", "config", "flops", "peak_gflops", "baseline", "results", "samples"} <= set(record)
    assert record["bundle"]["hash"] and record["machine"]["cores"] >= 1
    assert record["baseline"] == "reference-ddim40"
    assert record["peak_gflops"]["onnxruntime-fp32"] > 0
    names = list(record["results"])
    assert names[0] == "reference-ddim40" and "ort-fp32-dpm4-g1" in names
    for name in names:
        r = record["results"][name]
        assert len(record["samples"][name]) == record["config"]["repeat"] == 2
        assert r["frames"] == 25 and r["fps"] > 0 and r["real_time_factor"] > 0
        assert r["seconds"]["p50"] <= r["seconds"]["p90"]
    ort = record["results"]["ort-fp32-ddim40"]
    assert ort["psnr_vs_baseline_db"] >= 40  # the runtime reproduces the baseline's frames
    assert ort["first_frame"]["p50"] < ort["seconds"]["p50"]  # frames stream before the end
    step = ort["stages"]["denoise_step"]
    assert step["n"] == 2 * 7 * 40  # 2 runs x 7 clips x 40 steps
    assert ort["stages"]["denoise_loop"]["n"] == 2 * 7  # a clip's 40 steps timed together too
    assert ort["lipsync"] is None  # random weights: no lip sync to score
    assert 0 < step["fraction_of_peak"] < 1.5
    # each variant's fraction is of the GEMM peak at its own precision, measured in this run
    fp16 = record["results"]["ort-fp16-dpm4-g1"]["stages"]["denoise_step"]
    assert record["peak_gflops"]["onnxruntime-fp16"] > 0
    assert abs(fp16["fraction_of_peak"] - fp16["gflops_per_s"] / record["peak_gflops"]["onnxruntime-fp16"]) < 1e-9
    assert abs(step["fraction_of_peak"] - step["gflops_per_s"] / record["peak_gflops"]["onnxruntime-fp32"]) < 1e-9
    assert {"p50", "p90", "p99"} <= set(step) and record["threads"] >= 1
    assert all(k in record["flops"]["counted"] for k in ("MatMul", "Gemm", "Conv"))  # the report says how
    g1 = record["results"]["ort-fp32-dpm4-g1"]["stages"]
    assert g1["denoise_step"]["n"] == 2 * 7 and g1["denoise_step_cond"]["n"] == 2 * 7 * 3
    table = (out / "results.md").read_text()
    assert "| variant |" in table and all(f"| {n} |" in table for n in names)
    with Image.open(out / "results.png") as img:
        assert img.format == "PNG" and img.size[0] > 600


def test_bench_refuses_unknown_variants(tiny_bundle, tmp_path, capsys):
    assert main(["bench", "--bundle", str(tiny_bundle), "--variants", "warp-drive", "-o", str(tmp_path)]) == 2
    assert "unknown variant(s) warp-drive" in capsys.readouterr().err


def test_bench_compare_runs_another_bundle_at_its_own_defaults_in_the_same_rounds(tiny_bundle, tmp_path, capsys):
    """--compare: a second bundle (here the same one) at its sampler defaults, named PRESET:NAME; the first
    variant named is the baseline, so the same weights at the same settings give the same frames."""
    out = tmp_path / "bench"
    argv = ["bench", "--bundle", str(tiny_bundle), "--compare", str(tiny_bundle), "--variants", "ort-fp32-dpm4,tiny:ort-fp32-dpm4"]
    assert main([*argv, "--seconds", "0.5", "--repeat", "2", "--warmup", "0", "--quiet", "-o", str(out)]) == 0
    record = json.loads((out / "results.json").read_text())
    assert record["baseline"] == "ort-fp32-dpm4" and list(record["results"]) == ["ort-fp32-dpm4", "tiny:ort-fp32-dpm4"]
    other = record["results"]["tiny:ort-fp32-dpm4"]
    assert other["spec"]["bundle"] == str(tiny_bundle) and other["spec"]["guidance_scale"] == 2.0
    assert other["psnr_vs_baseline_db"] == float("inf")
    assert other["stages"]["denoise_step"]["n"] == 2 * 4 * 4  # 2 runs x 4 clips x 4 guided steps, as its defaults say
    assert [r["round"] for r in record["samples"]["tiny:ort-fp32-dpm4"]] == [0, 1]  # interleaved with the others
    assert record["compared"][str(tiny_bundle)]["preset"] == "tiny"
    assert main(["bench", "--bundle", str(tiny_bundle), "--compare", str(tmp_path / "nowhere"), "-o", str(out)]) == 2
    assert "neither a bundle folder nor a preset" in capsys.readouterr().err


def test_a_distilled_bundle_is_benched_at_its_own_one_step_defaults():
    from types import SimpleNamespace

    from emote.bench.variants import defaults_variant
    from emote.bundle import SamplerDefaults

    d = SamplerDefaults("ddim", 1, 1.0, None, "v_prediction", "trailing", True, "scaled_linear", True)
    student = SimpleNamespace(sampler=d, preset="demo-fast", path="b/fast")
    v = defaults_variant(student, "openvino")
    assert (v.name, v.sampler, v.steps, v.guidance_scale, v.bundle) == ("ov-fp32-ddim1", "ddim", 1, 1.0, None)
    assert v.describe() == "openvino fp32, ddim 1, unguided"
    teacher = SimpleNamespace(
        sampler=SamplerDefaults("dpmpp_2m", 4, 2.5, 1, "v_prediction", "trailing", True, "scaled_linear", False),
        preset="demo",
        path="b/demo",
    )
    v = defaults_variant(teacher, other=True)
    assert (v.name, v.guidance_steps, v.bundle) == ("demo:ort-fp32-dpm4-g1", 1, "b/demo")


def test_flop_count_of_known_graphs(tmp_path):
    w = onnx.numpy_helper.from_array(np.ones((8, 3, 3, 3), np.float32), "w")
    m = onnx.numpy_helper.from_array(np.ones((16, 5), np.float32), "m")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),  # 2 x (1*8*10*10) x (3*3*3)
            helper.make_node("Reshape", ["c", "shape"], ["r"]),
            helper.make_node("MatMul", ["r", "m"], ["y"]),  # 2 x (50*5) x 16
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 10, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [50, 5])],
        [w, m, onnx.numpy_helper.from_array(np.array([50, 16], np.int64), "shape")],
    )
    path = tmp_path / "g.onnx"
    onnx.save(onnx.shape_inference.infer_shapes(helper.make_model(graph)), str(path))
    assert count_flops(path) == 2 * 800 * 27 + 2 * 250 * 16


def test_bench_on_a_cpu_without_bf16_selects_and_measures_only_what_it_runs(tiny_bundle, monkeypatch):
    """`emote bench` on an AVX2-only CPU: OpenVINO reports FP32 and INT8 only; no bf16 variant, no bf16 peak."""
    import pytest

    pytest.importorskip("openvino")
    from emote.bench import variants
    from emote.bench.peak import measure_peaks, peak_key
    from emote.bundle import Bundle
    from emote.runtime import backend_choice

    monkeypatch.setattr(backend_choice, "openvino_native", lambda device="CPU": ["fp32", "int8"])
    specs = variants.default_variants(Bundle.open(tiny_bundle))
    ov = [s for s in specs if s.backend == "openvino"]
    assert {s.precision for s in ov} == {"fp32"}  # no int8 graphs in this bundle, no bf16 on this CPU
    asked = []
    monkeypatch.setattr("emote.bench.peak.measure_peak", lambda backend, dtype="float32": asked.append((backend.name, dtype)) or 1.0)
    peaks = measure_peaks(specs, threads=1)
    assert set(peaks) == {peak_key(s) for s in specs if s.kind == "runtime"} == {"onnxruntime-fp32", "onnxruntime-fp16", "openvino-fp32"}
    assert ("onnxruntime", "float16") in asked and all(b != "openvino" or d == "float32" for b, d in asked)
