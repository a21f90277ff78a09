"""The whole EMO model and its stages, split where the work happens (DESIGN.md "hoist").

Each stage is a pure function of explicit tensors, the unit that export turns into
one graph:

| stage            | once per | in -> out                                                      |
| ---------------- | -------- | -------------------------------------------------------------- |
| encode_image     | video    | pixels in [-1, 1] -> latents (VAE mean x 0.18215)              |
| reference        | video    | reference latent -> attn1 keys/values of every block           |
| encode_audio     | clip     | the clip's audio window -> per-frame audio tokens              |
| clip_condition   | clip     | audio tokens, motion latents, face mask, speed -> keys/values  |
| model_output     | step     | x_t, t and the above -> guided eps / v                         |
| decode_latents   | clip     | latents -> uint8 frames (N, H, W, 3)                           |

The unconditional branch of guidance is "no audio": zero audio tokens, whose keys
and values are a constant of the model (``uncond_audio_kv``).

With ``uncond_branch="hallo"`` (the ``hallo`` presets) the stages take Hallo's extra
inputs: a face embedding (per video: ``reference``, ``video_condition``), region masks
and weights (per video, ``VideoCondition``), and the unconditional branch is Hallo's:
no audio, the zero face embedding, no reference attention, no face-locator features.

With ``uncond_branch="echomimic"`` (the ``echomimic`` presets) the audio encoder is whisper's
(``encode_audio`` takes each frame's whisper-frame index), there are no motion frames, and the
unconditional branch is EchoMimic's: zero audio, no reference attention, no face-locator features.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL
from torch import Tensor, nn

from .audio import AudioEncoder
from .condition import FaceLocator, FaceProjection, SpeedEncoder
from .config import VAE_SCALING, ModelConfig
from .unet import KV, StepCondition, UNet, batched
from .whisper import WhisperAudioEncoder


@dataclass
class ClipCondition:
    """Per-clip keys/values (lists in layer order) and the face-locator features.

    audio: attn2 keys/values; with audio modules (Hallo), each module's three region keys/values.
    motion: per motion module, keys/values; in "concat" mode (queries, keys, values, tokens).
    uncond_motion: Hallo only: the motion frames as its unconditional branch sees them.
    """

    audio: list
    motion: list
    speed: list[KV] | None
    face: Tensor
    uncond_motion: list | None = None


@dataclass
class VideoCondition:
    """Hallo's per-video step inputs besides the reference: the face embedding's attn2 keys/values,
    the full/face/lip masks per depth (3, hw) and the regions' weights (3,) (Hallo's pose/face/lip weights)."""

    context: list[KV]
    regions: list[Tensor]
    region_scales: Tensor


def make_vae(cfg: ModelConfig) -> AutoencoderKL:
    v = cfg.vae
    levels = len(v.block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=v.block_out_channels,
        layers_per_block=v.layers_per_block,
        latent_channels=v.latent_channels,
        norm_num_groups=v.norm_num_groups,
        sample_size=cfg.resolution,
        scaling_factor=VAE_SCALING,
    )


class EMOModel(nn.Module):
    """VAE, ReferenceNet, backbone, audio encoder, face locator and speed layers of one preset."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        u = cfg.unet
        self.vae = make_vae(cfg)
        self.reference_net = UNet(u, "reference")
        self.backbone = UNet(u, "backbone")
        if cfg.audio.encoder == "whisper":
            self.audio_encoder = WhisperAudioEncoder(cfg.audio, cfg.frames)
        else:
            self.audio_encoder = AudioEncoder(cfg.audio, u.cross_attention_dim, cfg.frames)
        self.face_locator = FaceLocator(cfg.face_locator_in_channels, cfg.face_locator_channels, u.block_out_channels[0])
        self.speed_encoder = SpeedEncoder(cfg.speed_buckets, cfg.speed_tokens, u.speed_dim) if u.speed_dim else None
        self.face_projection = (
            FaceProjection(cfg.face_embedding_dim, cfg.face_embedding_tokens, u.cross_attention_dim) if cfg.face_embedding_dim else None
        )

    def with_geometry(self, frames: int | None = None, resolution: int | None = None) -> EMOModel:
        """Change the clip length or resolution (no weight depends on them); validated by the config."""
        import dataclasses

        changes = {k: v for k, v in (("frames", frames), ("resolution", resolution)) if v is not None}
        if changes:
            self.config = dataclasses.replace(self.config, **changes)
            self.audio_encoder.clip_frames = self.config.frames
        return self

    def only(self, *components: str) -> EMOModel:
        """A view holding only the named components (same parameters, no copies).

        Export wraps one of these per graph so that a graph's exported program lifts
        only the weights that graph can use, not every component's.
        """
        view = EMOModel.__new__(EMOModel)
        nn.Module.__init__(view)
        view.config = self.config
        for name in components:
            setattr(view, name, getattr(self, name))
        return view

    def component_parameters(self) -> dict[str, int]:
        return {name: sum(p.numel() for p in m.parameters()) for name, m in self.named_children()}

    # -- per video ----------------------------------------------------------------------
    def encode_image(self, pixels: Tensor) -> Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, 4, h, w) latents (the posterior mean: deterministic)."""
        return self.vae.encode(pixels).latent_dist.mean * VAE_SCALING

    def reference(self, latent: Tensor, face_embedding: Tensor | None = None) -> list[KV]:
        """Reference latent (1, 4, h, w) -> the backbone's attn1 keys/values of its tokens.

        Hallo: the ReferenceNet's attn2 attends to the face embedding (1, E) as Hallo's guided run gives it.
        """
        context = None if self.face_projection is None else self.hallo_reference_contexts(face_embedding, 1)[:1]
        return self.backbone.reference_kv(self.reference_net.features(latent, context).tokens)

    def uncond_audio_kv(self) -> list:
        """Keys/values of zero audio tokens (attn2, or the audio modules'): the unconditional branch, a model constant."""
        a = self.config.audio
        device = next(self.backbone.parameters()).device
        zeros = torch.zeros(1, a.tokens, self.config.unet.cross_attention_dim, device=device)
        if self.config.unet.audio_modules:
            return self.backbone.audio_kv(zeros)
        return self.backbone.context_kv(zeros)

    # -- Hallo's face embedding (per video) ---------------------------------------------------
    def hallo_reference_contexts(self, embedding: Tensor, branch: int) -> Tensor:
        """attn2 contexts of Hallo's ReferenceNet inputs [reference, n motion frames] in one guidance
        branch (0: unconditional, 1: conditional), (1+n, T, C).

        Hallo runs its ReferenceNet once on both branches' [reference, motion frames], 2(1+n)
        images, with the context batch [zero embedding, embedding] repeated to fit: image p gets
        the embedding's tokens when p is odd. Reproduced as is: its weights were used that way.
        """
        n = self.config.motion_frames
        cond = self.face_projection(embedding)
        uncond = self.face_projection(torch.zeros_like(embedding))
        return torch.cat([cond if (branch * (1 + n) + s) % 2 else uncond for s in range(1 + n)])

    def face_context_kv(self, face_embedding: Tensor) -> list[KV]:
        """Hallo: the face embedding (1, E) -> the backbone's attn2 keys/values of its tokens, once per video."""
        return self.backbone.context_kv(self.face_projection(face_embedding))

    def video_condition(self, face_embedding: Tensor, regions: list[Tensor], region_scales: Tensor) -> VideoCondition:
        return VideoCondition(self.face_context_kv(face_embedding), regions, region_scales)

    def uncond_context_kv(self) -> list[KV]:
        """Hallo: attn2 keys/values of the zero face embedding's tokens, a model constant."""
        device = next(self.backbone.parameters()).device
        return self.backbone.context_kv(self.face_projection(torch.zeros(1, self.config.face_embedding_dim, device=device)))

    # -- per clip -----------------------------------------------------------------------
    def encode_audio(self, window: Tensor, index: Tensor | None = None, positions: Tensor | None = None) -> Tensor:
        """(1, S) samples of the clip's audio window -> (f, tokens, dim).

        whisper (EchoMimic): ``index`` (f, 10), each frame's whisper frames in the window; ``positions``
        (T,), each window state's row of the positional table.
        """
        return self.audio_encoder(window) if index is None else self.audio_encoder(window, index, positions)

    def clip_condition(
        self, tokens: Tensor, motion_latents: Tensor, face_mask: Tensor, speed: Tensor | None, face_embedding: Tensor | None = None
    ) -> ClipCondition:
        """Everything the step attends to that changes per clip, projected once.

        tokens (f, T, D); motion_latents (n, 4, h, w); face_mask (1, 1, H, W); speed (f,) (None
        without speed layers); face_embedding (1, E), Hallo only.
        """
        if self.face_projection is not None:
            # Hallo's branches see the motion frames under different contexts: one ReferenceNet pass for both
            n = motion_latents.shape[0]
            context = torch.cat([self.hallo_reference_contexts(face_embedding, b)[1:] for b in (0, 1)])
            feats = self.reference_net.features(torch.cat([motion_latents, motion_latents]), context).tokens
            uncond, cond = (self.backbone.motion_kv([t[b * n : (b + 1) * n] for t in feats]) for b in (0, 1))
            return ClipCondition(
                audio=self.backbone.audio_kv(tokens),
                motion=cond,
                speed=None,
                face=self.face_locator(face_mask),
                uncond_motion=uncond,
            )
        motion = None
        if motion_latents.shape[0]:  # EchoMimic has no motion frames
            motion = self.backbone.motion_kv(self.reference_net.features(motion_latents).hidden)
        speed_kv = None
        if self.speed_encoder is not None:
            speed_kv = self.backbone.speed_kv(self.speed_encoder(speed))
        return ClipCondition(
            audio=self.backbone.context_kv(tokens),
            motion=motion,
            speed=speed_kv,
            face=self.face_locator(face_mask),
        )

    def decode_latents(self, latents: Tensor) -> Tensor:
        """(N, 4, h, w) -> (N, H, W, 3) uint8."""
        pixels = self.vae.decode(latents / VAE_SCALING).sample
        return ((pixels / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)

    # -- per step -----------------------------------------------------------------------
    def model_output(
        self,
        x: Tensor,
        t: Tensor,
        ref: list[KV],
        clip: ClipCondition,
        guidance: Tensor | float | None,
        uncond: list | tuple | None = None,
        video: VideoCondition | None = None,
    ) -> Tensor:
        """Guided model output for x (f, 4, h, w): out_u + g (out_c - out_u); no guidance: out_c.

        ``uncond`` defaults to ``uncond_audio_kv()`` (Hallo: ``(uncond_context_kv(), uncond_audio_kv())``);
        pass it to hoist those constants. ``video``: Hallo's per-video inputs.
        """
        if self.config.uncond_branch == "hallo":
            return self._hallo_output(x, t, ref, clip, guidance, uncond, video)
        f = x.shape[0]
        audio, face, ref_skip = clip.audio, clip.face, 0
        if guidance is not None:
            uncond = self.uncond_audio_kv() if uncond is None else uncond
            audio = [(branches(ku, kc, f), branches(vu, vc, f)) for (ku, vu), (kc, vc) in zip(uncond, clip.audio, strict=True)]
            x = torch.cat([x, x])
            if self.config.uncond_branch == "echomimic":
                # EchoMimic's unconditional branch: no face-locator features, the reference bank masked out
                face, ref_skip = branches(torch.zeros_like(clip.face), clip.face, f), f
        cond = StepCondition(ctx=audio, ref=ref, ref_skip=ref_skip, motion=clip.motion, speed=clip.speed, face=face, frames=f)
        out = self.backbone(x, t, cond)
        return out if guidance is None else guide(out, f, guidance)

    def _hallo_output(self, x, t, ref, clip: ClipCondition, guidance, uncond, video: VideoCondition) -> Tensor:
        """Hallo's branches differ in every condition, attn1 included: its unconditional branch has no
        reference. Both run in one batched pass, [uncond; cond], the reference masked out of the first."""
        f = x.shape[0]
        shared = dict(regions=video.regions, region_scales=video.region_scales, frames=f)
        if guidance is None:
            cond = StepCondition(ctx=video.context, ref=ref, motion=clip.motion, face=clip.face, audio=clip.audio, **shared)
            return self.backbone(x, t, cond)
        context_u, audio_u = (self.uncond_context_kv(), self.uncond_audio_kv()) if uncond is None else uncond
        cond = StepCondition(
            ctx=[(branches(ku, kc, f), branches(vu, vc, f)) for (ku, vu), (kc, vc) in zip(context_u, video.context, strict=True)],
            ref=ref,
            ref_skip=f,
            motion=[tuple(torch.cat(s) for s in zip(u, c, strict=True)) for u, c in zip(clip.uncond_motion, clip.motion, strict=True)],
            face=branches(torch.zeros_like(clip.face), clip.face, f),
            audio=[
                tuple((branches(ku, kc, f), branches(vu, vc, f)) for (ku, vu), (kc, vc) in zip(u, c, strict=True))
                for u, c in zip(audio_u, clip.audio, strict=True)
            ],
            **shared,
        )
        return guide(self.backbone(torch.cat([x, x]), t, cond), f, guidance)


def branches(uncond: Tensor, cond: Tensor, frames: int) -> Tensor:
    """[uncond; cond]: one tensor of each guidance branch, each broadcast to ``frames`` rows."""
    return torch.cat([batched(uncond, frames), batched(cond, frames)])


def guide(out: Tensor, frames: int, guidance: Tensor | float) -> Tensor:
    """Classifier-free guidance of a batched [uncond; cond] output: out_u + g (out_c - out_u)."""
    out_u, out_c = out[:frames], out[frames:]
    return out_u + guidance * (out_c - out_u)


def build_model(cfg: ModelConfig, device: str | torch.device = "cpu", seed: int | None = 0) -> EMOModel:
    """The model of a preset; random weights from ``seed`` (``device="meta"``: shapes only, no memory)."""
    if seed is not None and str(device) != "meta":
        torch.manual_seed(seed)
    with torch.device(device):
        model = EMOModel(cfg)
    return model.eval()
