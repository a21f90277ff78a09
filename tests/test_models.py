"""The EMO model in PyTorch: diffusers parity, reference features, sizes, stages."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel

from emote.models.config import UNetConfig, preset
from emote.models.emo import build_model
from emote.models.unet import StepCondition, UNet

SMALL = UNetConfig(
    block_out_channels=(32, 64, 64),
    attention_levels=(True, True, False),
    layers_per_block=2,
    num_heads=2,
    cross_attention_dim=24,
    norm_num_groups=8,
    temporal_heads=2,
)


def diffusers_unet(cfg: UNetConfig) -> UNet2DConditionModel:
    kinds = ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention_levels]
    ups = ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention_levels)]
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=16,
        block_out_channels=cfg.block_out_channels,
        down_block_types=tuple(kinds),
        up_block_types=tuple(ups),
        layers_per_block=cfg.layers_per_block,
        attention_head_dim=cfg.num_heads,
        cross_attention_dim=cfg.cross_attention_dim,
        norm_num_groups=cfg.norm_num_groups,
    )
    # diffusers leaves no zero-initialised layers, so every parameter matters in the comparison
    return unet.eval()


def test_plain_unet_equals_diffusers():
    ref = diffusers_unet(SMALL)
    ours = UNet(SMALL, "plain").eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x, ctx = torch.randn(3, 4, 16, 16), torch.randn(3, 5, 24)
    t = torch.tensor([1.0, 500.0, 999.0])
    with torch.no_grad():
        a = ref(x, t, ctx).sample
        b = ours(x, t, StepCondition(ctx=ours.context_kv(ctx)))
    assert (a - b).abs().max().item() < 1e-5


def test_reference_features_equal_diffusers_attn1_inputs():
    ref = diffusers_unet(SMALL)
    ours = UNet(SMALL, "reference").eval()
    head = {"conv_norm_out.weight", "conv_norm_out.bias", "conv_out.weight", "conv_out.bias"}
    state = {k: v for k, v in ref.state_dict().items() if k not in head}
    ours.load_state_dict(state, strict=True)

    seen: list[torch.Tensor] = []
    hooks = [
        blk.attn1.register_forward_pre_hook(lambda mod, args, kwargs: seen.append(args[0]), with_kwargs=True)
        for name, blk in ref.named_modules()
        if name.endswith("transformer_blocks.0")
    ]
    x = torch.randn(2, 4, 16, 16)
    with torch.no_grad():
        ref(x, torch.zeros(2), torch.zeros(2, 1, SMALL.cross_attention_dim))
        feats = ours.features(x)
    for h in hooks:
        h.remove()
    assert len(feats.tokens) == len(seen) == 11  # down 2 + 2, mid 1, up 0 + 3 + 3
    for a, b in zip(seen, feats.tokens):
        assert (a - b).abs().max().item() < 1e-5


def test_emo_sd15_on_meta_device():
    model = build_model(preset("emo-sd15"), device="meta")
    counts = model.component_parameters()
    # diffusers' SD1.5 UNet has 859,520,964 parameters; the ReferenceNet drops the
    # output head conv_norm_out (640) and conv_out (11,524), as Hallo's reference UNet
    assert counts["reference_net"] == 859_508_800
    assert counts["reference_net"] == 859_520_964 - (2 * 320) - (4 * 320 * 9 + 4)
    for name in ("vae", "backbone", "audio_encoder", "face_locator", "speed_encoder"):
        assert counts[name] > 0
    assert all(p.device.type == "meta" for p in model.parameters())


@pytest.mark.parametrize("name", ["tiny", "demo"])
def test_stages_shapes(name):
    cfg = preset(name)
    m = build_model(cfg)
    f, n, r, h = cfg.frames, cfg.motion_frames, cfg.resolution, cfg.latent_size
    with torch.no_grad():
        lat = m.encode_image(torch.rand(1, 3, r, r) * 2 - 1)
        ref = m.reference(lat)
        tokens = m.encode_audio(torch.randn(1, cfg.audio_window_samples))
        clip = m.clip_condition(tokens, torch.zeros(n, 4, h, h), torch.ones(1, 1, r, r), torch.full((f,), 0.3))
        out = m.model_output(torch.randn(f, 4, h, h), torch.tensor(500.0), ref, clip, 2.0)
        frames = m.decode_latents(out)
    assert lat.shape == (1, 4, h, h)
    assert tokens.shape == (f, cfg.audio.tokens, cfg.unet.cross_attention_dim)
    assert len(ref) == len(clip.audio) == len(m.backbone.transformer_blocks())
    assert len(clip.motion) == len(m.backbone.motion_modules())
    assert clip.motion[0][0].shape[1] == n
    assert out.shape == (f, 4, h, h)
    assert frames.shape == (f, r, r, 3) and frames.dtype == torch.uint8


def test_guidance_combines_branches(tiny_model, tiny_config):
    """g=1 equals the conditional branch alone; the hoisted uncond K/V equal zero-audio K/V."""
    cfg, m = tiny_config, tiny_model
    f, n, r, h = cfg.frames, cfg.motion_frames, cfg.resolution, cfg.latent_size
    torch.manual_seed(1)
    with torch.no_grad():
        ref = m.reference(torch.randn(1, 4, h, h))
        tokens = torch.randn(f, cfg.audio.tokens, cfg.unet.cross_attention_dim)
        clip = m.clip_condition(tokens, torch.randn(n, 4, h, h), torch.ones(1, 1, r, r), torch.full((f,), 0.5))
        x, t = torch.randn(f, 4, h, h), torch.tensor(321.0)
        cond_only = m.model_output(x, t, ref, clip, None)
        g1 = m.model_output(x, t, ref, clip, 1.0)
        g3 = m.model_output(x, t, ref, clip, 3.0)
        zero = m.clip_condition(torch.zeros_like(tokens), torch.randn(n, 4, h, h), torch.ones(1, 1, r, r), torch.full((f,), 0.5))
    assert (cond_only - g1).abs().max() < 1e-5
    assert (g3 - cond_only).abs().max() > 1e-4  # the audio changes the output
    for (ku, vu), (kz, vz) in zip(m.uncond_audio_kv(), zero.audio):
        assert torch.allclose(ku.expand_as(kz), kz) and torch.allclose(vu.expand_as(vz), vz)


def test_audio_encoder_walk_equals_transformers(tiny_model, tiny_config):
    """Our explicit walk through wav2vec2's encoder equals transformers' own hidden states."""
    enc = tiny_model.audio_encoder
    x = torch.randn(1, 9600)
    with torch.no_grad():
        feats = enc.wav2vec2.feature_extractor(x).transpose(1, 2)
        ours_h, _ = enc.wav2vec2.feature_projection(feats)
        theirs = enc.wav2vec2.encoder(ours_h, output_hidden_states=True)
        # the same walk as AudioEncoder.hidden_states, without the frame-rate interpolation
        e = enc.wav2vec2.encoder
        h = e.layer_norm(ours_h + e.pos_conv_embed(ours_h))
        for layer in e.layers:
            h = layer(h)
            h = h[0] if isinstance(h, tuple) else h
    assert torch.allclose(h, theirs.last_hidden_state, atol=1e-6)
