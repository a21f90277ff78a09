"""EchoMimic in the runtime: an echomimic-tiny bundle through Pipeline against the PyTorch reference
(whisper rows per clip, no motion frames, EchoMimic's unconditional branch), streamed as a file."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from emote.export.parity import psnr_db
from emote.models.config import preset
from emote.models.emo import build_model
from emote.models.pipeline import ReferencePipeline, SamplerSpec
from emote.runtime import Pipeline
from emote.runtime.face import Portrait
from emote.runtime.families.echomimic import clip_index, whisper_states


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """A synthetic EchoMimic release (its files' keys, echomimic-tiny widths) through `emote import-echomimic`
    and `emote export`: the checkpoint folder and the bundle."""
    from test_echomimic import write_release

    from emote.cli import main

    m = build_model(preset("echomimic-tiny"), seed=0)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.startswith("face_locator.conv_out"):
                p.normal_(0, 0.05)  # a trained locator is not its zero init: the face path must count
    root = tmp_path_factory.mktemp("echomimic")
    write_release(m, root / "pretrained_weights")
    ckpt, bundle = root / "ckpt", root / "bundle"
    assert main(["import-echomimic", "--weights", str(root / "pretrained_weights"), "--preset", "echomimic-tiny", "-o", str(ckpt)]) == 0
    assert main(["export", "--preset", "echomimic-tiny", "--checkpoint", str(ckpt), "--out", str(bundle), "--quiet"]) == 0
    return ckpt, bundle


@pytest.fixture(scope="module")
def model(release):
    from emote.models.checkpoint import load_checkpoint

    return load_checkpoint(release[0])


@pytest.fixture(scope="module")
def bundle(release):
    return release[1]


@pytest.fixture(scope="module")
def inputs():
    from conftest import synthetic_inputs

    r = preset("echomimic-tiny").resolution
    image, mask, audio = synthetic_inputs(r, 1.3)
    return Portrait(image=image, mask=mask, box=(0, 0, r, r)), audio


def reference(model, portrait, audio, guidance: float, hop=None, schedule="clips") -> np.ndarray:
    c = model.config
    spec = SamplerSpec(
        "ddim", c.steps, guidance, None, c.prediction_type, c.timestep_spacing, c.zero_snr, c.beta_schedule, c.set_alpha_to_one
    )
    return ReferencePipeline(model, spec)(portrait.image, portrait.mask, audio, seed=3, hop=hop, schedule=schedule)


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
        got = pipe.generate(portrait, audio, seed=3, schedule="clips")
        streamed = np.concatenate(list(pipe.stream(portrait, iter(np.array_split(audio, 65)), seed=3)))  # a stream runs clips
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


@pytest.mark.parametrize("guidance", [2.5, 1.0], ids=["guided", "unguided (acc)"])
def test_context_windows_run_as_echomimics_loop_and_differ_from_clips(model, bundle, inputs, guidance):
    """A file runs EchoMimic's context windows by default (33 frames: eleven 4-frame windows overlapping by 1,
    moved 2 frames a step): the runtime's per-window steps averaged equal the reference's averaged predictions
    stepped once, >= 40 dB; the clip schedule makes another video (how far: bench/RESULTS.md)."""
    portrait, audio = inputs
    ref = reference(model, portrait, audio, guidance, schedule="windows")
    with Pipeline(bundle, backend="onnxruntime", guidance_scale=guidance, guidance_steps=None, unmarked_research=True) as pipe:
        assert pipe.schedule_for(None) == "windows" and pipe.window_count(len(audio)) == 11
        calls = []
        got = pipe.generate(portrait, audio, seed=3, progress=lambda w, i: calls.append((w, i)))
        # the file's whisper as EchoMimic runs it: its segments (two of 1.28 s here), no clip window
        segments, windowed = len(pipe.timings.calls["audio_segment"]), "audio_encoder" in pipe.timings.calls
        clips = pipe.generate(portrait, audio, seed=3, schedule="clips")
    assert segments == 2 and not windowed
    assert calls == [(w, i) for i in range(model.config.steps) for w in range(11)]
    assert got.shape == ref.shape == (33, 32, 32, 3)
    assert psnr_db(ref, got) >= 40.0
    assert psnr_db(got, clips) < 35.0  # the windows' seams move every step: not the clips' video


def test_a_video_shorter_than_a_window_is_one_rotated_window(model, bundle, inputs):
    """3 frames: one window over a clip padded with silence, rotated 2 frames a step, as the reference runs it."""
    portrait, audio = inputs
    short = audio[: 3 * 640]
    ref = reference(model, portrait, short, 2.5, schedule="windows")
    with Pipeline(bundle, backend="onnxruntime", guidance_steps=None, unmarked_research=True) as pipe:
        got = pipe.generate(portrait, short, seed=3)
    assert got.shape == ref.shape == (3, 32, 32, 3) and psnr_db(ref, got) >= 40.0


def test_window_schedule_refusals_are_one_line(bundle, inputs):
    from emote.errors import EmoteError

    portrait, audio = inputs
    with Pipeline(bundle, backend="onnxruntime", unmarked_research=True) as pipe:
        assert pipe.schedule_for(None, live=True) == "clips" and pipe.schedule_for(None, hop=2) == "clips"
        with pytest.raises(EmoteError, match="a live stream runs clips"):
            next(pipe.stream(portrait, iter([audio]), schedule="windows"))
        with pytest.raises(EmoteError, match="a hop cuts clips"):
            pipe.generate(portrait, audio, hop=2, schedule="windows")
        with pytest.raises(EmoteError, match="schedule 'tiles': one of clips, windows"):
            pipe.generate(portrait, audio, schedule="tiles")
    with Pipeline(bundle, backend="onnxruntime", sampler="dpmpp_2m", unmarked_research=True) as pipe:
        with pytest.raises(EmoteError, match="sampler dpmpp_2m keeps a history; run ddim or euler"):
            pipe.generate(portrait, audio, schedule="windows")


def test_verify_and_generate_on_the_imported_bundle(bundle, tmp_path):
    """The imported synthetic release through `emote verify` and `emote generate` (context windows, the
    default for a file): an MP4 with the track's frames and its audio."""
    from emote.cli import main
    from emote.runtime.audio import load_audio
    from emote.runtime.examples import PORTRAIT, SPEECH
    from emote.runtime.video import probe_video

    assert main(["verify", str(bundle)]) == 0
    speech_wav, out = tmp_path / "speech.wav", tmp_path / "out.mp4"
    sf.write(speech_wav, load_audio(SPEECH)[: int(1.2 * 16000)], 16000)
    assert main(["generate", "--bundle", str(bundle), "--image", str(PORTRAIT), "--audio", str(speech_wav), "-o", str(out), "--quiet"]) == 0
    info, seconds = probe_video(out), sf.info(str(speech_wav)).duration
    assert info["frames"] == round(seconds * 25) and info["width"] == 32 and info["audio_streams"] == 1


def test_window_states_take_their_rows_in_echomimics_30s_segments():
    """A window's whisper states take the positional rows they have in EchoMimic's file path: track state s at
    row s mod 1500 (its 30 s segments), the first clip's left context (before the track) at row 0."""
    from emote.runtime.clips import ClipWindows
    from emote.runtime.families.echomimic import window_positions

    w = ClipWindows(12, 0, 25, 2, 3)  # echomimic's clips: windows of 17 frames, 34 states
    assert window_positions(w, 0, 1500).tolist() == [0] * 5 + list(range(1, 30))  # states -4 .. 29
    clip = 62  # frames 744 .. 755: its window's states 1484 .. 1517 straddle the 30 s seam
    assert window_positions(w, clip, 1500).tolist() == list(range(1484, 1500)) + list(range(18))
