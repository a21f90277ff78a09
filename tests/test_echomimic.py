"""EchoMimic v1's released weights: the presets against the five files' key lists, the acc schedule
against diffusers, the motion module against diffusers' AnimateDiff module, the whisper front end
against transformers, and a synthetic checkpoint through `emote import-echomimic`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from emote.models.config import preset
from emote.models.emo import build_model

REFERENCE = Path(__file__).parent / "data"  # EchoMimic's key lists (facts, see data/README.md)


def reference_files() -> dict:
    return json.loads((REFERENCE / "echomimic_state_dicts.json").read_text())["files"]


def split_state(state: dict) -> dict[str, dict[str, list[int]]]:
    """Our state dict as EchoMimic's release splits it into files (the rest: VAE and whisper)."""
    files: dict[str, dict[str, list[int]]] = {f: {} for f in ("reference_unet.pth", "denoising_unet.pth", "motion_module.pth")}
    files["face_locator.pth"], files["rest"] = {}, {}
    for k, v in state.items():
        shape = list(v.shape)
        if k.startswith("reference_net."):
            files["reference_unet.pth"][k.removeprefix("reference_net.")] = shape
        elif k.startswith("backbone."):
            name = "motion_module.pth" if ".motion_modules." in k else "denoising_unet.pth"
            files[name][k.removeprefix("backbone.")] = shape
        elif k.startswith("face_locator."):
            files["face_locator.pth"][k.removeprefix("face_locator.")] = shape
        else:
            files["rest"][k] = shape
    return files


# -- 1. the presets hold exactly the released files' keys and shapes ----------------------------
def test_echomimic_preset_holds_exactly_the_five_files_keys_and_shapes(capsys):
    import dataclasses

    ref = reference_files()
    model = build_model(preset("echomimic"), device="meta")
    state = model.state_dict()
    ours = split_state(state)
    for name in ("reference_unet.pth", "denoising_unet.pth", "motion_module.pth", "face_locator.pth"):
        assert sorted(set(ref[name]["keys"]) - set(ours[name])) == [], name  # none missing
        assert sorted(set(ours[name]) - set(ref[name]["keys"])) == [], name  # none extra
        assert ours[name] == ref[name]["keys"], name  # every shape
        assert len(ours[name]) == ref[name]["count"]
        assert sum(int(np.prod(s)) for s in ours[name].values()) == ref[name]["params"], name
    # the pose variant's locator: the same model with a 3-channel (pose render) locator input
    pose = build_model(dataclasses.replace(preset("echomimic"), face_locator_in_channels=3), device="meta")
    assert split_state(pose.state_dict())["face_locator.pth"] == ref["face_locator_pose.pth"]["keys"]
    # none more: besides the five files, only the VAE (sd-vae-ft-mse) and whisper-tiny's encoder
    assert {k.split(".")[0] + "." + k.split(".")[1] for k in ours["rest"]} == {"vae.encoder", "vae.decoder", "vae.quant_conv",
        "vae.post_quant_conv", "audio_encoder.whisper"}  # fmt: skip
    counts = model.component_parameters()
    buffers = sum(b.numel() for n, b in model.named_buffers() if n.startswith("backbone."))
    assert counts["backbone"] + buffers == ref["denoising_unet.pth"]["params"] + ref["motion_module.pth"]["params"]
    assert counts["backbone"] == ref["denoising_unet.pth"]["params"] + ref["motion_module.pth"]["trainable_params"]
    with capsys.disabled():
        print("\nechomimic parameters per component:", ", ".join(f"{k} {v:,}" for k, v in counts.items()))


def test_echomimic_tiny_keeps_every_key_kind():
    """echomimic-tiny: the same key names as echomimic once the block indices are dropped."""
    import re

    kinds = lambda cfg: {re.sub(r"\.\d+\.", ".N.", re.sub(r"\.\d+\.", ".N.", k)) for k in build_model(cfg, device="meta").state_dict()}  # noqa: E731
    full, tiny = kinds(preset("echomimic")), kinds(preset("echomimic-tiny"))
    assert full == tiny


