"""Export: the tiny bundle is complete, valid ONNX, verified against PyTorch, and hoisted."""

from __future__ import annotations

import errno
import json
import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from emote.bundle import Bundle, file_sha256
from emote.cli import main
from emote.errors import EmoteError
from emote.export.hoisting import misplaced_work

GRAPHS = ["audio_encoder", "reference_net", "vae_encoder", "clip_condition", "denoise_step", "denoise_step_cond", "vae_decoder"]


def test_bundle_files_and_manifest(tiny_bundle, tiny_config):
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    assert manifest["format"] == "emote-bundle/2" and manifest["family"] == "emo"
    assert manifest["preset"] == "tiny" and manifest["model"]["frames"] == tiny_config.frames
    assert manifest["opset"] >= 17
    assert manifest["weights"] == {"source": "random", "seed": 0}
    assert sorted(manifest["graphs"]) == sorted(GRAPHS + ["denoise_step.fp16", "denoise_step_cond.fp16"])
    assert manifest["graphs"]["denoise_step.fp16"]["precision"] == "fp16"
    for name, sha in manifest["files"].items():
        assert file_sha256(tiny_bundle / name) == sha
    step = manifest["graphs"]["denoise_step"]
    names = [i["name"] for i in step["inputs"]]
    assert names[:4] == ["x", "row", "x0_prev", "noise"]
    f, h = tiny_config.frames, tiny_config.latent_size
    assert step["inputs"][0]["shape"] == [f, 4, h, h]
    assert [o["name"] for o in step["outputs"]] == ["x_next", "x0"]
    assert manifest["graphs"]["vae_decoder"]["outputs"][0] == {"name": "frames", "shape": [f, 64, 64, 3], "dtype": "uint8"}
    assert "sampler" not in manifest  # the sampler defaults are the model config's, recorded once
    bundle = Bundle.open(tiny_bundle)
    assert (bundle.sampler.family, bundle.sampler.steps, bundle.sampler.spacing) == (
        tiny_config.sampler,
        tiny_config.steps,
        tiny_config.timestep_spacing,
    )
    assert bundle.geometry.frames == f and bundle.geometry.samples_per_frame == 640


