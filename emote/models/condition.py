"""The light conditioning encoders: face locator (mask -> features), speed layers (speed -> tokens)
and Hallo's face projection (face embedding -> attn2 context tokens)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class FaceLocator(nn.Module):
    """A few convolutions on the face-region mask, added to the backbone after ``conv_in``.

    ControlNet's conditioning-embedding layout (Hallo's ``face_locator`` names):
    three stride-2 stages take the mask to the latent resolution; ``conv_out`` starts
    at zero so an untrained locator changes nothing. A one-channel mask is repeated to
    ``cin`` channels (Hallo reads its binary face mask as an RGB image).
    """

    def __init__(self, cin: int, channels: tuple[int, ...], cout: int):
        super().__init__()
        self.conv_in = nn.Conv2d(cin, channels[0], 3, padding=1)
        blocks = []
        for a, b in zip(channels[:-1], channels[1:]):
            blocks += [nn.Conv2d(a, a, 3, padding=1), nn.Conv2d(a, b, 3, padding=1, stride=2)]
        self.blocks = nn.ModuleList(blocks)
        self.conv_out = nn.Conv2d(channels[-1], cout, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, mask: Tensor) -> Tensor:
        if mask.shape[1] != self.conv_in.in_channels:
            mask = mask.expand(-1, self.conv_in.in_channels, -1, -1)
        h = F.silu(self.conv_in(mask))
        for conv in self.blocks:
            h = F.silu(conv(h))
        return self.conv_out(h)


class SpeedEncoder(nn.Module):
    """EMO's speed layers: s_d = tanh((w - c_d) / r_d * 3) over D buckets, then an MLP to tokens.

    ``w`` is the head-rotation speed of a frame, normalised to [0, 1] (the bucket
    centres c_d span that range, each radius r_d is half the spacing). At inference
    it is a constant per frame chosen by the user.
    """

    def __init__(self, buckets: int, tokens: int, dim: int):
        super().__init__()
        self.tokens, self.dim = tokens, dim
        centres = torch.linspace(0.0, 1.0, buckets)
        radius = torch.full((buckets,), 0.5 / max(buckets - 1, 1))
        self.register_buffer("centres", centres)
        self.register_buffer("radius", radius)
        self.mlp = nn.Sequential(nn.Linear(buckets, dim), nn.SiLU(), nn.Linear(dim, tokens * dim))

    def forward(self, speed: Tensor) -> Tensor:
        """(f,) speeds -> (f, tokens, dim)."""
        s = torch.tanh((speed[:, None] - self.centres) / self.radius * 3.0)
        return self.mlp(s).reshape(speed.shape[0], self.tokens, self.dim)


class FaceProjection(nn.Module):
    """Hallo's ImageProjModel: a face embedding (InsightFace, 512-d) -> ``tokens`` attn2 context tokens."""

    def __init__(self, dim: int, tokens: int, context_dim: int):
        super().__init__()
        self.tokens, self.context_dim = tokens, context_dim
        self.proj = nn.Linear(dim, tokens * context_dim)
        self.norm = nn.LayerNorm(context_dim)

    def forward(self, embedding: Tensor) -> Tensor:
        """(B, dim) -> (B, tokens, context_dim)."""
        return self.norm(self.proj(embedding).reshape(-1, self.tokens, self.context_dim))
