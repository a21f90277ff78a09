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
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL
from torch import Tensor, nn

from .audio import AudioEncoder
from .condition import FaceLocator, SpeedEncoder
from .config import VAE_SCALING, ModelConfig
from .unet import KV, StepCondition, UNet


@dataclass
class ClipCondition:
    """Per-clip keys/values (lists in layer order) and the face-locator features."""

    audio: list[KV]
    motion: list[KV]
    speed: list[KV] | None
    face: Tensor


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
        self.audio_encoder = AudioEncoder(cfg.audio, u.cross_attention_dim, cfg.frames)
        self.face_locator = FaceLocator(cfg.face_locator_in_channels, cfg.face_locator_channels, u.block_out_channels[0])
        self.speed_encoder = SpeedEncoder(cfg.speed_buckets, cfg.speed_tokens, u.speed_dim) if u.speed_dim else None

    def with_geometry(self, frames: int | None = None, resolution: int | None = None) -> "EMOModel":
        """Change the clip length or resolution (no weight depends on them); validated by the config."""
        import dataclasses

        changes = {k: v for k, v in (("frames", frames), ("resolution", resolution)) if v is not None}
        if changes:
            self.config = dataclasses.replace(self.config, **changes)
            self.audio_encoder.clip_frames = self.config.frames
        return self

    def only(self, *components: str) -> "EMOModel":
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

    def reference(self, latent: Tensor) -> list[KV]:
        """Reference latent (1, 4, h, w) -> the backbone's attn1 keys/values of its tokens."""
        return self.backbone.reference_kv(self.reference_net.features(latent).tokens)

    def uncond_audio_kv(self) -> list[KV]:
        """attn2 keys/values of zero audio tokens: the unconditional branch, a model constant."""
        a = self.config.audio
        device = next(self.backbone.parameters()).device
        zeros = torch.zeros(1, a.tokens, self.config.unet.cross_attention_dim, device=device)
        return self.backbone.context_kv(zeros)

    # -- per clip -----------------------------------------------------------------------
    def encode_audio(self, window: Tensor) -> Tensor:
        """(1, S) samples of the clip's audio window -> (f, tokens, dim)."""
        return self.audio_encoder(window)

    def clip_condition(self, tokens: Tensor, motion_latents: Tensor, face_mask: Tensor, speed: Tensor) -> ClipCondition:
        """Everything the step attends to that changes per clip, projected once.

        tokens (f, T, D); motion_latents (n, 4, h, w); face_mask (1, 1, H, W); speed (f,).
        """
        hidden = self.reference_net.features(motion_latents).hidden
        speed_kv = None
        if self.speed_encoder is not None:
            speed_kv = self.backbone.speed_kv(self.speed_encoder(speed))
        return ClipCondition(
            audio=self.backbone.context_kv(tokens),
            motion=self.backbone.motion_kv(hidden),
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
        uncond: list[KV] | None = None,
    ) -> Tensor:
        """Guided model output for x (f, 4, h, w): out_u + g (out_c - out_u); no guidance: out_c.

        ``uncond`` defaults to ``uncond_audio_kv()``; pass it to hoist that constant.
        """
        f = x.shape[0]
        audio = clip.audio
        if guidance is not None:
            uncond = self.uncond_audio_kv() if uncond is None else uncond
            audio = [
                (torch.cat([ku.expand(f, -1, -1), kc]), torch.cat([vu.expand(f, -1, -1), vc]))
                for (ku, vu), (kc, vc) in zip(uncond, clip.audio, strict=True)
            ]
            x = torch.cat([x, x])
        cond = StepCondition(ctx=audio, ref=ref, motion=clip.motion, speed=clip.speed, face=clip.face, frames=f)
        out = self.backbone(x, t, cond)
        if guidance is None:
            return out
        out_u, out_c = out.chunk(2)
        return out_u + guidance * (out_c - out_u)


def build_model(cfg: ModelConfig, device: str | torch.device = "cpu", seed: int | None = 0) -> EMOModel:
    """The model of a preset; random weights from ``seed`` (``device="meta"``: shapes only, no memory)."""
    if seed is not None and str(device) != "meta":
        torch.manual_seed(seed)
    with torch.device(device):
        model = EMOModel(cfg)
    return model.eval()
