"""EchoMimic in the runtime: an echomimic-tiny bundle through Pipeline against the PyTorch reference
(whisper rows per clip, no motion frames, EchoMimic's unconditional branch), streamed as a file."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emote.export.parity import psnr_db
from emote.models.config import preset
from emote.models.emo import build_model
from emote.models.pipeline import ReferencePipeline, SamplerSpec
from emote.runtime import Pipeline
from emote.runtime.face import Portrait
from emote.runtime.families.echomimic import clip_index, whisper_states


@pytest.fixture(scope="module")
def model():
    m = build_model(preset("echomimic-tiny"), seed=0)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.startswith("face_locator.conv_out"):
                p.normal_(0, 0.05)  # a trained locator is not its zero init: the face path must count
    return m


@pytest.fixture(scope="module")
def bundle(model, tmp_path_factory):
    from emote.export.bundle import export_bundle

    return export_bundle(model, tmp_path_factory.mktemp("echomimic") / "b", weights={"source": "random", "seed": 0}, progress=False)


@pytest.fixture(scope="module")
def inputs():
    from conftest import synthetic_inputs

    r = preset("echomimic-tiny").resolution
    image, mask, audio = synthetic_inputs(r, 1.3)
    return Portrait(image=image, mask=mask, box=(0, 0, r, r)), audio


def reference(model, portrait, audio, guidance: float, hop=None) -> np.ndarray:
    c = model.config
    spec = SamplerSpec(
        "ddim", c.steps, guidance, None, c.prediction_type, c.timestep_spacing, c.zero_snr, c.beta_schedule, c.set_alpha_to_one
    )
    return ReferencePipeline(model, spec)(portrait.image, portrait.mask, audio, seed=3, hop=hop)


def test_whisper_state_count_is_the_encoders(model):
    for n in (5760, 12800 + 319, 16000 + 37, 20160):  # up to the tiny encoder's 64 positions
        with torch.no_grad():
            states = model.audio_encoder.states(torch.zeros(1, n))
        assert whisper_states(n) == states.shape[0], n


@pytest.mark.parametrize("guidance", [2.5, 1.0], ids=["guided (EchoMimic's uncond branch)", "unguided (acc)"])
def test_echomimic_bundle_runs_as_the_pytorch_reference_and_streams_as_a_file(model, bundle, inputs, guidance):
    portrait, audio = inputs
    ref = reference(model, portrait, audio, guidance)
    with Pipeline(bundle, backend="onnxruntime", guidance_scale=guidance, guidance_steps=None, unmarked_research=True) as pipe:
        assert pipe.motion == 0 and "vae_encoder" not in pipe.graphs  # no motion frames: no encoder to run
        got = pipe.generate(portrait, audio, seed=3)
        streamed = np.concatenate(list(pipe.stream(portrait, iter(np.array_split(audio, 65)), seed=3)))
    assert got.shape == ref.shape == (33, 32, 32, 3)
    assert psnr_db(ref, got) >= 40.0
    np.testing.assert_array_equal(streamed, got)


def test_echomimic_with_a_hop_matches_the_reference(model, bundle, inputs):
    """No motion frames: any hop of 1 .. a clip; the clips still hear only their kept frames' audio."""
    portrait, audio = inputs
    ref = reference(model, portrait, audio, 2.5, hop=2)
    with Pipeline(bundle, backend="onnxruntime", guidance_steps=None, unmarked_research=True) as pipe:
        got = pipe.generate(portrait, audio, seed=3, hop=2)
        streamed = np.concatenate(list(pipe.stream(portrait, iter(np.array_split(audio, 65)), seed=3, hop=2)))
    assert psnr_db(ref, got) >= 40.0
    np.testing.assert_array_equal(streamed, got)  # the dropped frames' rows: silence in both, not clamped mid-stream


def test_whisper_rows_are_clamped_to_the_track():
    from emote.runtime.clips import ClipWindows

    w = ClipWindows(4, 0, 25, 2, 3)
    plan = w.plan(16000)  # 25 frames, 7 clips; 50 whisper states
    first = clip_index(w, 0, 16000) + w.window_range(0)[0] // 320
    assert first[0].tolist() == [0, 0, 0, 0, 0, 1, 2, 3, 4, 5]  # frame 0: centre 0, rows -4 .. 5 clamped at 0
    last = clip_index(w, plan.clips - 1, 16000) + w.window_range(plan.clips - 1)[0] // 320
    assert last[0].tolist() == [44, 45, 46, 47, 48, 49, 49, 49, 49, 49]  # frame 24: centre 48, clamped to state 49
    # while a stream goes on (no end known: None), a clip starts once its window has arrived: its rows stay in it
    for c in range(plan.clips):
        received = w.samples_needed(c)
        rows = clip_index(w, c, None) + w.window_range(c)[0] // 320
        assert rows.max() < whisper_states(received), c
