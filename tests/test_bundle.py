"""The typed bundle, the precision policy and the backend resolver: what every layer reads, decided once."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from emote import precision as policy
from emote.bundle import FORMAT, MANIFEST, Bundle, bundle_hash
from emote.engines.probe import has_module
from emote.errors import EmoteError
from emote.runtime import Pipeline

PACKAGE = Path(__file__).resolve().parent.parent / "emote"


def rewrite(folder: Path, edit) -> None:
    """Edit a copy's manifest as a user or an older emote might have left it (bundle hash kept consistent)."""
    data = json.loads((folder / MANIFEST).read_text())
    edit(data)
    data["bundle_hash"] = bundle_hash(data["files"])
    (folder / MANIFEST).write_text(json.dumps(data))


@pytest.fixture
def copy(tiny_bundle, tmp_path):
    out = tmp_path / "b"
    shutil.copytree(tiny_bundle, out, ignore=shutil.ignore_patterns("engines"))
    return out


def test_open_gives_typed_fields(tiny_bundle, tiny_config):
    b = Bundle.open(tiny_bundle)
    assert b.format == FORMAT and b.preset == "tiny" and b.family == "emo"
    g = b.geometry
    assert (g.resolution, g.frames, g.motion_frames, g.fps) == (64, tiny_config.frames, tiny_config.motion_frames, 25)
    assert (g.left_context, g.lookahead, g.samples_per_frame) == (tiny_config.audio.left_context, tiny_config.audio.window, 640)
    assert g.audio_windowing == "clip" and "audio_features" not in b.names  # EMO's presets keep their clip windows
    assert b.sampler.family == tiny_config.sampler and b.sampler.steps == tiny_config.steps
    step = b.graph("denoise_step", "fp16")
    assert step.key == "denoise_step.fp16" and step.name == "denoise_step" and step.precision == "fp16"
    assert step.path == tiny_bundle / "denoise_step.fp16.onnx" and step.sha256 == b.files[step.file]
    assert step.bundle_hash == b.hash and [t.name for t in step.outputs] == ["x_next", "x0"]
    assert b.precisions == ("fp32", "fp16") and b.has("denoise_step", "fp16") and not b.has("vae_decoder", "fp16")
    with pytest.raises(EmoteError, match=r"has no int8 denoise_step graph \(it has: fp32, fp16\)"):
        b.graph("denoise_step", "int8")
    with pytest.raises(EmoteError, match="has no graph 'unet'"):
        b.graph("unet")


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d["model"].pop("fps"), "manifest.json has no field model.fps"),
        (lambda d: d["model"].update(frames="8"), "field model.frames is '8', expected int"),
        (lambda d: d["model"]["audio"].update(window=None), "field model.audio.window is None, expected int"),
        (lambda d: d["model"].update(fps=7), "field model.fps is 7: it must divide 16000"),
        (lambda d: d["graphs"]["vae_decoder"]["outputs"][0].update(shape=[-1, 3]), "graphs.vae_decoder.outputs.shape is [-1, 3]"),
        (lambda d: d["graphs"]["vae_decoder"].update(file="gone.onnx"), "graph vae_decoder names gone.onnx"),
        (lambda d: d.update(family="musetalk"), "field family is 'musetalk'"),
        (lambda d: d["model"]["audio"].update(windowing="sliding"), "field model.audio.windowing is 'sliding'"),
        (lambda d: d.update(format="emote-bundle/9"), "format 'emote-bundle/9'; this version of emote reads 'emote-bundle/2'"),
    ],
)
def test_a_bad_manifest_is_one_line_naming_the_field(copy, edit, message):
    rewrite(copy, edit)
    with pytest.raises(EmoteError) as e:
        Bundle.open(copy)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_hand_edited_manifest_fails_its_hash(copy):
    data = json.loads((copy / MANIFEST).read_text())
    data["files"]["extra.onnx"] = "0" * 64
    (copy / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(EmoteError, match="bundle_hash does not match its files"):
        Bundle.open(copy)


def test_a_format_1_bundle_opens_as_format_2_and_is_rewritten_when_graphs_are_added(copy, tiny_bundle):
    """emote-bundle/1 also held the sampler defaults in a "sampler" block and no family: read the same."""

    def to_v1(d):
        m = d["model"]
        d["format"] = "emote-bundle/1"
        d.pop("family")
        d["sampler"] = {"family": m["sampler"], "steps": m["steps"], "spacing": m["timestep_spacing"]}
        for key in ("windowing", "chunk", "chunk_context"):  # bundles made before the audio windowing was recorded
            m["audio"].pop(key)

    rewrite(copy, to_v1)
    old, new = Bundle.open(copy), Bundle.open(tiny_bundle)
    assert old.format == "emote-bundle/1"
    assert (old.family, old.geometry, old.sampler) == (new.family, new.geometry, new.sampler)
    from emote.bundle import add_graphs

    add_graphs(old, {}, {})
    again = json.loads((copy / MANIFEST).read_text())
    assert again["format"] == FORMAT and again["family"] == "emo" and "sampler" not in again
    assert Bundle.open(copy).graphs == old.graphs


def test_manifest_json_is_read_and_written_by_the_bundle_module_only():
    """No other module of the package names the manifest file or reaches into a manifest dict."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "bundle.py" and path.parent == PACKAGE:
            continue
        tree = ast.parse(path.read_text())
        if any(isinstance(n, ast.Constant) and n.value == MANIFEST for n in ast.walk(tree)):
            offenders.append(str(path.relative_to(PACKAGE)))
        if any(
            isinstance(n, ast.Attribute) and n.attr == "manifest" and isinstance(n.value, ast.Name) and n.value.id == "bundle"
            for n in ast.walk(tree)
        ):
            offenders.append(f"{path.relative_to(PACKAGE)} (bundle.manifest)")
    assert offenders == []


def test_the_audio_rate_is_one_named_constant():
    """16 kHz is written once (emote/bundle.py, with its derivation); everything else imports SAMPLE_RATE."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        if any(isinstance(n, ast.Constant) and n.value == 16000 and type(n.value) is int for n in ast.walk(tree)):
            found.append(str(path.relative_to(PACKAGE)))
    assert found == ["bundle.py"]


# -- the precision policy ---------------------------------------------------------------------------
def test_precision_policy_picks_the_graph_files(tiny_bundle):
    b = Bundle.open(tiny_bundle)
    fp16 = policy.graphs_for(b, "onnxruntime", "fp16")
    assert fp16["denoise_step"].key == "denoise_step.fp16" and fp16["denoise_step_cond"].key == "denoise_step_cond.fp16"
    assert fp16["vae_decoder"].key == "vae_decoder"  # no fp16 variant: fp32
    hinted = policy.graphs_for(b, "openvino", "bf16")
    assert all(s.precision == "fp32" for s in hinted.values()) and policy.hinted("openvino", "bf16")
    with pytest.raises(EmoteError, match="has no int8 graphs .* emote quantize --precision int8"):
        policy.graphs_for(b, "onnxruntime", "int8")
    with pytest.raises(EmoteError, match="onnxruntime cannot run bf16.*use --backend openvino for bf16"):
        policy.graph_precision("onnxruntime", "bf16")
    assert policy.runnable(b, "onnxruntime") == ["fp32", "fp16"]
    assert policy.runnable(b, "openvino", ["fp32", "int8"]) == ["fp32"]  # no int8 graphs, no native bf16
    assert policy.runnable(b, "openvino", ["fp32", "bf16", "int8"]) == ["fp32", "bf16"]


# -- the resolver: every mistake one EmoteError ------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"backend": "cudnn"}, "unknown backend 'cudnn': one of onnxruntime, openvino, tensorrt"),
        ({"backend": "onnxruntime", "backend_options": {"streams": 2}}, "onnxruntime has no option 'streams'"),
        ({"backend_options": {"warp_speed": 9}}, "unknown backend option warp_speed"),
        ({"backend_options": {"providers": ["cpu"], "streams": 2}}, "no one backend takes all of the options providers, streams"),
        ({"backend_options": {"threads": "two"}, "backend": "onnxruntime"}, "option 'threads' is 'two': expected int"),
        ({"backend": "onnxruntime", "precision": "bf16"}, "onnxruntime cannot run bf16"),
        ({"precision": "int4"}, "unknown precision 'int4'"),
        ({"backend": "onnxruntime", "precision": "int8"}, "has no int8 graphs"),
    ],
)
def test_pipeline_mistakes_are_one_line_errors(tiny_bundle, kwargs, message):
    with pytest.raises(EmoteError) as e:
        Pipeline(tiny_bundle, **kwargs)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_options_name_their_backend(tiny_bundle, tiny_inputs, monkeypatch):
    """Options without a backend run on the backend they belong to, or are one EmoteError: never a TypeError."""
    from emote.runtime.face import Portrait

    image, mask, _ = tiny_inputs
    if has_module("openvino"):
        with Pipeline(tiny_bundle, steps=2, backend_options={"device": "CPU"}) as p:
            assert p.backend.name == "openvino"
            assert p.generate(Portrait(image, mask, (0, 0, 64, 64)), np.zeros(3200, np.float32)).shape == (5, 64, 64, 3)
    with Pipeline(tiny_bundle, steps=2, backend_options={"providers": ["cpu"]}) as p:
        assert p.backend.name == "onnxruntime"
    import sys

    monkeypatch.setitem(sys.modules, "openvino", None)  # an install without the openvino extra
    with pytest.raises(EmoteError, match="OpenVINO is not installed"):
        Pipeline(tiny_bundle, backend_options={"device": "CPU"})


def test_family_options_are_checked_before_any_work(tiny_bundle, tiny_inputs):
    from emote.runtime.face import Portrait

    image, mask, _ = tiny_inputs
    with pytest.raises(EmoteError, match=r"\(tiny\) takes no face embedding \(the emo family takes no options\)"):
        Pipeline(tiny_bundle, backend="onnxruntime", face_embedding=np.zeros(512, np.float32))
    with Pipeline(tiny_bundle, backend="onnxruntime", steps=2) as p:
        with pytest.raises(EmoteError, match=r"takes no region weights \(its inputs: speed\)"):
            next(p.stream(Portrait(image, mask, (0, 0, 64, 64)), np.zeros(3200, np.float32), region_weights=(1, 1, 1)))
