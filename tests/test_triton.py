"""`emote export-triton`: every config.pbtxt parsed by Triton's own model_config.proto, the models
matching the bundle's graphs, the repository's graphs driven by the loop model's logic giving
Pipeline's frames, and bad input refused in one line with nothing written.

No Triton server here (it is not installable from PyPI): the loop model's Triton shim
(emote/export/triton_model.py) is compiled, not run; the loop it drives is run below on
ONNX Runtime sessions of the repository's own model files.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from emote.bundle import SAMPLE_RATE, Bundle
from emote.cli import main
from emote.engines.engine_key import EngineKey, plan_paths, sha256_bytes
from emote.export.triton import LOOP, LOOP_SOURCE, RECORD, model_name

TYPES = {"float32": mc.TYPE_FP32, "float16": mc.TYPE_FP16, "uint8": mc.TYPE_UINT8, "int64": mc.TYPE_INT64}


def parse(folder: Path) -> mc.ModelConfig:
    return text_format.Parse((folder / "config.pbtxt").read_text(), mc.ModelConfig())


def io(tensors) -> list[tuple[str, int, tuple[int, ...]]]:
    return [(t.name, t.data_type, tuple(t.dims)) for t in tensors]


@pytest.fixture(scope="module")
def repository(tiny_bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("triton") / "repo"
    assert main(["export-triton", str(tiny_bundle), str(out), "--precision", "fp16", "--instances", "2"]) == 0
    return out


def test_every_config_parses_and_matches_the_bundle(repository, tiny_bundle):
    bundle = Bundle.open(tiny_bundle)
    folders = sorted(p.name for p in repository.iterdir() if p.is_dir())
    assert folders == sorted([model_name(k) for k in bundle.graphs] + [LOOP])
    for key, spec in bundle.graphs.items():
        folder = repository / model_name(key)
        config = parse(folder)
        assert (config.name, config.platform, config.max_batch_size) == (model_name(key), "onnxruntime_onnx", 0)
        assert io(config.input) == [(t.name, TYPES[t.dtype], t.shape) for t in spec.inputs]
        assert io(config.output) == [(t.name, TYPES[t.dtype], t.shape) for t in spec.outputs]
        assert [(g.kind, g.count) for g in config.instance_group] == [(mc.ModelInstanceGroup.KIND_GPU, 2)]
        assert hashlib.sha256((folder / "1" / "model.onnx").read_bytes()).hexdigest() == spec.sha256
    assert {"denoise_step_fp16", "denoise_step_cond_fp16"} <= set(folders)  # the variants as models of their own

    loop = parse(repository / LOOP)
    assert (loop.name, loop.backend, loop.platform, loop.model_transaction_policy.decoupled) == (LOOP, "python", "", True)
    assert [(g.kind, g.count) for g in loop.instance_group] == [(mc.ModelInstanceGroup.KIND_CPU, 1)]
    assert [(t.name, t.optional) for t in loop.input] == [
        ("image", False),
        ("audio", False),
        ("seed", True),
        ("face_box", True),
        ("speed", True),
    ]
    r = bundle.geometry.resolution
    assert io(loop.output) == [("frames", mc.TYPE_UINT8, (-1, r, r, 3)), ("first_frame", mc.TYPE_INT64, (1,))]
    params = {k: v.string_value for k, v in loop.parameters.items()}
    graphs = {k.split(".", 1)[1]: v for k, v in params.items() if k.startswith("graph.")}
    assert graphs["denoise_step"] == "denoise_step_fp16" and graphs["vae_decoder"] == "vae_decoder"
    assert set(graphs.values()) <= set(folders)
    assert (params["sampler"], params["steps"]) == (bundle.sampler.family, str(bundle.sampler.steps))
    model = repository / LOOP / "1" / "model.py"
    assert model.read_text() == LOOP_SOURCE.read_text()
    compile(model.read_text(), str(model), "exec")  # Triton imports it; here only its syntax can be checked
    record = json.loads((repository / RECORD).read_text())
    assert record["bundle_hash"] == bundle.hash and record["loop"]["graphs"] == graphs
    assert Bundle.open(repository / LOOP / "1" / "bundle", check_hashes=False).graphs.keys() == bundle.graphs.keys()


def test_kind_cpu(tiny_bundle, tmp_path):
    out = tmp_path / "cpu"
    assert main(["export-triton", str(tiny_bundle), str(out), "--kind", "cpu"]) == 0
    assert parse(out / "vae_decoder").instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    assert parse(out / LOOP).parameters["graph.denoise_step"].string_value == "denoise_step"  # fp32 by default


def test_the_repository_run_by_the_loop_gives_pipelines_frames(repository, tiny_bundle):
    """The loop model's logic (GraphLoop) over ONNX Runtime sessions of the repository's model files,
    with the graph -> model map of its config: the frames Pipeline makes of the same bundle, watermark included."""
    import onnxruntime as ort

    from emote.provenance.watermark import Embedder, Key
    from emote.runtime import Pipeline
    from emote.runtime.examples import example_inputs
    from emote.runtime.families import family_for
    from emote.runtime.graph_loop import GraphLoop
    from emote.runtime.pipeline import sampler_table

    bundle = Bundle.open(repository / LOOP / "1" / "bundle", check_hashes=False)
    params = {k: v.string_value for k, v in parse(repository / LOOP).parameters.items()}
    portrait, speech = example_inputs(bundle.geometry.resolution)
    audio = speech[: 7 * SAMPLE_RATE // bundle.geometry.fps]  # 7 frames: 2 clips of 4, the second one trimmed
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # one thread, as reductions then run in one fixed order
    sessions = {}

    def run(graph, feeds):
        model = params[f"graph.{graph}"]
        if model not in sessions:
            path = str(repository / model / "1" / "model.onnx")
            sessions[model] = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        names = [o.name for o in sessions[model].get_outputs()]
        return dict(zip(names, sessions[model].run(names, dict(feeds))))

    table = sampler_table(bundle, params["sampler"], int(params["steps"]))
    loop = GraphLoop.for_precision(bundle, params["precision"], table, family_for(bundle), run)
    with Pipeline(tiny_bundle, backend="onnxruntime", precision="fp16", backend_options={"threads": 1}) as pipe:
        expected = list(pipe.stream(portrait, audio, seed=7))
        payload = pipe.last_payload
    got = list(loop.stream(portrait, audio, seed=7, marker=Embedder(Key.default(), payload)))
    assert [len(f) for f in got] == [len(f) for f in expected] == [4, 3]
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)


def test_plans_of_an_engine_folder_become_tensorrt_plan_models(tiny_bundle, tmp_path):
    """A plan whose key names this bundle's graph is served as tensorrt_plan; one of another bundle is refused.
    (No GPU here: the plan's bytes are a stand-in file, which the exporter copies without reading.)"""
    bundle = Bundle.open(tiny_bundle)
    engines = tmp_path / "engines"
    engines.mkdir()
    plan, key_path = plan_paths(engines, "vae_decoder")
    plan.write_bytes(b"plan bytes")
    spec = bundle.graph("vae_decoder")
    key = EngineKey(
        "vae_decoder", spec.file, spec.sha256, bundle.hash, "NVIDIA H100", "9.0", "10.8.0", plan_sha256=sha256_bytes(b"plan bytes")
    )
    key_path.write_text(key.to_json())
    out = tmp_path / "repo"
    assert main(["export-triton", str(tiny_bundle), str(out), "--engines", str(engines)]) == 0
    config = parse(out / "vae_decoder")
    assert config.platform == "tensorrt_plan" and (out / "vae_decoder" / "1" / "model.plan").read_bytes() == b"plan bytes"
    assert io(config.output) == [("frames", mc.TYPE_UINT8, spec.outputs[0].shape)]
    assert parse(out / "vae_encoder").platform == "onnxruntime_onnx"  # no plan of it: its ONNX
    assert json.loads((out / RECORD).read_text())["plans_built_for"] == {"gpu": "NVIDIA H100", "tensorrt": "10.8.0"}

    key_path.write_text(EngineKey(**{**key.__dict__, "bundle_hash": "0" * 16}).to_json())
    assert main(["export-triton", str(tiny_bundle), str(tmp_path / "other"), "--engines", str(engines)]) == 2
    assert not (tmp_path / "other").exists()


@pytest.mark.parametrize(
    "case, expected",
    [
        ("not a bundle", r"is not a bundle: no manifest\.json"),
        ("existing out", r"exists: pass --force to replace it"),
        ("foreign out", r"exists and is not a Triton model repository: refusing to replace it"),
        ("no int8 graphs", r"has no int8 graphs"),
        ("no instances", r"--instances 0 / --videos 1: at least 1 each"),
    ],
)
def test_bad_input_is_one_line_and_nothing_written(case, expected, tiny_bundle, repository, tmp_path, capsys):
    import re

    out, bundle, extra = tmp_path / "out", tiny_bundle, []
    if case == "not a bundle":
        bundle = tmp_path / "photos"
        bundle.mkdir()
        (bundle / "a.jpg").write_bytes(b"jpeg")
    elif case == "existing out":
        out = repository
    elif case == "foreign out":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
        extra = ["--force"]
    elif case == "no int8 graphs":
        extra = ["--precision", "int8"]
    else:
        extra = ["--instances", "0"]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    stamp = (repository / LOOP / "config.pbtxt").stat().st_mtime_ns
    assert main(["export-triton", str(bundle), str(out), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(expected, err), err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # no temporary folder left either
    assert (repository / LOOP / "config.pbtxt").stat().st_mtime_ns == stamp