def test_echomimic_acc_schedule_equals_diffusers_ddim():
    """echomimic-acc: EchoMimic's DDIM (inference_v2.yaml) at 6 steps: 999, 832, ..., 166; cfg 1 is no guided step."""
    from diffusers import DDIMScheduler

    from emote.runtime.sampler import apply_row, make_sampler

    plain, acc = preset("echomimic"), preset("echomimic-acc")
    assert (plain.steps, plain.guidance_scale, acc.steps, acc.guidance_scale) == (30, 2.5, 6, 1.0)
    assert plain.unet == acc.unet and plain.audio == acc.audio  # the same architecture: only the defaults differ
    sched = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="linear",
        clip_sample=False,
        steps_offset=1,
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        timestep_spacing="trailing",
    )
    for cfg in (acc, plain):
        sched.set_timesteps(cfg.steps)
        table = make_sampler(
            cfg.sampler,
            cfg.steps,
            prediction_type=cfg.prediction_type,
            spacing=cfg.timestep_spacing,
            zero_snr=cfg.zero_snr,
            beta_schedule=cfg.beta_schedule,
            set_alpha_to_one=cfg.set_alpha_to_one,
            guidance_scale=cfg.guidance_scale,
        )
        np.testing.assert_array_equal(table.timesteps, sched.timesteps.numpy())
        assert table.guided.any() == (cfg is plain)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((2, 4, 8, 8), dtype=np.float32)
        theirs, x0_prev = torch.from_numpy(x).double(), np.zeros_like(x)
        for i, t in enumerate(sched.timesteps):
            v = (0.5 * x + 0.1 * rng.standard_normal(x.shape)).astype(np.float32)
            theirs = sched.step(torch.from_numpy(v).double(), t, theirs).prev_sample
            x, x0_prev = apply_row(table.rows[i], x, v, x0_prev, np.zeros_like(x))
            assert np.abs(theirs.numpy() - x).max() <= 1e-5 * max(1.0, np.abs(x).max())
    assert list(make_sampler("ddim", 6, spacing="trailing").timesteps) == [999, 832, 666, 499, 332, 166]


# -- 4. the motion module against diffusers' AnimateDiff motion module --------------------------
class PerFrame(torch.nn.Module):
    """A GroupNorm of (b, c, f, h, w) applied to each frame on its own (AnimateDiff's TemporalTransformer3DModel)."""

    def __init__(self, norm: torch.nn.GroupNorm):
        super().__init__()
        self.norm = norm

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, c, f, hh, ww = h.shape
        n = self.norm(h.transpose(1, 2).reshape(b * f, c, hh, ww))
        return n.reshape(b, f, c, hh, ww).transpose(1, 2)


def test_motion_module_equals_diffusers_animatediff_transformer():
    """Ours (EchoMimic's Temporal_Self x 2, no motion frames) == diffusers' AnimateDiffTransformer3D, same weights.

    One difference is AnimateDiff's, not ours: diffusers normalises over all frames together
    (GroupNorm of (b, c, f, h, w)), AnimateDiff's TemporalTransformer3DModel (EchoMimic's) per
    frame ("b c f h w -> (b f) c h w" before the norm). The oracle is run with its own norm
    applied per frame, and the test shows that its stock norm differs.
    """
    from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D

    from emote.models.unet import MotionModule

    torch.manual_seed(0)
    c, heads, groups, f, side = 32, 4, 8, 6, 4
    mm = MotionModule(c, heads, groups=groups, max_len=16, speed_dim=0).eval()
    with torch.no_grad():
        for p in mm.parameters():
            p.normal_(0, 0.2)
    oracle = AnimateDiffTransformer3D(
        num_attention_heads=heads,
        attention_head_dim=c // heads,
        in_channels=c,
        norm_num_groups=groups,
        double_self_attention=True,
        positional_embeddings="sinusoidal",
        num_positional_embeddings=16,
    ).eval()
    names = {
        "attention_blocks.0.": "attn1.",
        "attention_blocks.1.": "attn2.",
        "norms.0.": "norm1.",
        "norms.1.": "norm2.",
        "ff_norm.": "norm3.",
    }
    state = {}
    for k, v in mm.temporal_transformer.state_dict().items():
        if k.endswith("pos_encoder.pe"):
            continue  # diffusers makes the same sinusoid table itself
        for a, b in names.items():
            k = k.replace(a, b)
        state[k] = v
    missing, unexpected = oracle.load_state_dict(state, strict=False)
    assert not unexpected and all("pos_embed" in k for k in missing)

    x = torch.randn(f, c, side, side)
    with torch.no_grad():
        ours = mm(x, f, None, None)
        stock = oracle(x, num_frames=f)
        oracle.norm = PerFrame(oracle.norm)
        per_frame = oracle(x, num_frames=f)
    assert (ours - per_frame).abs().max().item() < 1e-5
    assert (ours - stock).abs().max().item() > 1e-3  # diffusers' joint-frame norm is a different function


