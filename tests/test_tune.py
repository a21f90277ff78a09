"""`emote tune`: the measured default, stored under this machine's key, used when no backend is named."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest

from emote.bundle import Bundle
from emote.cli import main
from emote.engines.probe import cpu_class
from emote.engines.tuned import library_versions, read_tuned, tune_key, user_cache, write_tuned
from emote.runtime import backend_choice
from emote.runtime.backend_choice import resolve
from emote.runtime.pipeline import Pipeline

QUICK = ["--seconds", "0.4", "--repeat", "1", "--warmup", "0"]


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path):
    """The tiny bundle copied (its compiled-model caches too, but no tuned choice): a tune here leaves the shared one untuned."""
    path = tmp_path / "tiny"
    shutil.copytree(tiny_bundle, path, ignore=shutil.ignore_patterns("tuned-*.json"))
    return path


def test_tune_picks_stores_under_the_machine_key_and_the_default_follows(bundle_copy, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # nothing leaks into the user's cache
    bundle = Bundle.open(bundle_copy)
    backend_choice._said_untuned.discard(bundle.hash)  # this process may have run the tiny bundle untuned already
    untuned = resolve(bundle=bundle)
    assert untuned.reason.startswith("default: ")  # the CPU-flag rule, said once
    resolve(bundle=bundle)
    err = capsys.readouterr().err
    assert err.count("is not tuned on this machine") == 1 and f"emote tune {bundle_copy}" in err

    assert main(["tune", str(bundle_copy), "--candidates", "ov-fp32-t1", *QUICK, "--json"]) == 0  # and the reference
    record = json.loads(capsys.readouterr().out)
    assert set(record["candidates"]) == {record["reference"], "ov-fp32-t1"} and record["reference"].startswith("ort-fp32-t")
    winner = record["candidates"][record["winner"]]
    assert winner["rejected"] is None and all(c["p50_s"] > 0 for c in record["candidates"].values())
    assert record["candidates"][record["reference"]]["frame_psnr_db"] == float("inf")

    key = tune_key(bundle.hash)
    assert (key.cpu, key.versions) == (cpu_class().model, library_versions())
    stored, path = read_tuned(bundle_copy, key)
    assert path == bundle_copy / "engines" / key.name and stored.candidate == record["winner"]
    assert (stored.backend, stored.precision, stored.options) == (winner["backend"], winner["precision"], winner["options"])

    chosen = resolve(bundle=bundle)
    assert (chosen.backend, chosen.precision, chosen.options) == (stored.backend, stored.precision, stored.options)
    assert chosen.reason.startswith(f"tuned: {stored.candidate}")
    assert resolve(options={"threads": 1}, bundle=bundle).options["threads"] == 1  # a named option overrides the tuned one
    with Pipeline(bundle, steps=1, unmarked_research=True) as pipe:
        assert (pipe.backend.name, pipe.precision, pipe.backend.threads) == (stored.backend, stored.precision, stored.options["threads"])
    assert "not tuned" not in capsys.readouterr().err

    # the same choice under another CPU's name or another library version is never this machine's
    path.unlink()
    other_cpu = tune_key(bundle.hash, cpu="Another CPU")
    other_ort = tune_key(bundle.hash, versions={**key.versions, "onnxruntime": "0.0.1"})
    for other in (other_cpu, other_ort):
        assert other.name != key.name and key.mismatch(other) is not None
        write_tuned(bundle_copy, replace(stored, key=other))
        assert read_tuned(bundle_copy, other)[0] is not None
    (bundle_copy / "engines" / key.name).write_text((bundle_copy / "engines" / other_cpu.name).read_text())  # right name, wrong key
    assert read_tuned(bundle_copy, key) == (None, None)
    assert resolve(bundle=bundle).reason == untuned.reason


def test_tune_falls_back_to_the_user_cache_where_the_bundle_cannot_hold_it(bundle_copy, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    bundle = Bundle.open(bundle_copy)
    shutil.rmtree(bundle_copy / "engines", ignore_errors=True)
    (bundle_copy / "engines").write_text("not a folder")  # nothing can be written beside the bundle (even as root)
    key = tune_key(bundle.hash)
    from emote.engines.tuned import Tuned

    path = write_tuned(bundle_copy, Tuned(key, "onnxruntime", "fp32", {"threads": 1}, "ort-fp32-t1"))
    assert path == user_cache() / key.name and path.is_relative_to(tmp_path / "cache")
    assert resolve(bundle=bundle).reason.startswith("tuned: ort-fp32-t1")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--candidates", "gpu-fp32-t1"], "unknown candidate 'gpu-fp32-t1': name it BACKEND-PRECISION-tTHREADS"),
        (["--candidates", "ort-fp32-t4096"], "candidate ort-fp32-t4096 cannot run here: 4096 threads"),
        (["--candidates", "ort-fp32-t1-s2"], "streams are OpenVINO's"),
        (["--candidates", "ort-bf16-t1"], "candidate ort-bf16-t1 cannot run here: onnxruntime cannot run bf16"),
    ],
)
def test_tune_refuses_unknown_candidates_in_one_line(tiny_bundle, capsys, args, message):
    assert main(["tune", str(tiny_bundle), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_tune_refuses_a_folder_that_is_not_a_bundle(tmp_path, capsys):
    assert main(["tune", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path} is not a bundle" in err and err.count("\n") == 1


def test_onnxruntime_keeps_its_optimized_graphs_for_the_next_process(bundle_copy, tiny_inputs):
    """The first session of each graph saves ONNX Runtime's optimized graph beside the bundle, keyed by CPU, version
    and bundle; later sessions load it (same frames); a damaged entry is rebuilt, not trusted."""
    import numpy as np
    import onnxruntime as ort

    from emote.engines.engine_key import slug
    from emote.runtime.face import Portrait

    image, mask, audio = tiny_inputs
    image = Portrait(image=image, mask=mask, box=(0, 0, 64, 64))
    bundle = Bundle.open(bundle_copy)
    cache = bundle_copy / "engines" / f"onnxruntime-{slug(cpu_class().model)}-ort{ort.__version__}-{bundle.hash}"
    shutil.rmtree(cache, ignore_errors=True)  # the copy carries what earlier tests cached for the shared bundle
    frames = []
    for _ in range(2):
        with Pipeline(bundle, backend="onnxruntime", steps=2, unmarked_research=True) as pipe:
            frames.append(pipe.generate(image, audio[:4000]))
        assert sorted(p.name for p in cache.glob("*.onnx")) == sorted(s.file for s in pipe.specs.values())
    assert np.array_equal(frames[0], frames[1])
    (cache / "denoise_step.onnx").write_bytes(b"damaged")
    with Pipeline(bundle, backend="onnxruntime", steps=2, unmarked_research=True) as pipe:
        assert np.array_equal(pipe.generate(image, audio[:4000]), frames[0])
    assert (cache / "denoise_step.onnx").stat().st_size > 1000