@pytest.mark.parametrize("graph", GRAPHS)
def test_graphs_pass_the_full_onnx_checker(tiny_bundle, graph):
    model = onnx.load(str(tiny_bundle / f"{graph}.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    for value in list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        assert all(d.HasField("dim_value") for d in dims), f"{value.name} has a dynamic dimension"


def test_verify_passes_on_random_and_real_inputs(tiny_bundle, tiny_model):
    from emote.engines.onnxruntime import OnnxRuntimeBackend
    from emote.export.parity import verify_bundle

    rows = verify_bundle(tiny_bundle, tiny_model, OnnxRuntimeBackend())
    assert {r.inputs for r in rows} == {"random", "real"}
    assert {r.graph for r in rows} == set(GRAPHS)
    bad = [r.line() for r in rows if not r.ok]
    assert not bad, "\n".join(bad)
    floats = [r for r in rows if r.output not in ("frames",)]
    assert min(r.sqnr_db for r in floats) >= 60.0


def test_verify_cli_exit_codes(tiny_bundle, tmp_path, capsys):
    from emote.models.checkpoint import save_checkpoint
    from emote.models.config import preset
    from emote.models.emo import build_model

    assert main(["verify", str(tiny_bundle), "--inputs", "random"]) == 0
    out = capsys.readouterr().out
    assert "0 failed" in out and all(k in out for k in ("max_abs", "max_rel", "sqnr"))
    assert out.count("ok  ") == len([ln for ln in out.splitlines() if ln.startswith(("ok", "FAIL"))]) >= len(GRAPHS)
    # other weights than the bundle was exported from: past tolerance, named per output, exit 1
    save_checkpoint(build_model(preset("tiny"), seed=1), tmp_path / "other")
    assert main(["verify", str(tiny_bundle), "--checkpoint", str(tmp_path / "other"), "--inputs", "random"]) == 1
    out = capsys.readouterr().out
    assert "FAIL denoise_step " in out and " 0 failed" not in out
    # --graphs: only those (a bundle too large to hold every graph's reference at once), unknown names refused
    assert main(["verify", str(tiny_bundle), "--inputs", "random", "--graphs", "vae_decoder,audio_encoder"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith(("ok", "FAIL"))]
    assert lines and {ln.split()[1] for ln in lines} == {"vae_decoder", "audio_encoder"}
    assert main(["verify", str(tiny_bundle), "--graphs", "vae_decoder,unet"]) == 2
    assert "has no graph unet" in capsys.readouterr().err


def test_parity_tolerances():
    """fp32: max relative error <= 1e-3 AND SQNR >= 60 dB; fp16: SQNR >= 35 dB (issue #3)."""
    from emote.export.parity import compare

    ref = np.sin(np.linspace(0, 20, 1000)).astype(np.float32)  # mean square 0.5

    def ok(got, precision="fp32"):
        (row,) = compare("g", {"y": ref}, {"y": got.astype(np.float32)}, precision)
        return row.ok

    spike = ref.copy()
    spike[10] += 2e-3  # relative error 2e-3, SQNR 81 dB: fails on relative error alone
    assert ok(ref + 1e-4) and not ok(spike)
    assert not ok(ref + 9e-4)  # relative error 9e-4 but SQNR 57.9 dB: fails on SQNR alone
    assert ok(ref + 5e-3, "fp16") and not ok(ref + 3e-2, "fp16")  # SQNR 43 dB and 27 dB
    (row,) = compare("g", {"y": ref}, {"y": ref[:999]})
    assert not row.ok  # a shape mismatch never passes


def test_export_geometry_errors(capsys, tmp_path):
    assert main(["export", "--preset", "tiny", "--height", "48", "--width", "64", "--out", str(tmp_path / "b")]) == 2
    assert "--height 48 and --width 64 differ" in capsys.readouterr().err
    assert main(["export", "--preset", "tiny", "--height", "40", "--out", str(tmp_path / "b")]) == 2
    assert "resolution 40 must divide" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("graph", ["denoise_step", "denoise_step_cond"])
def test_step_graph_holds_only_per_step_work(tiny_bundle, graph):
    model = onnx.load(str(tiny_bundle / f"{graph}.onnx"))
    assert misplaced_work(model) == []
    heavy = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm", "Conv")]
    assert len(heavy) > 50  # the backbone is in there


def test_hoisting_check_finds_per_clip_work():
    """A step graph that projects a per-clip tensor itself is flagged."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [8, 8], np.ones(64, np.float32))
    nodes = [
        helper.make_node("MatMul", ["audio_tokens", "w"], ["k"], name="project_audio"),  # per clip: misplaced
        helper.make_node("MatMul", ["x", "k"], ["y"], name="attend"),  # per step: fine
    ]
    graph = helper.make_graph(
        nodes,
        "naive",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [8, 8]) for n in ("x", "audio_tokens")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 8])],
        [w],
    )
    assert misplaced_work(helper.make_model(graph)) == ["MatMul project_audio"]


def test_export_errors(tiny_bundle, tmp_path, capsys):
    assert main(["export", "--preset", "huge", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("emote: error: unknown preset 'huge': choose one of tiny, demo, demo-fast, emo-sd15") and "\n" not in err
    assert main(["export", "--preset", "tiny", "--out", str(tiny_bundle)]) == 2
    assert "exists: pass --force" in capsys.readouterr().err
    assert main(["export", "--preset", "tiny", "--checkpoint", str(tmp_path / "none"), "--out", str(tmp_path / "b")]) == 2
    assert "none is not a checkpoint: no config.json" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_export_rejects_a_mismatched_checkpoint(tmp_path, capsys):
    from emote.models.checkpoint import save_checkpoint
    from emote.models.config import preset
    from emote.models.emo import build_model

    save_checkpoint(build_model(preset("tiny")), tmp_path / "ck")
    assert main(["export", "--preset", "demo", "--checkpoint", str(tmp_path / "ck"), "--out", str(tmp_path / "b")]) == 2
    assert "is for preset 'tiny', not 'demo'" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_full_disk_inside_the_exporter_leaves_nothing(tiny_model, tmp_path, monkeypatch):
    """The disk fills while the first graph's file is being written (after torch's real export),
    the error arrives wrapped in another exception: one clear message, nothing left behind."""
    import emote.export.bundle as bundle_mod

    def save_until_full(model, path, *a, **kw):
        with open(path, "wb") as f:
            f.write(model.SerializeToString()[:100])
        try:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        except OSError as e:
            raise RuntimeError("serialisation failed") from e

    monkeypatch.setattr(bundle_mod.onnx, "save_model", save_until_full)
    with pytest.raises(EmoteError, match=re.escape(f"disk full while writing the bundle to {tmp_path}: nothing was written")):
        bundle_mod.export_bundle(tiny_model, tmp_path / "bundle", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_full_disk_leaves_nothing(tiny_model, tiny_bundle, tmp_path, monkeypatch):
    import shutil

    import emote.export.bundle as bundle_mod

    calls = []

    def full(graph, path):
        calls.append(graph.name)
        if len(calls) == 3:
            path.write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        shutil.copy(tiny_bundle / f"{graph.name}.onnx", path)

    monkeypatch.setattr(bundle_mod, "export_graph", full)
    with pytest.raises(EmoteError, match="disk full"):
        bundle_mod.export_bundle(tiny_model, tmp_path / "bundle", progress=False)
    assert calls == GRAPHS[:3]
    assert list(tmp_path.iterdir()) == []  # no bundle, no temp folder


def test_tampered_bundle_is_refused(tiny_bundle, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_bundle, copy)
    with open(copy / "vae_decoder.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(EmoteError, match="vae_decoder.onnx does not match its sha256"):
        Bundle.open(copy)
    (copy / "audio_encoder.onnx").unlink()
    with pytest.raises(EmoteError, match="missing"):
        Bundle.open(copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["format"] = "emote-bundle/0"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EmoteError, match="format 'emote-bundle/0'"):
        Bundle.open(copy)


@pytest.mark.parametrize("graph", ["denoise_step.fp16", "denoise_step_cond.fp16"])
def test_fp16_step_graph_keeps_solver_norms_and_softmax_in_fp32(tiny_bundle, graph):
    model = onnx.shape_inference.infer_shapes(onnx.load(str(tiny_bundle / f"{graph}.onnx")))
    types = {
        v.name: v.type.tensor_type.elem_type for v in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)
    }
    types.update({t.name: t.data_type for t in model.graph.initializer})
    producer = {o: n for n in model.graph.node for o in n.output}
    FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16
    # the solver update: every tensor from the backbone's (cast) output to x_next and x0 is fp32
    frontier, seen = ["x_next", "x0"], set()
    while frontier:
        t = frontier.pop()
        if t in seen or t not in producer:
            continue
        seen.add(t)
        node = producer[t]
        assert types.get(t) == FLOAT, f"{t} ({node.op_type}) is not fp32"
        if node.op_type != "Cast":  # stop at the cast of the model output to fp32
            frontier += [i for i in node.input if i]
    assert len(seen) >= 6
    for node in model.graph.node:
        if node.op_type in ("Softmax", "LayerNormalization", "InstanceNormalization", "GroupNormalization"):
            assert types.get(node.input[0]) == FLOAT, f"{node.op_type} {node.name} computes in fp16"
    heavy = [types.get(n.input[1]) for n in model.graph.node if n.op_type in ("MatMul", "Conv")]
    assert heavy.count(HALF) > 0.8 * len(heavy)  # the backbone's weights and GEMMs are fp16
    assert [i.type.tensor_type.elem_type for i in model.graph.input][:4] == [FLOAT] * 4  # I/O stays fp32


def test_fp16_graphs_within_bound(tiny_bundle, tiny_model):
    from emote.engines.onnxruntime import OnnxRuntimeBackend
    from emote.export.parity import verify_bundle

    rows = verify_bundle(tiny_bundle, tiny_model, OnnxRuntimeBackend(), precision="fp16")
    assert {r.graph for r in rows} == {"denoise_step", "denoise_step_cond"}
    assert all(r.ok for r in rows) and min(r.sqnr_db for r in rows) >= 35.0


def test_folding_keeps_external_weights_beside_the_graph(tmp_path):
    """Graphs over 2 GB keep their weights in <graph>.onnx.data: folded in place, the weights still there."""
    import onnxruntime as ort
    from onnx import numpy_helper

    from emote.export.bundle import fold_constants

    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 64)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Transpose", ["w"], ["wt"]), helper.make_node("MatMul", ["x", "wt"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 64])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    path = tmp_path / "g.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, location="g.onnx.data", size_threshold=0)
    fold_constants(path, external=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.onnx", "g.onnx.data"]
    folded = onnx.load(str(path), load_external_data=False)
    assert [n.op_type for n in folded.graph.node] == ["MatMul"]  # the transpose folded into the weight
    locations = {e.value for t in folded.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"g.onnx.data"}
    x = rng.standard_normal((2, 64)).astype(np.float32)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, x @ w.T, rtol=1e-5, atol=1e-5)
