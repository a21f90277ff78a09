"""The embedded demo model: shipped weights within budget, and a video whose mouth follows the speech."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from emote.bench.lipsync import score
from emote.cli import main
from emote.models.checkpoint import load_checkpoint, shipped_checkpoint
from emote.models.config import preset
from emote.runtime import Pipeline
from emote.runtime.examples import example_inputs

BUDGET = 25 * 2**20  # bytes of shipped weights the product may carry


def test_shipped_weights_fit_the_budget_and_load_as_float32():
    path = shipped_checkpoint("demo")
    assert path is not None, "the demo preset ships trained weights (emote/weights/demo)"
    weights = sum(f.stat().st_size for f in path.iterdir() if f.suffix == ".safetensors")
    assert weights <= BUDGET
    model = load_checkpoint(path, expect=preset("demo"))
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    card = (path / "README.md").read_text()
    assert "lip sync" in card.lower() and "make weights" in card
    facts = json.loads((path / "training.json").read_text())
    assert {"vae", "image", "video"} <= set(facts["stages"])


def test_the_default_is_the_one_step_student_of_the_shipped_teacher():
    """`emote demo` runs demo-fast: the demo architecture at one unguided step, distilled from these very teacher weights."""
    from emote.bundle import file_sha256
    from emote.demo import PRESET

    assert PRESET == "demo-fast"
    path = shipped_checkpoint(PRESET)
    assert path is not None and sum(f.stat().st_size for f in path.iterdir() if f.suffix == ".safetensors") <= BUDGET
    student, teacher = preset("demo-fast"), preset("demo")
    assert (student.sampler, student.steps, student.guidance_scale, student.set_alpha_to_one) == ("ddim", 1, 1.0, True)
    assert (student.unet, student.vae, student.audio) == (teacher.unet, teacher.vae, teacher.audio)
    load_checkpoint(path, expect=student)
    facts = json.loads((path / "training.json").read_text())
    assert facts["distilled_from"]["sha256"] == file_sha256(shipped_checkpoint("demo") / "model.safetensors")
    card = (path / "README.md").read_text()
    assert "lip sync" in card.lower() and "make weights" in card and "teacher" in card


@pytest.mark.slow
def test_the_student_in_one_step_makes_the_teachers_frames():
    """The model card's claim on the example portrait and 2 s of speech: one unguided pass a clip gives the
    teacher's video (4 DPM-Solver++ steps, guidance 2.5 on the first: 5 passes) within 30 dB, mouth moving as much."""
    from training.distill import generate, student_config, table_of

    portrait, audio = example_inputs(128)
    audio = audio[: 2 * 16000]
    teacher = load_checkpoint(shipped_checkpoint("demo"), expect=preset("demo")).eval()
    student = load_checkpoint(shipped_checkpoint("demo-fast"), expect=preset("demo-fast")).eval()
    t = generate(teacher, table_of(teacher.config), portrait.image, portrait.mask, audio, uncond=teacher.uncond_audio_kv())
    s = generate(student, table_of(student_config(1)), portrait.image, portrait.mask, audio)
    assert s.shape == t.shape == (50, 128, 128, 3)
    mse = np.mean((s.astype(np.float64) - t.astype(np.float64)) ** 2)
    assert 10 * np.log10(255.0**2 / mse) > 30.0
    st, ss = score(t, audio, portrait.image, portrait.mask), score(s, audio, portrait.image, portrait.mask)
    assert ss.correlation > 0.9 and ss.correlation > st.correlation - 0.05, (ss, st)
    assert ss.identity > st.identity - 0.05, (ss, st)


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    """`emote demo`'s output folder with its bundle of the shipped weights already exported (as after a first run)."""
    from emote.demo import PRESET
    from emote.export.bundle import ensure_bundle

    out = tmp_path_factory.mktemp("demo")
    ensure_bundle(out / "bundle", PRESET)
    assert json.loads((out / "bundle" / "manifest.json").read_text())["weights"]["source"] == "shipped"
    return out


@pytest.fixture(scope="module")
def demo_bundle(demo_out):
    return demo_out / "bundle"


def test_the_mouth_follows_the_example_speech(demo_bundle):
    """The runtime's default settings on the example portrait and 4 s of the example speech."""
    portrait, audio = example_inputs(128)
    audio = audio[: 4 * 16000]
    with Pipeline(demo_bundle) as pipe:
        frames = pipe.generate(portrait, audio)
    assert frames.shape == (100, 128, 128, 3)
    s = score(frames, audio, portrait.image, portrait.mask)
    assert s.correlation > 0.6, f"lip-sync correlation {s.correlation:.2f}"
    assert s.identity > 0.5, f"identity similarity {s.identity:.2f}"


def test_emote_demo_writes_the_video_and_scores_its_lip_sync(demo_out, capsys):
    """What `make demo` runs: the MP4 a user opens, read back and scored, the bundle reused."""
    import re

    import av

    assert main(["demo", "--out", str(demo_out)]) == 0
    out = capsys.readouterr().out
    assert f"using the cached bundle {demo_out / 'bundle'}" in out
    with av.open(str(demo_out / "demo.mp4")) as c:
        assert c.streams.video[0].codec_context.width == 128 and c.streams.audio
    r = float(re.search(r"lip sync: r = (-?[0-9.]+)", out).group(1))
    assert r > 0.6, out


def test_bench_scores_lip_sync_of_trained_weights_only(demo_bundle):
    """`emote bench`'s fidelity columns: lip sync for the shipped weights' frames, none for random weights."""
    from dataclasses import replace

    from emote.bench.run import lip_sync
    from emote.bundle import Bundle

    portrait, audio = example_inputs(128)
    audio = audio[: 2 * 16000]
    with Pipeline(demo_bundle, backend="onnxruntime") as pipe:
        frames = pipe.generate(portrait, audio)
    bundle = Bundle.open(demo_bundle)
    sync = lip_sync(bundle, {"runtime": frames, "still": np.repeat(portrait.image[None], len(frames), 0)}, audio, portrait)
    assert sync["runtime"]["correlation"] > 0.6 and sync["runtime"]["identity"] > 0.5
    assert sync["still"]["correlation"] == 0.0  # a still face follows nothing
    random = replace(bundle, weights={"source": "random", "seed": 0})
    assert lip_sync(random, {"runtime": frames}, audio, portrait) == {}