# -- 3. the whisper front end -------------------------------------------------------------------
def whisper_pair(cfg_audio):
    """Our whisper encoder and transformers' WhisperEncoder with the same (random) weights."""
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    from emote.models.whisper import WhisperAudioEncoder, whisper_config

    torch.manual_seed(0)
    ours = WhisperAudioEncoder(cfg_audio, clip_frames=4).eval()
    theirs = WhisperEncoder(whisper_config(cfg_audio)).eval()
    theirs.load_state_dict(ours.whisper.state_dict())
    return ours, theirs


def test_whisper_log_mel_equals_transformers_feature_extractor():
    from transformers import WhisperFeatureExtractor

    from emote.models.whisper import log_mel

    rng = np.random.default_rng(1)
    audio = (0.3 * np.sin(np.arange(16000 * 30) * 2 * np.pi * 220 / 16000) + 0.05 * rng.standard_normal(16000 * 30)).astype(np.float32)
    theirs = WhisperFeatureExtractor(feature_size=80)(audio, sampling_rate=16000, return_tensors="np").input_features[0]
    with torch.no_grad():
        ours = log_mel(torch.from_numpy(audio)[None], 80)[0].numpy()
    assert ours.shape == theirs.shape == (80, 3000)
    assert np.abs(ours - theirs).max() < 2e-3  # float32 DFT-as-convolution against numpy's float64 STFT


def test_whisper_states_against_transformers_and_the_final_norm_question():
    """Our five states == transformers' hidden states before ln_post; transformers' last entry is after it."""
    from emote.models.config import AudioConfig

    cfg = AudioConfig(encoder="whisper", hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, tokens=30,
                      max_source_positions=1500)  # fmt: skip
    ours, theirs = whisper_pair(cfg)
    samples = torch.from_numpy(np.random.default_rng(2).standard_normal((1, 16000 * 30)).astype(np.float32) * 0.1)
    from emote.models.whisper import log_mel

    with torch.no_grad():
        states = ours.states(samples)  # (1500, 3, 16)
        out = theirs(log_mel(samples, 80), output_hidden_states=True)
    hidden = out.hidden_states
    assert states.shape == (1500, 3, 16) and len(hidden) == 3
    for i in range(2):  # the stem + positions, block 1: the same
        assert (states[:, i] - hidden[i][0]).abs().max().item() < 1e-4
    last = hidden[-1][0]
    after_norm = theirs.layer_norm(states[:, 2])
    # the answer: transformers' last hidden state is after layer_norm (ln_post); EchoMimic's is before it
    assert (last - after_norm).abs().max().item() < 1e-4
    assert (last - states[:, 2]).abs().max().item() > 1e-2
    assert (out.last_hidden_state[0] - after_norm).abs().max().item() < 1e-4


def test_the_runtimes_numpy_log_mel_is_the_exports():
    from emote.models.whisper import log_mel
    from emote.runtime.whisper_mel import segments, track_log_mel

    x = np.random.default_rng(3).standard_normal(16000 * 3 + 123).astype(np.float32) * 0.1
    ours = track_log_mel(x, 80)
    assert ours.shape == (80, 300)
    np.testing.assert_allclose(ours, log_mel(torch.from_numpy(x[None]), 80)[0].numpy(), atol=1e-5)
    parts = list(segments(ours, 64))  # 128-frame segments: 128, 128, 44
    assert [p.shape for p, _ in parts] == [(1, 80, 128)] * 3 and [k for _, k in parts] == [64, 64, 22]
    assert not parts[-1][0][..., 44:].any()  # zero-padded, as whisper's pad_or_trim


def test_whisper_30s_segments_as_echomimics_file_path():
    """EchoMimic's file path with a 64-position encoder (segments of 128 mel frames, 1.28 s): a 3.1 s track is
    segments of 128, 128 and 54 mel frames, each zero-padded and encoded (transformers' encoder on the padded
    mel is the oracle), 64 + 64 + 27 states kept; the mel normalised once over the whole track."""
    from emote.models.config import AudioConfig
    from emote.models.whisper import log_mel

    cfg = AudioConfig(encoder="whisper", hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, tokens=30,
                      max_source_positions=64)  # fmt: skip
    ours, theirs = whisper_pair(cfg)
    rng = np.random.default_rng(4)
    track = rng.standard_normal((1, 49600)).astype(np.float32) * 0.1  # 310 mel frames
    track[:, :16000] *= 10  # a loud first second: its maximum sets the floor of every segment,
    track[:, 256 * 160 :] *= 1e-4  # under which the quiet last segment's mel lies
    samples = torch.from_numpy(track)
    with torch.no_grad():
        states = ours.segment_states(samples)
        mel = log_mel(samples, 80)
        expected = []
        for seek, keep in ((0, 64), (128, 64), (256, 27)):
            part = mel[..., seek : seek + 128]
            padded = torch.nn.functional.pad(part, (0, 128 - part.shape[-1]))
            hidden = theirs(padded, output_hidden_states=True).hidden_states
            expected.append(torch.stack([hidden[0][0], hidden[1][0]], dim=1)[:keep])
        alone = ours.segment_states(samples[:, 256 * 160 :])  # the last segment normalised on its own
    assert states.shape == (155, 3, 16)
    assert (states[:, :2] - torch.cat(expected)).abs().max().item() < 1e-4
    assert (states[128:, 0] - alone[:27, 0]).abs().max().item() > 1e-2  # the whole track's floor, not the segment's


