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
    # diffusers initialises every norm to weight 1, bias 0: perturb all parameters so that a
    # norm mapped to the wrong name (or skipped) changes the output and the comparison sees it
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
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


def test_backbone_with_its_emo_parts_switched_off_equals_diffusers():
    """The backbone class itself (not only the plain mode): temporal layers made identities,
    no reference tokens, no face features: the SD UNet of diffusers, to 1e-5."""
    ref = diffusers_unet(SMALL)
    ours = UNet(SMALL, "backbone").eval()
    missing, unexpected = ours.load_state_dict(ref.state_dict(), strict=False)
    assert unexpected == [] and missing and all(".motion_modules." in k for k in missing)
    x, ctx = torch.randn(3, 4, 16, 16), torch.randn(3, 5, 24)
    t = torch.tensor([1.0, 500.0, 999.0])
    with torch.no_grad():
        a = ref(x, t, ctx).sample
        cond = StepCondition(ctx=ours.context_kv(ctx), frames=3)
        temporal_on = ours(x, t, cond)
        for mm in ours.motion_modules():  # AnimateDiff's zero-initialised proj_out: the layer is x + 0
            mm.temporal_transformer.proj_out.weight.zero_()
            mm.temporal_transformer.proj_out.bias.zero_()
        b = ours(x, t, cond)
    assert (a - b).abs().max().item() < 1e-5
    assert (a - temporal_on).abs().max().item() > 1e-3  # the temporal layers are on the path


def test_reference_attention_concatenates_reference_tokens():
    """attn1 keys/values = own tokens + reference tokens, as in Hallo / AnimateAnyone's reference
    attention: diffusers' block whose attn1 attends to torch.cat([own, reference]) is the oracle."""
    from diffusers.models.attention import BasicTransformerBlock as DiffusersBlock

    from emote.models.unet import BasicTransformerBlock

    torch.manual_seed(0)
    theirs = DiffusersBlock(32, 2, 16, cross_attention_dim=24).eval()
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ours = BasicTransformerBlock(32, 2, 24).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    h, ctx, reference = torch.randn(2, 10, 32), torch.randn(2, 5, 24), torch.randn(1, 7, 32)

    def concat_reference(module, args, kwargs):
        own = args[0]
        kwargs["encoder_hidden_states"] = torch.cat([own, reference.expand(own.shape[0], -1, -1)], dim=1)
        return args, kwargs

    hook = theirs.attn1.register_forward_pre_hook(concat_reference, with_kwargs=True)
    with torch.no_grad():
        expected = theirs(h, encoder_hidden_states=ctx)
        hook.remove()
        plain = theirs(h, encoder_hidden_states=ctx)
        got = ours(h, ours.attn2.kv(ctx), ours.attn1.kv(reference), None)
    assert (expected - got).abs().max().item() < 1e-5
    assert (expected - plain).abs().max().item() > 1e-3  # the reference tokens change the output


def test_emo_sd15_on_meta_device():
    """Every component's parameter count, each against an independent figure."""
    import json
    from pathlib import Path

    from diffusers import AutoencoderKL
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    model = build_model(preset("emo-sd15"), device="meta")
    assert all(p.device.type == "meta" for p in model.parameters())  # no memory
    counts = model.component_parameters()
    assert set(counts) == {"vae", "reference_net", "backbone", "audio_encoder", "face_locator", "speed_encoder"}

    hallo = json.loads((Path(__file__).parent / "data/hallo_net_state_dict.json").read_text())["modules"]
    strip = lambda keys: {k.split(".", 1)[1]: list(v) for k, v in keys.items()}  # noqa: E731
    shapes = lambda module: {k: list(v.shape) for k, v in module.state_dict().items()}  # noqa: E731

    # ReferenceNet: diffusers' SD1.5 UNet (859,520,964) less its unused output head
    # conv_norm_out (2 x 320) and conv_out (4 x 320 x 9 + 4), exactly Hallo's reference UNet, key by key
    assert counts["reference_net"] == 859_508_800 == 859_520_964 - (2 * 320) - (4 * 320 * 9 + 4)
    assert counts["reference_net"] == hallo["reference_unet"]["param_count"]
    assert shapes(model.reference_net) == strip(hallo["reference_unet"]["keys"])

    # VAE: SD's AutoencoderKL, built by diffusers itself
    with torch.device("meta"):
        sd_vae = AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(128, 256, 512, 512),
            layers_per_block=2,
            latent_channels=4,
        )
    assert counts["vae"] == sum(p.numel() for p in sd_vae.parameters()) == 83_653_863

    # audio encoder: wav2vec2-base (transformers' default config, less SpecAugment's training-only
    # masked_spec_embed of 768) + the projection, Hallo's audioproj (5 frames x 12 layers x 768 -> 32 tokens)
    with torch.device("meta"):
        base = Wav2Vec2Model(Wav2Vec2Config())
    w2v = sum(p.numel() for n, p in base.named_parameters() if n != "masked_spec_embed")
    assert w2v == 94_371_712 - 768
    assert shapes(model.audio_encoder.proj) == strip(hallo["audioproj"]["keys"])
    assert counts["audio_encoder"] == w2v + hallo["audioproj"]["param_count"] == 94_370_944 + 36_465_152

    # backbone: the SD1.5 UNet + AnimateDiff motion modules named as Hallo's; EMO's speed layers make
    # the second temporal attention a cross-attention on 768-wide speed tokens (to_k/to_v: c x 768, not c x c)
    theirs = strip(hallo["denoising_unet"]["keys"])
    ours = shapes(model.backbone)
    assert set(ours) <= set(theirs)
    differ = {k for k in ours if ours[k] != theirs[k]}
    assert differ and all(k.endswith(("attention_blocks.1.to_k.weight", "attention_blocks.1.to_v.weight")) for k in differ)
    assert all(ours[k] == [theirs[k][0], 768] for k in differ)
    motion = sum(p.numel() for n, p in model.backbone.named_parameters() if ".motion_modules." in n)
    assert counts["backbone"] == 859_520_964 + motion
    with torch.device("meta"):
        plain = UNet(preset("emo-sd15").unet, "plain")
    assert {k for k in ours if ".motion_modules." not in k} == set(shapes(plain))

    # face locator: conv_in 1->16, (c->c, c->2c stride 2) for 16, 32, 64, conv_out 128->320, 3x3 convs
    conv = lambda a, b: a * b * 9 + b  # noqa: E731
    assert (
        counts["face_locator"]
        == conv(1, 16) + sum(conv(a, a) + conv(a, b) for a, b in ((16, 32), (32, 64), (64, 128))) + conv(128, 320)
        == 514_608
    )
    # speed layers: 9 tanh buckets -> 768 -> 2 tokens x 768
    assert counts["speed_encoder"] == (9 * 768 + 768) + (768 * 1536 + 1536) == 1_188_864
    print("emo-sd15 parameters per component:", counts)


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
