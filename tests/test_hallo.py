"""Hallo's released weights: the key mapping against net.pth's key list, Hallo's options against
oracles, and a synthetic net.pth through `emote import-hallo` -> `emote export` -> `emote verify` -> runtime."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from emote.cli import main
from emote.models.config import preset
from emote.models.emo import build_model
from emote.models.hallo import hallo_from_ours, ours_from_hallo

REFERENCE = Path(__file__).parent / "data"  # Hallo's net.pth key list and configs (facts, see data/README.md)


def reference_modules() -> dict:
    return json.loads((REFERENCE / "hallo_net_state_dict.json").read_text())["modules"]


# -- the mapping: every key and shape of the released net.pth -----------------------------------
def test_hallo_preset_holds_exactly_net_pth_keys_and_shapes():
    model = build_model(preset("hallo"), device="meta")
    state = model.state_dict()
    ours = {hallo_from_ours(k): list(v.shape) for k, v in state.items() if hallo_from_ours(k) is not None}
    modules = reference_modules()
    theirs = {k: v for m in modules.values() for k, v in m["keys"].items()}
    assert sorted(set(theirs) - set(ours)) == []  # none missing
    assert sorted(set(ours) - set(theirs)) == []  # none extra
    assert ours == theirs  # every shape
    assert all(ours_from_hallo(hallo_from_ours(k)) == k for k in state if hallo_from_ours(k) is not None)
    # what net.pth does not hold comes from Hallo's other downloads: sd-vae-ft-mse and wav2vec2
    rest = {k for k in state if hallo_from_ours(k) is None}
    assert rest and all(k.startswith(("vae.", "audio_encoder.wav2vec2.")) for k in rest)
    # per module: Hallo's counts are of its state dict (the motion modules' positional tables included)
    for prefix, module in modules.items():
        count = sum(v.numel() for k, v in state.items() if (hallo_from_ours(k) or "").startswith(prefix + "."))
        assert count == module["param_count"], prefix


def test_hallo_preset_uses_hallo_inference_defaults():
    """The preset against hallo_configs.json: clip geometry, guidance and its DDIM, step by step against diffusers."""
    from diffusers import DDIMScheduler

    from emote.runtime.sampler import apply_row, make_sampler

    ref = json.loads((REFERENCE / "hallo_configs.json").read_text())["inference"]
    cfg = preset("hallo")
    assert (cfg.frames, cfg.motion_frames, cfg.fps) == (
        ref["data"]["n_sample_frames"],
        ref["data"]["n_motion_frames"],
        ref["data"]["export_video"]["fps"],
    )
    assert cfg.resolution == ref["data"]["source_image"]["width"] == ref["data"]["source_image"]["height"]
    assert (cfg.sampler, cfg.steps, cfg.guidance_scale) == ("ddim", ref["inference_steps"], ref["cfg_scale"])

    sched = DDIMScheduler(**ref["noise_scheduler_kwargs"])  # exactly as scripts/inference.py builds it
    sched.set_timesteps(cfg.steps)
    table = make_sampler(
        cfg.sampler,
        cfg.steps,
        prediction_type=cfg.prediction_type,
        spacing=cfg.timestep_spacing,
        zero_snr=cfg.zero_snr,
        beta_schedule=cfg.beta_schedule,
        set_alpha_to_one=cfg.set_alpha_to_one,
    )
    np.testing.assert_array_equal(table.timesteps, sched.timesteps.numpy())
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 8, 8), dtype=np.float32)
    theirs, x0_prev = torch.from_numpy(x).double(), np.zeros_like(x)
    for i, t in enumerate(sched.timesteps):
        v = (0.5 * x + 0.1 * rng.standard_normal(x.shape)).astype(np.float32)  # any model output: the same to both
        theirs = sched.step(torch.from_numpy(v).double(), t, theirs).prev_sample
        x, x0_prev = apply_row(table.rows[i], x, v, x0_prev, np.zeros_like(x))
        assert np.abs(theirs.numpy() - x).max() <= 1e-5 * max(1.0, np.abs(x).max())


# -- Hallo's options against oracles -----------------------------------------------------------
def test_concat_motion_module_equals_animatediff_on_the_joined_frames():
    """Hoisted per-clip state + per-step queries == AnimateDiff's temporal transformer run on [motion, clip] frames.

    The oracle is diffusers' BasicTransformerBlock with AnimateDiff's layout (two self-attentions,
    sinusoidal positions before each), after a per-frame GroupNorm and proj_in.
    """
    from diffusers.models.attention import BasicTransformerBlock

    from emote.models.unet import MotionModule

    torch.manual_seed(0)
    c, heads, n, f, side = 32, 4, 2, 5, 4
    mm = MotionModule(c, heads, groups=8, max_len=16, speed_dim=0, concat=True).eval()
    with torch.no_grad():
        for p in mm.parameters():
            p.normal_(0, 0.2)
    tt = mm.temporal_transformer
    blk = tt.transformer_blocks[0]
    oracle = BasicTransformerBlock(
        c, heads, c // heads, double_self_attention=True, positional_embeddings="sinusoidal", num_positional_embeddings=16
    ).eval()
    names = {
        "attention_blocks.0.": "attn1.",
        "attention_blocks.1.": "attn2.",
        "norms.0.": "norm1.",
        "norms.1.": "norm2.",
        "ff_norm.": "norm3.",
    }
    state = {}
    for k, v in blk.state_dict().items():
        if k.endswith("pos_encoder.pe"):
            continue
        for a, b in names.items():
            k = k.replace(a, b) if k.startswith(a) else k
        state[k] = v
    oracle.load_state_dict(state, strict=False)
    assert not [k for k in oracle.state_dict() if k not in state and "pos_embed" not in k]

    tokens = torch.randn(n, side * side, c)  # the ReferenceNet's attn1 tokens of the motion frames
    x = torch.randn(f, c, side, side)
    with torch.no_grad():
        ours = mm(x, f, mm.motion_kv(tokens), None)
        joined = torch.cat([tokens.transpose(1, 2).reshape(n, c, side, side), x])
        h = tt.proj_in(torch.nn.functional.group_norm(joined, 8, tt.norm.weight, tt.norm.bias, 1e-6).flatten(2).transpose(1, 2))
        h = oracle(h.transpose(0, 1)).transpose(0, 1)  # attention over the n + f frames at each pixel
        expect = tt.proj_out(h).transpose(1, 2).reshape(n + f, c, side, side) + joined
    assert (ours - expect[n:]).abs().max().item() < 1e-5


def test_audio_modules_act_only_inside_their_regions():
    from emote.models.unet import AudioModule

    torch.manual_seed(0)
    am = AudioModule(c=16, width=8, heads=2, context_dim=12, groups=4).eval()
    with torch.no_grad():
        for p in am.parameters():
            p.normal_(0, 0.3)
    f, side = 3, 4
    x = torch.randn(f, 16, side, side)
    a, b = torch.randn(f, 5, 12), torch.randn(f, 5, 12)
    masks = torch.zeros(3, side * side)
    masks[2, [5, 6]] = 1.0  # the lips: two pixels; no full-frame or face region
    ones = torch.ones(3)
    with torch.no_grad():
        diff = (am(x, am.kv(a), masks, ones) - am(x, am.kv(b), masks, ones)).abs().amax(dim=(0, 1)).flatten()
        muted = am(x, am.kv(a), masks, torch.tensor([1.0, 1.0, 0.0])) - am(x, am.kv(b), masks, torch.tensor([1.0, 1.0, 0.0]))
    inside = torch.zeros(side * side, dtype=torch.bool)
    inside[[5, 6]] = True
    assert diff[~inside].max().item() == 0.0  # the audio reaches no pixel outside its region
    assert diff[inside].min().item() > 1e-3
    assert muted.abs().max().item() == 0.0  # a region of weight 0 hears nothing (Hallo's lip_weight 0)


def test_hallo_guidance_branches(hallo_model):
    """Hallo's unconditional branch: no reference, no audio, no face locator; its plain-block motion modules never run."""
    m, cfg = hallo_model, hallo_model.config
    f, n, r, h = cfg.frames, cfg.motion_frames, cfg.resolution, cfg.latent_size
    torch.manual_seed(2)
    emb = torch.randn(1, cfg.face_embedding_dim)
    regions = [torch.rand(3, s * s) for s in (h >> d for d in range(len(cfg.unet.block_out_channels)))]
    x, t = torch.randn(f, 4, h, h), torch.tensor(400.0)

    def branches(latent, tokens, face_mask):
        with torch.no_grad():
            ref = m.reference(latent, emb)
            clip = m.clip_condition(tokens, torch.randn(n, 4, h, h, generator=torch.Generator().manual_seed(5)), face_mask, None, emb)
            video = m.video_condition(emb, regions, torch.ones(3))
            c = m.model_output(x, t, ref, clip, None, video=video)
            g2 = m.model_output(x, t, ref, clip, 2.0, video=video)
        return c, 2 * c - g2  # out(g) = u + g (c - u)  =>  u = 2 out(1) - out(2)

    tokens = torch.randn(f, cfg.audio.tokens, cfg.unet.cross_attention_dim)
    mask = torch.zeros(1, 1, r, r)
    mask[..., r // 4 : 3 * r // 4, r // 4 : 3 * r // 4] = 1
    c1, u1 = branches(torch.randn(1, 4, h, h), tokens, mask)
    c2, u2 = branches(torch.randn(1, 4, h, h), torch.randn_like(tokens), torch.ones(1, 1, r, r))
    assert (c1 - c2).abs().max() > 1e-3  # the conditional branch sees reference, audio and face mask
    assert (u1 - u2).abs().max() < 1e-4  # the unconditional one sees none of them

    plain = m.backbone.down_blocks[-1]  # no attention: Hallo never runs its motion modules
    assert not hasattr(plain, "attentions") and hasattr(plain, "motion_modules")
    assert all(mm not in m.backbone.motion_modules() for mm in plain.motion_modules)
    assert len(m.backbone.motion_modules()) == len(m.backbone.transformer_blocks())  # one per attention unit


def test_batched_guidance_equals_hallo_two_passes(hallo_model):
    """One batched pass [uncond; cond], the reference masked out of the first half, is Hallo's two passes."""
    from emote.models.unet import StepCondition

    m, cfg = hallo_model, hallo_model.config
    f, n, r, h = cfg.frames, cfg.motion_frames, cfg.resolution, cfg.latent_size
    g = torch.Generator().manual_seed(3)
    emb = torch.randn(1, cfg.face_embedding_dim, generator=g)
    regions = [torch.rand(3, s * s, generator=g) for s in (h >> d for d in range(len(cfg.unet.block_out_channels)))]
    x, t = torch.randn(f, 4, h, h, generator=g), torch.tensor(700.0)
    tokens = torch.randn(f, cfg.audio.tokens, cfg.unet.cross_attention_dim, generator=g)
    with torch.no_grad():
        ref = m.reference(torch.randn(1, 4, h, h, generator=g), emb)
        clip = m.clip_condition(tokens, torch.randn(n, 4, h, h, generator=g), torch.rand(1, 1, r, r, generator=g), None, emb)
        video = m.video_condition(emb, regions, torch.tensor([1.0, 0.5, 2.0]))
        got = m.model_output(x, t, ref, clip, 3.5, video=video)
        shared = dict(regions=video.regions, region_scales=video.region_scales, frames=f)
        c = m.backbone(x, t, StepCondition(ctx=video.context, ref=ref, motion=clip.motion, face=clip.face, audio=clip.audio, **shared))
        u = m.backbone(x, t, StepCondition(ctx=m.uncond_context_kv(), motion=clip.uncond_motion, audio=m.uncond_audio_kv(), **shared))
    expect = u + 3.5 * (c - u)
    assert (got - expect).abs().max().item() < 1e-5 * expect.abs().max().item() + 1e-5


def test_reference_net_contexts_follow_hallo_batch_layout(hallo_model):
    """Hallo's ReferenceNet sees [ref, m1, m2] x 2 branches with contexts [u, c] repeated: c on odd images."""
    m = hallo_model
    emb = torch.randn(1, m.config.face_embedding_dim)
    with torch.no_grad():
        c = m.face_projection(emb)
        u = m.face_projection(torch.zeros_like(emb))
        layout = [
            ["c" if torch.equal(t, c[0]) else "u" if torch.equal(t, u[0]) else "?" for t in m.hallo_reference_contexts(emb, b)]
            for b in (0, 1)
        ]
    assert layout == [["u", "c", "u"], ["c", "u", "c"]]


@pytest.fixture(scope="module")
def hallo_model():
    return build_model(preset("hallo-tiny"), seed=0)


# -- the synthetic round trip ----------------------------------------------------------------
def random_like(shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    """A weight of plausible scale: ~1/sqrt(fan_in) for matrices and kernels, ~1 +- 0.1 or +- 0.1 for vectors."""
    if len(shape) >= 2:
        return torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
    return torch.randn(shape, generator=g) * 0.1


@pytest.fixture(scope="module")
def hallo_files(tmp_path_factory):
    """Hallo's downloads at hallo-tiny's size, saved as they are distributed.

    net.pth: torch.save of a state dict with every key of the released file (fp16, as released);
    sd-vae-ft-mse: AutoencoderKL.save_pretrained; wav2vec2-base-960h: Wav2Vec2Model.save_pretrained
    (with SpecAugment's training-only tensor, as the real one has); mm_sd_v15_v2.ckpt: the motion modules.
    """
    from transformers import Wav2Vec2Model

    from emote.models.audio import wav2vec2_config
    from emote.models.emo import make_vae

    root = tmp_path_factory.mktemp("hallo")
    cfg = preset("hallo-tiny")
    meta = build_model(cfg, device="meta").state_dict()
    g = torch.Generator().manual_seed(1)
    net = {}
    for key, value in meta.items():
        name = hallo_from_ours(key)
        if name is None:
            continue
        if key.endswith(".pe"):  # AnimateDiff's positional tables, as saved
            from emote.models.unet import sinusoid_table

            net[name] = sinusoid_table(value.shape[1], value.shape[2]).half()
        else:
            net[name] = random_like(tuple(value.shape), g).half()
    assert set(net) == {k for m in reference_modules().values() for k in m["keys"]}  # the released file's key set
    torch.save(net, root / "net.pth")
    motion = {k.split(".", 1)[1]: v.float() for k, v in net.items() if ".motion_modules." in k}
    torch.save(motion, root / "mm_sd_v15_v2.ckpt")

    torch.manual_seed(3)
    make_vae(cfg).save_pretrained(root / "sd-vae-ft-mse")
    w2v_config = wav2vec2_config(cfg.audio)
    w2v_config.mask_time_prob = 0.05  # wav2vec2-base-960h's: its checkpoint holds masked_spec_embed
    Wav2Vec2Model(w2v_config).save_pretrained(root / "wav2vec2-base-960h")
    return {"root": root, "net": net, "cfg": cfg}


def import_args(files, out, *extra) -> list[str]:
    r = files["root"]
    return [
        "import-hallo",
        "--net",
        str(r / "net.pth"),
        "--sd-vae",
        str(r / "sd-vae-ft-mse"),
        "--wav2vec2",
        str(r / "wav2vec2-base-960h"),
        "--preset",
        "hallo-tiny",
        "-o",
        str(out),
        *extra,
    ]


@pytest.fixture(scope="module")
def hallo_checkpoint(hallo_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "hallo-tiny"
    assert main(import_args(hallo_files, out)) == 0
    return out


@pytest.fixture(scope="module")
def hallo_bundle(hallo_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle") / "hallo-tiny"
    assert main(["export", "--preset", "hallo-tiny", "--checkpoint", str(hallo_checkpoint), "--out", str(out), "--quiet"]) == 0
    return out


def test_import_places_every_tensor(hallo_files, hallo_checkpoint):
    from diffusers import AutoencoderKL
    from transformers import Wav2Vec2Model

    from emote.models.checkpoint import load_checkpoint

    model = load_checkpoint(hallo_checkpoint)
    assert model.config.name == "hallo-tiny" and model.config.extra["imported_from"] == "hallo"
    state = model.state_dict()
    assert all(v.dtype == torch.float32 for v in state.values())
    for name, tensor in hallo_files["net"].items():
        assert torch.equal(state[ours_from_hallo(name)], tensor.float()), name
    root = hallo_files["root"]
    for key, tensor in AutoencoderKL.from_pretrained(root / "sd-vae-ft-mse").state_dict().items():
        assert torch.equal(state["vae." + key], tensor), key
    for key, tensor in Wav2Vec2Model.from_pretrained(root / "wav2vec2-base-960h").state_dict().items():
        if key != "masked_spec_embed":
            assert torch.equal(state["audio_encoder.wav2vec2." + key], tensor), key


def test_import_reports_training_only_and_unneeded_motion_module(hallo_files, tmp_path, capsys):
    mm = hallo_files["root"] / "mm_sd_v15_v2.ckpt"
    assert main(import_args(hallo_files, tmp_path / "c", "--motion-module", str(mm))) == 0
    out = capsys.readouterr().out
    assert "wav2vec2:masked_spec_embed" in out  # named, not dropped in silence
    assert "--motion-module" in out and "was not needed" in out


def test_motion_module_fills_what_net_pth_lacks(hallo_files, tmp_path, capsys):
    from emote.models.checkpoint import load_checkpoint

    root = hallo_files["root"]
    lean = {k: v for k, v in hallo_files["net"].items() if ".motion_modules." not in k}
    torch.save(lean, tmp_path / "net.pth")
    args = import_args(hallo_files, tmp_path / "c")
    args[args.index("--net") + 1] = str(tmp_path / "net.pth")
    assert main(args) == 2
    assert "--motion-module mm_sd_v15_v2.ckpt" in capsys.readouterr().err
    assert main(args + ["--motion-module", str(root / "mm_sd_v15_v2.ckpt")]) == 0
    state = load_checkpoint(tmp_path / "c").state_dict()
    for name, tensor in hallo_files["net"].items():
        assert torch.equal(state[ours_from_hallo(name)], tensor.float()), name


def test_unplaced_keys_are_named(hallo_files, tmp_path, capsys):
    net = dict(hallo_files["net"], **{"denoising_unet.lip_sync_head.weight": torch.zeros(3), "landmarks.scale": torch.ones(1)})
    torch.save(net, tmp_path / "net.pth")
    args = import_args(hallo_files, tmp_path / "c")
    args[args.index("--net") + 1] = str(tmp_path / "net.pth")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "net.pth:denoising_unet.lip_sync_head.weight" in err and "net.pth:landmarks.scale" in err
    assert not (tmp_path / "c").exists()
    assert main(args + ["--allow-unplaced"]) == 0
    assert "net.pth:landmarks.scale" in capsys.readouterr().out


def test_import_errors_name_the_option(hallo_files, tmp_path, capsys):
    root = hallo_files["root"]
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    cases = [
        (["--net", str(tmp_path / "missing.pth")], "--net"),
        (["--net", str(tmp_path / "notes.txt")], "--net"),
        (["--sd-vae", str(tmp_path)], "--sd-vae"),
        (["--wav2vec2", str(root / "sd-vae-ft-mse")], "wav2vec2"),
    ]
    for change, needle in cases:
        args = import_args(hallo_files, tmp_path / "c")
        args[args.index(change[0]) + 1] = change[1]
        assert main(args) == 2
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err


@pytest.mark.slow  # the hallo-tiny bundle: its export takes minutes on 2 cores
def test_round_trip_export_and_verify(hallo_bundle, capsys):
    import onnx

    from emote.bundle import Bundle
    from emote.export.hoisting import misplaced_work

    bundle = Bundle.open(hallo_bundle)
    assert bundle.preset == "hallo-tiny" and bundle.family == "hallo" and bundle.sampler.beta_schedule == "linear"
    step = {t.name for t in bundle.graph("denoise_step").inputs}
    assert {"face", "region_scales", "region_mask_0", "embed_k_0", "audio_k_0_2", "motion_h_0", "uncond_motion_q_0"} <= step
    assert "uncond_motion_q_0" not in {t.name for t in bundle.graph("denoise_step_cond").inputs}
    for graph in ("denoise_step", "denoise_step_cond"):  # the per-video and per-clip projections stay hoisted
        assert misplaced_work(onnx.load(str(hallo_bundle / f"{graph}.onnx"))) == []
    assert main(["verify", str(hallo_bundle)]) == 0
    out = capsys.readouterr().out
    assert " 0 failed" in out and "FAIL" not in out


@pytest.mark.slow  # the hallo-tiny bundle: its export takes minutes on 2 cores
def test_runtime_equals_the_pytorch_stages(hallo_bundle, hallo_checkpoint, hallo_audio_pass):
    """The runtime's first clip (guided DDIM, Hallo's inputs bound by it) against the model's stages in PyTorch:
    the audio tokens from one pass of wav2vec2 over the track, as Hallo's own code makes them."""
    from emote.models.checkpoint import load_checkpoint
    from emote.models.pipeline import to_pixels
    from emote.runtime.clips import clip_noise
    from emote.runtime.face import Portrait
    from emote.runtime.pipeline import Pipeline
    from emote.runtime.regions import region_masks
    from emote.runtime.sampler import apply_row

    m = load_checkpoint(hallo_checkpoint)
    cfg = m.config
    f, n, r, h = cfg.frames, cfg.motion_frames, cfg.resolution, cfg.latent_size
    rng = np.random.default_rng(4)
    image = (rng.random((r, r, 3)) * 255).astype(np.uint8)
    mask = np.zeros((r, r), np.float32)
    mask[16:44, 20:44] = 1
    portrait = Portrait(image, mask, (20, 16, 24, 28))
    audio = (0.2 * rng.standard_normal(f * 640)).astype(np.float32)  # one clip
    emb = rng.standard_normal((1, cfg.face_embedding_dim)).astype(np.float32)
    weights = (1.0, 0.5, 2.0)
    # onnxruntime: exact fp32 (the default CPU backend may compute in bf16)
    with Pipeline(hallo_bundle, backend="onnxruntime", steps=3, face_embedding=emb, region_weights=weights, unmarked_research=True) as pipe:
        got = pipe.generate(portrait, audio, seed=7)
        table = pipe.sampler

    face_mask, levels = region_masks(mask, h, len(cfg.unet.block_out_channels))
    e = torch.from_numpy(emb)
    with torch.no_grad():
        ref = m.reference(m.encode_image(to_pixels(image[None])), e)
        motion = m.encode_image(to_pixels(np.repeat(image[None], n, 0)))  # Hallo's first clip: the portrait
        _, windows = hallo_audio_pass(m.audio_encoder.wav2vec2, audio, f)
        tokens = m.audio_encoder.project(torch.from_numpy(windows[:f]))
        clip = m.clip_condition(tokens, motion, torch.from_numpy(face_mask)[None, None], None, e)
        video = m.video_condition(e, [torch.from_numpy(x) for x in levels], torch.tensor(weights))
        x = clip_noise(7, 0, (f, 4, h, h)) * np.float32(table.init_scale)
        x0 = np.zeros_like(x)
        for i, row in enumerate(table.rows):
            g = float(row[7]) if table.guided[i] else None
            out = m.model_output(torch.from_numpy(x), torch.tensor(row[0]), ref, clip, g, video=video).numpy()
            x, x0 = apply_row(row, x, out, x0, np.zeros_like(x))
        expect = m.decode_latents(torch.from_numpy(x)).numpy()
    assert got.shape == expect.shape == (f, r, r, 3)
    assert np.abs(got.astype(int) - expect.astype(int)).max() <= 2


# -- the face embedding: a .npy or a user's ONNX model, clear errors -------------------------------
def tiny_face_model(path: Path, dim: int) -> Path:
    """An ONNX "face recognition" model of InsightFace's interface: (N, 3, 112, 112) -> (N, dim)."""
    import onnx
    from onnx import TensorProto, helper

    w = np.random.default_rng(0).standard_normal((dim, 3)).astype(np.float32)
    nodes = [
        helper.make_node("GlobalAveragePool", ["input.1"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Gemm", ["flat", "w"], ["683"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "face",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["None", 3, 112, 112])],
        [helper.make_tensor_value_info("683", TensorProto.FLOAT, ["None", dim])],
        [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel())],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


@pytest.fixture(scope="module")
def portrait_files(tmp_path_factory):
    import soundfile as sf
    from PIL import Image

    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((96, 96, 3)) * 255).astype(np.uint8)).save(root / "face.png")
    sf.write(root / "speech.wav", (0.2 * rng.standard_normal(int(0.3 * 16000))).astype(np.float32), 16000)
    return root


def generate_args(bundle, files, out, *extra) -> list[str]:
    return [
        "generate",
        "--bundle",
        str(bundle),
        "--image",
        str(files / "face.png"),
        "--audio",
        str(files / "speech.wav"),
        "--face-box",
        "24,24,48,48",
        "-o",
        str(out),
        "--steps",
        "2",
        "--quiet",
        *extra,
    ]


@pytest.mark.slow  # the hallo-tiny bundle: its export takes minutes on 2 cores
def test_generate_with_a_face_embedding_or_a_face_model(hallo_bundle, portrait_files, tmp_path):
    dim = preset("hallo-tiny").face_embedding_dim
    np.save(tmp_path / "face.npy", np.random.default_rng(1).standard_normal(dim).astype(np.float64))  # any float dtype
    assert (
        main(
            generate_args(
                hallo_bundle,
                portrait_files,
                tmp_path / "a.mp4",
                "--face-embedding",
                str(tmp_path / "face.npy"),
                "--npy",
                str(tmp_path / "a.npy"),
            )
        )
        == 0
    )
    model = tiny_face_model(tmp_path / "glintr100.onnx", dim)
    assert (
        main(
            generate_args(
                hallo_bundle,
                portrait_files,
                tmp_path / "b.mp4",
                "--face-model",
                str(model),
                "--region-weights",
                "1,1,0.5",
                "--npy",
                str(tmp_path / "b.npy"),
            )
        )
        == 0
    )
    from emote.runtime.clips import frame_count

    a, b = np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy")
    assert a.shape == b.shape == (frame_count(int(0.3 * 16000), 25, ceil=True), 64, 64, 3)  # Hallo counts by the ceiling
    assert (tmp_path / "a.mp4").stat().st_size > 0 and (tmp_path / "b.mp4").stat().st_size > 0


@pytest.mark.slow
@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d, p: None, "no such file"),
        (lambda d, p: np.save(p, np.zeros((3, d), np.float32)), f"must be {preset('hallo-tiny').face_embedding_dim} floats"),
        (lambda d, p: np.save(p, np.zeros(d, np.int32)), "must hold floats"),
        (lambda d, p: np.save(p, np.full(d, np.nan, np.float32)), "NaN"),
        (lambda d, p: p.write_text("512 floats"), "not a .npy"),
    ],
)
def test_face_embedding_errors(hallo_bundle, portrait_files, tmp_path, capsys, make, message):
    path = tmp_path / "face.npy"
    make(preset("hallo-tiny").face_embedding_dim, path)
    assert main(generate_args(hallo_bundle, portrait_files, tmp_path / "o.mp4", "--face-embedding", str(path))) == 2
    err = capsys.readouterr().err
    assert message in err and str(path) in err and "Traceback" not in err
    assert not (tmp_path / "o.mp4").exists()


@pytest.mark.slow  # the hallo-tiny bundle: its export takes minutes on 2 cores
def test_hallo_bundle_without_embedding_and_emo_bundle_with_one(hallo_bundle, tiny_bundle, portrait_files, tmp_path, capsys):
    assert main(generate_args(hallo_bundle, portrait_files, tmp_path / "o.mp4")) == 2
    assert "--face-embedding FILE.npy or --face-model MODEL.onnx" in capsys.readouterr().err
    np.save(tmp_path / "face.npy", np.zeros(16, np.float32))
    assert main(generate_args(tiny_bundle, portrait_files, tmp_path / "o.mp4", "--face-embedding", str(tmp_path / "face.npy"))) == 2
    assert "takes no face embedding" in capsys.readouterr().err
    assert main(generate_args(hallo_bundle, portrait_files, tmp_path / "o.mp4", "--face-model", str(tmp_path / "face.npy"))) == 2
    assert "ONNX Runtime cannot load it" in capsys.readouterr().err