def echomimic_window_numpy(features: np.ndarray, frame: int, fps: int) -> np.ndarray:
    """EchoMimic's audio2feature.py window, as plain numpy: (T, 5, D) -> (50, D) for one video frame."""
    centre = int(frame * 50 / fps)
    rows = [min(max(j, 0), len(features) - 1) for j in range(centre - 4, centre + 6)]
    return features[rows].reshape(-1, features.shape[-1])


def test_whisper_index_against_numpy_windows():
    """The runtime's per-clip index == EchoMimic's clamped windows, for clips anywhere in a track (24 and 25 fps)."""
    from emote.runtime.families.echomimic import whisper_index

    track = 137  # whisper frames of a 2.74 s track
    rows = np.arange(track)[:, None, None]  # "features" that are their own row number
    for fps in (24, 25):
        for start in (0, 3, 30, 62, 65):
            first = start * 50 // fps - 10  # any window start that holds the rows
            index = whisper_index(start, 4, fps, first, track)
            for j in range(4):
                expect = echomimic_window_numpy(rows, start + j, fps)[:, 0]
                np.testing.assert_array_equal(index[j] + first, expect)


def test_whisper_clip_tokens_equal_echomimic_windows_on_the_same_states():
    """The graph's tokens (states of the window, gathered by the index) == the numpy windows of those states:
    a track exactly one window long, the clip after the left context, so the window is the track."""
    from emote.runtime.families.echomimic import whisper_index

    cfg = preset("echomimic-tiny")
    ours, _ = whisper_pair(cfg.audio)
    samples = cfg.audio_window_samples
    audio = (np.random.default_rng(3).standard_normal(samples) * 0.1).astype(np.float32)
    start = cfg.audio.left_context
    with torch.no_grad():
        states = ours.states(torch.from_numpy(audio)[None]).numpy()  # (T, 3, 16)
        index = whisper_index(start, cfg.frames, cfg.fps, 0, len(states))
        tokens = ours(torch.from_numpy(audio)[None], torch.from_numpy(index)).numpy()
    assert tokens.shape == (cfg.frames, cfg.audio.tokens, cfg.audio.hidden_size)
    for j in range(cfg.frames):
        np.testing.assert_array_equal(tokens[j], echomimic_window_numpy(states, start + j, cfg.fps))
    # token 5 * frame + state (here 3 states): state fastest
    np.testing.assert_array_equal(tokens[0, 1], states[index[0, 0], 1])
    np.testing.assert_array_equal(tokens[0, 3], states[index[0, 1], 0])


# -- 2. a synthetic release through `emote import-echomimic` ------------------------------------
def write_release(model, folder: Path, acc: bool = False) -> None:
    """EchoMimic's pretrained_weights/ layout with ``model``'s tensors: its four .pth files (attn2's
    output unscaled by the x3 ratio, as EchoMimic stores it), sd-vae-ft-mse and an OpenAI whisper tiny.pt."""
    from emote.models.echomimic import AUDIO_RATIO, openai_from_whisper

    files = split_state({k: v for k, v in model.state_dict().items()})
    state = model.state_dict()
    folder.mkdir(parents=True)
    for name in ("reference_unet", "denoising_unet", "motion_module", "face_locator"):
        prefix = {"reference_unet": "reference_net.", "face_locator": "face_locator."}.get(name, "backbone.")
        tensors = {k: state[prefix + k].clone() for k in files[f"{name}.pth"]}
        if name == "denoising_unet":
            tensors = {k: v / AUDIO_RATIO if ".attn2.to_out.0." in k else v for k, v in tensors.items()}
        suffix = "_acc" if acc and name in ("denoising_unet", "motion_module") else ""
        torch.save(tensors, folder / f"{name}{suffix}.pth")
    model.vae.save_pretrained(folder / "sd-vae-ft-mse")
    whisper = {openai_from_whisper(k): v.clone() for k, v in model.audio_encoder.whisper.state_dict().items()}
    whisper["decoder.token_embedding.weight"] = torch.zeros(8, model.config.audio.hidden_size)
    a = model.config.audio
    dims = {"n_mels": a.num_mel_bins, "n_audio_ctx": a.max_source_positions, "n_audio_state": a.hidden_size,
            "n_audio_head": a.num_attention_heads, "n_audio_layer": a.num_hidden_layers}  # fmt: skip
    (folder / "audio_processor").mkdir()
    torch.save({"dims": dims, "model_state_dict": whisper}, folder / "audio_processor" / "whisper_tiny.pt")


