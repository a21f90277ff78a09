"""Calibration and int8: the recorded trajectories, the Q/DQ graphs' structure and their fidelity."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from emote.bundle import Bundle, file_sha256
from emote.calibration.quantize import INT8_TARGET_DB, layers
from emote.calibration.record import CalibrationSet
from emote.cli import main
from emote.errors import EmoteError

STEP = ("denoise_step", "denoise_step_cond")


def test_calibration_records_whole_trajectories_in_bounded_shards(tiny_int8_bundle, tiny_bundle):
    bundle, folder = tiny_int8_bundle
    with CalibrationSet.open(folder) as calib:
        m = calib.manifest
        steps = [s for s in m["samples"] if s["graph"] in STEP]
        assert len(steps) >= 24 and len(steps) % 6 == 0  # whole clips of 6 steps
        # every timestep of the 6-step schedule, from near T down to the last one
        ts = sorted({s["t"] for s in steps})
        assert ts == sorted(m["sampler"]["timesteps"]) and len(ts) == 6 and ts[-1] > 700 and ts[0] < 300
        # several pairs of inputs, and the image without a face got a centred box
        assert len({(s["image"], s["audio"]) for s in m["sources"]}) >= 3 and "noise.png" in m["centred_faces"]
        # shards stay near their bound (one tensor may overshoot it) and hold each tensor once
        assert len(m["shards"]) >= 2
        for shard, info in m["shards"].items():  # payload <= the bound; npz headers: < 1 KiB a tensor
            members = [k for k, where in m["blobs"].items() if where == shard]
            payload = sum(calib.blob(k).nbytes for k in members)
            assert payload <= (256 << 10) or len(members) == 1
            assert info["bytes"] <= payload + 1024 * len(members)
        refs = sum(len(s["inputs"]) for s in m["samples"])
        assert len(m["blobs"]) < refs / 3  # per-video and per-clip tensors are shared by every step
        for shard, info in m["shards"].items():
            assert file_sha256(folder / shard) == info["sha256"]
        # a sample resolves to the graph's declared inputs, with the recorded row's timestep
        feeds = calib.feeds("denoise_step_cond", limit=3)  # served by the guided graph's calls
        spec = Bundle.open(tiny_bundle).graph("denoise_step_cond")
        assert [set(f) for f in feeds] == [{t.name for t in spec.inputs}] * 3
        for f in feeds:
            for t in spec.inputs:
                assert f[t.name].shape == t.shape and f[t.name].dtype == np.dtype(t.dtype)
        assert feeds[0]["row"][0] > feeds[-1]["row"][0]  # spread from early to late steps


def test_calibrate_cli_errors(tiny_bundle, calibration_inputs, tmp_path, capsys):
    images, audio = calibration_inputs
    assert main(["calibrate", str(tiny_bundle), "--images", str(tmp_path), "--audio", str(audio), "-o", str(tmp_path / "c")]) == 2
    assert "holds no image files" in capsys.readouterr().err
    assert (
        main(["calibrate", str(tiny_bundle), "--images", str(images), "--audio", str(audio), "-o", str(tmp_path / "c"), "--samples", "0"])
        == 2
    )
    assert "--samples 0" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def qdq_nodes(model):
    return [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]


@pytest.mark.parametrize("graph", STEP)
def test_int8_graph_is_symmetric_qdq_on_the_heavy_ops_only(tiny_int8_bundle, graph):
    bundle, _ = tiny_int8_bundle
    model = onnx.load(str(bundle / f"{graph}.int8.onnx"))
    onnx.checker.check_model(model, full_check=True)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    qdq = qdq_nodes(model)
    assert len(qdq) > 100
    for n in qdq:  # zero point 0, int8, on every Q and DQ (what TensorRT requires)
        zp = inits[n.input[2]]
        assert zp.dtype == np.int8 and not zp.any(), f"{n.name}: zero point {zp}"
    for n in model.graph.node:
        dq_in = [producer.get(i) for i in n.input]
        dq_in = [p for p in dq_in if p is not None and p.op_type == "DequantizeLinear"]
        if n.op_type in ("Conv", "MatMul", "Gemm") and dq_in:
            act, weight = producer[n.input[0]], producer[n.input[1]]
            assert act.op_type == "DequantizeLinear" and inits[act.input[1]].ndim == 0  # activations: per tensor
            w = inits[weight.input[0]]
            axis = next((a.i for a in weight.attribute if a.name == "axis"), 1)
            assert w.dtype == np.int8 and inits[weight.input[1]].shape == (w.shape[axis],)  # weights: per channel
            out_axis = {"Conv": 0, "MatMul": 1, "Gemm": 0}[n.op_type]  # the output channels (Gemm: transB=1)
            assert axis == out_axis, f"{n.name}: per-channel axis {axis}"
            if len(n.input) > 2:
                assert n.input[2] in inits and inits[n.input[2]].dtype == np.float32  # bias stays float
        elif n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            assert not dq_in, f"{n.op_type} {n.name} reads a dequantized tensor: only Conv/MatMul/Gemm are int8"
    fp32 = onnx.load(str(bundle / f"{graph}.onnx"))
    _, kept = layers(fp32)
    by_name = {n.name: n for n in model.graph.node}
    for name in kept:  # time embedding, conv_in, conv_out, attention products, Concat-fed convs: float
        assert not any(producer.get(i) is not None and producer[i].op_type == "DequantizeLinear" for i in by_name[name].input)
    reasons = set(kept.values())
    assert {"time embedding", "conv_in", "conv_out"} <= reasons
    # outputs and the solver update stay fp32
    assert [o.type.tensor_type.elem_type for o in model.graph.output] == [TensorProto.FLOAT] * 2


def test_int8_graph_within_bound_and_recorded(tiny_int8_bundle, tiny_model):
    from emote.engines.onnxruntime import OnnxRuntimeBackend
    from emote.export.parity import TOLERANCES, verify_bundle

    bundle_path, calib = tiny_int8_bundle
    bundle = Bundle.open(bundle_path)  # every sha256 checks out, reports included
    for g in STEP:
        entry = bundle.graph(g, "int8")
        fp32 = bundle.graph(g)
        assert entry.precision == "int8" and entry.inputs == fp32.inputs and entry.outputs == fp32.outputs
        q = entry.quantization
        assert q["sqnr_db"]["x_next"] >= q["target_sqnr_db"] == INT8_TARGET_DB and q["sqnr_db"]["x0"] > 15.0
        assert q["calibration"]["samples"] >= 24
    rows = verify_bundle(bundle_path, tiny_model, OnnxRuntimeBackend(), precision="int8", inputs=("real",))
    assert {r.graph for r in rows} == set(STEP)
    assert all(r.ok for r in rows), "\n".join(r.line() for r in rows)
    assert min(r.sqnr_db for r in rows) >= TOLERANCES["int8"].min_sqnr_db


def test_sensitivity_report_is_data(tiny_int8_bundle):
    bundle_path, _ = tiny_int8_bundle
    bundle = Bundle.open(bundle_path)
    q = bundle.graph("denoise_step", "int8").quantization
    assert q["reports"] == ["reports/denoise_step.int8.sensitivity.json", "reports/denoise_step.int8.sensitivity.md"]
    assert all(r in bundle.files for r in q["reports"])
    report = json.loads((bundle_path / q["reports"][0]).read_text())
    candidates, kept = layers(onnx.load(str(bundle_path / "denoise_step.onnx")))
    assert len(report["sensitivity"]) == len(candidates) > 50 and set(report["rule_float"]) == set(kept)
    sqnr = {r["node"]: r["sqnr_db"] for r in report["sensitivity"]}
    assert all(20.0 < s < 150.0 for s in sqnr.values())  # each layer alone costs something, none breaks the model
    floats = report["measured_float"]
    if floats:  # the layers moved to float are the most sensitive ones
        assert max(sqnr[n] for n in floats) <= min(s for n, s in sqnr.items() if n not in floats)
    assert report["search"][-1]["sqnr_db"] >= INT8_TARGET_DB
    md = (bundle_path / q["reports"][1]).read_text()
    assert "| layer | op | weight | SQNR dB | kept float |" in md and "conv_in" in md
    # denoise_step_cond was quantized without the sweep: rules only, no report
    assert bundle.graph("denoise_step_cond", "int8").quantization["reports"] == []


def test_pipeline_and_generate_run_int8(tiny_int8_bundle, tiny_inputs, tmp_path):
    from emote.export.parity import psnr_db
    from emote.runtime import Pipeline
    from emote.runtime.face import Portrait

    bundle, _ = tiny_int8_bundle
    image, mask, audio = tiny_inputs
    portrait = Portrait(image=image, mask=mask, box=(0, 0, 64, 64))
    with Pipeline(bundle, backend="onnxruntime", precision="fp32") as p32:
        a = p32.generate(portrait, audio[:8000])
    with Pipeline(bundle, backend="onnxruntime", precision="int8") as p8:
        assert p8.specs["denoise_step"].precision == p8.specs["denoise_step_cond"].precision == "int8"
        assert p8.specs["vae_decoder"].precision == "fp32"  # graphs without an int8 variant stay fp32
        b = p8.generate(portrait, audio[:8000])
    assert a.shape == b.shape and 20.0 <= psnr_db(a, b) < 99.0  # quantized, and still the same frames


def test_quantize_errors(tiny_int8_bundle, tiny_bundle, tmp_path, capsys):
    bundle, calib = tiny_int8_bundle
    assert main(["quantize", str(bundle), "--precision", "int8"]) == 2
    assert "needs --calib" in capsys.readouterr().err
    assert main(["quantize", str(bundle), "--precision", "int8", "--calib", str(tmp_path)]) == 2
    assert "not a calibration folder" in capsys.readouterr().err
    assert main(["quantize", str(bundle), "--precision", "int8", "--calib", str(calib), "--graphs", "vae_encoder.fp16"]) == 2
    assert "has no fp32 graph vae_encoder.fp16" in capsys.readouterr().err
    # calibration recorded on other graphs (another model) is refused by name
    manifest = json.loads((calib / "calibration.json").read_text())
    manifest["graphs"]["denoise_step"]["sha256"] = "0" * 64
    other = tmp_path / "other"
    import shutil

    shutil.copytree(calib, other)
    (other / "calibration.json").write_text(json.dumps(manifest))
    with pytest.raises(EmoteError, match="recorded on another denoise_step.onnx"):
        from emote.calibration.quantize import quantize_bundle

        quantize_bundle(bundle, other, ("denoise_step",), sensitivity=False)


def test_quantize_fp16_is_the_export_path(tiny_bundle, tmp_path):
    """`emote quantize --precision fp16` and `emote export --precision fp16` make the same graph: one way."""
    import shutil
    from collections import Counter

    import onnxruntime as ort

    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle, copy, ignore=shutil.ignore_patterns("engines"))
    old = onnx.load(str(copy / "denoise_step_cond.fp16.onnx"))

    def entry(bundle):
        g = bundle.graph("denoise_step_cond", "fp16")
        return g.file, g.precision, g.inputs, g.outputs

    before = entry(Bundle.open(copy))
    assert main(["quantize", str(copy), "--precision", "fp16", "--graphs", "denoise_step_cond", "--quiet"]) == 0
    after = Bundle.open(copy)  # new sha256 and bundle hash recorded, every file checks out
    assert entry(after) == before
    new = onnx.load(str(copy / "denoise_step_cond.fp16.onnx"))
    assert Counter(n.op_type for n in new.graph.node) == Counter(n.op_type for n in old.graph.node)
    feeds = {
        i.name: np.random.default_rng(0).standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
        for i in old.graph.input
    }
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)  # noqa: E731
    for a, b in zip(run(old), run(new), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not [p for p in copy.iterdir() if p.name.startswith(".staging")]