@pytest.fixture(scope="module")
def echomimic_release(tmp_path_factory):
    model = build_model(preset("echomimic-tiny"), seed=7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("face_locator.conv_out"):
                p.normal_(0, 0.05)  # the released locator is trained: not the zero init
    folder = tmp_path_factory.mktemp("echomimic") / "pretrained_weights"
    write_release(model, folder)
    return model, folder


def test_import_echomimic_places_every_tensor_and_folds_the_audio_ratio(echomimic_release, tmp_path, capsys):
    from emote.cli import main
    from emote.models.checkpoint import load_checkpoint

    model, folder = echomimic_release
    out = tmp_path / "ckpt"
    assert main(["import-echomimic", "--weights", str(folder), "--preset", "echomimic-tiny", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "audio_feature_ratio 3.0 folded into" in printed and "decoder tensors are not used" in printed
    loaded = load_checkpoint(out)
    assert loaded.config.name == "echomimic-tiny" and loaded.config.extra["imported_from"] == "echomimic"
    theirs = model.state_dict()
    for k, v in loaded.state_dict().items():
        torch.testing.assert_close(v, theirs[k], rtol=1e-6, atol=1e-7, msg=k)  # attn2.to_out x 3 / 3 x 3


def run_import(folder: Path, out: Path, capsys) -> tuple[int, str]:
    from emote.cli import main

    rc = main(["import-echomimic", "--weights", str(folder), "--preset", "echomimic-tiny", "-o", str(out)])
    return rc, capsys.readouterr().err


def test_import_echomimic_bad_inputs_one_line_nothing_written(echomimic_release, tmp_path, capsys):
    import shutil

    from emote.models.hallo import hallo_from_ours

    model, folder = echomimic_release
    cases = {}
    # a file that is not a checkpoint
    bad = tmp_path / "not_a_checkpoint"
    shutil.copytree(folder, bad)
    (bad / "face_locator.pth").write_text("this is not a checkpoint\n")
    cases["not a checkpoint"] = (bad, "face_locator.pth is not a readable checkpoint")
    # a checkpoint of another model: Hallo's net.pth key layout
    hallo = tmp_path / "hallo"
    shutil.copytree(folder, hallo)
    net = {hallo_from_ours(k): v for k, v in build_model(preset("hallo-tiny"), device="meta").state_dict().items() if hallo_from_ours(k)}
    torch.save({k: torch.zeros(v.shape) for k, v in list(net.items())[:40]}, hallo / "denoising_unet.pth")
    cases["Hallo's keys"] = (hallo, "holds Hallo's net.pth keys")
    # one tensor of the wrong shape
    shaped = tmp_path / "misshaped"
    shutil.copytree(folder, shaped)
    ref = torch.load(shaped / "reference_unet.pth", weights_only=True)
    ref["conv_in.weight"] = torch.zeros(3, 4, 3, 3)
    torch.save(ref, shaped / "reference_unet.pth")
    cases["mis-shaped"] = (shaped, "1 mis-shaped (reference_net.conv_in.weight [3, 4, 3, 3] != [8, 4, 3, 3])")
    # a key missing from denoising_unet.pth: EchoMimic's strict=False would keep the base UNet's
    missing = tmp_path / "missing"
    shutil.copytree(folder, missing)
    den = torch.load(missing / "denoising_unet.pth", weights_only=True)
    del den["conv_in.bias"]
    torch.save(den, missing / "denoising_unet.pth")
    cases["missing"] = (missing, "1 missing (backbone.conv_in.bias)")
    for what, (src, message) in cases.items():
        out = tmp_path / f"out-{what}"
        rc, err = run_import(src, out, capsys)
        assert rc == 2 and message in err, (what, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, what
        assert not out.exists() and not list(tmp_path.glob(f"out-{what}*")), what  # nothing written, no temp folder left
