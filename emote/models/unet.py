"""The SD-style UNet of EMO: ReferenceNet and backbone in one definition (diffusers parameter names).

Three modes of one class:
- ``plain``: an SD UNet (``attn2`` on a context, output head); equal to diffusers'
  ``UNet2DConditionModel`` with the same config, which the tests check;
- ``reference``: the ReferenceNet: no temporal layers, no output head; returns the
  input of every ``attn1`` (the reference tokens) and the hidden state at every place
  where the backbone has a temporal layer (the motion-frame features);
- ``backbone``: ``attn1`` keys/values extended by the reference tokens' keys/values,
  ``attn2`` attends to the frame's audio tokens, AnimateDiff-style temporal layers
  after every (resnet, attention) unit whose first attention joins the motion frames
  along the frame axis and whose second attends to the speed tokens.

Hallo's backbone is the same class with options (``UNetConfig``): ``attn2`` attends to
a face embedding's tokens, an audio module after each spatial attention does the
audio (three cross-attentions masked to the full/face/lip regions, weighted), and the
motion frames' ReferenceNet tokens are prepended along the frame axis of each motion
module (its motion modules in blocks without attention never run, as in Hallo). Hallo's
"inflated" GroupNorm normalises each frame on its own, as every norm here already does.

Every conditioning tensor enters as a precomputed key/value pair (``StepCondition``),
never through hooks or module state: the projections that do not depend on x_t are
made once (``reference_kv``, ``audio_kv``, ``motion_kv``, ``speed_kv``) and the step
only multiplies queries. Used by export and the PyTorch reference pipeline only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import UNetConfig

KV = tuple[Tensor, Tensor]


@dataclass
class StepCondition:
    """Keys/values the backbone attends to, one entry per layer in forward order.

    ctx: ``attn2`` of every transformer block, (N or 1, M, C) each.
    ref: extra ``attn1`` keys/values of every transformer block, (1, R, C); None: plain self-attention.
    ref_skip: the leading batch rows that do not attend to ``ref`` (Hallo's unconditional branch,
        batched with the conditional one).
    motion: motion frames of every temporal layer, (hw, n, C) each: keys/values ("kv" mode), or
        the first attention's queries/keys/values and the tokens themselves ("concat" mode; (G*hw, n, C)
        when each guidance branch has its own); None: none.
    speed: speed-token keys/values of every temporal layer, (f, S, C); None: no speed layers.
    face: face-locator features added after ``conv_in``, (1, C0, h, w); None: none.
    audio: audio modules only: per module, the keys/values of its three region attentions, (f, T, C).
    regions: audio modules only: per depth, the full/face/lip masks, (3, hw).
    region_scales: audio modules only: the weights of the three regions, (3,).
    frames: f, the frames of one clip (the batch is G*f for G guidance branches).
    """

    ctx: list[KV]
    ref: list[KV] | None = None
    ref_skip: int = 0
    motion: list[tuple[Tensor, ...]] | None = None
    speed: list[KV] | None = None
    face: Tensor | None = None
    audio: list[tuple[KV, ...]] | None = None
    regions: list[Tensor] | None = None
    region_scales: Tensor | None = None
    frames: int = 1


@dataclass
class ReferenceFeatures:
    """What the ReferenceNet returns: ``attn1`` inputs (B, hw, C) and temporal-layer inputs (B, C, h, w)."""

    tokens: list[Tensor]
    hidden: list[Tensor]


# Export hygiene: a no-op .to() or expand() still exports a Cast or Expand node (hundreds in a step graph).
def cast(t: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """t in ``dtype``; a tensor already of it as it is."""
    return t if t is None or t.dtype == dtype else t.to(dtype)


def fp32(t: Tensor | None) -> Tensor | None:
    return cast(t, torch.float32)


def batched(t: Tensor, b: int) -> Tensor:
    """t (1 or b, ...) broadcast to b rows; one of b rows as it is."""
    return t if t.shape[0] == b else t.expand(b, *t.shape[1:])


def tiled(t: Tensor, g: int) -> Tensor:
    """t (n, ...) repeated g times along the batch, [t; t; ...]; g = 1: t as it is."""
    return t if g == 1 else t.repeat(g, *(1,) * (t.dim() - 1))


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in fp32 whatever the weights' dtype (the precision policy: norms stay fp32).

    In an fp32 model there are no casts; in an fp16 one they are Cast nodes around the norm.
    """

    def forward(self, x: Tensor) -> Tensor:
        w, b = fp32(self.weight), fp32(self.bias)
        return cast(F.group_norm(fp32(x), self.num_groups, w, b, self.eps), x.dtype)


class LayerNorm32(nn.LayerNorm):
    """LayerNorm computed in fp32 (see GroupNorm32)."""

    def forward(self, x: Tensor) -> Tensor:
        w, b = fp32(self.weight), fp32(self.bias)
        return cast(F.layer_norm(fp32(x), self.normalized_shape, w, b, self.eps), x.dtype)


def timestep_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding as diffusers' ``get_timestep_embedding`` with flip_sin_to_cos=True, shift 0."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = fp32(t)[:, None] * freqs[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedding(nn.Module):
    def __init__(self, dim: int, out: int):
        super().__init__()
        self.linear_1 = nn.Linear(dim, out)
        self.linear_2 = nn.Linear(out, out)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class ResnetBlock2D(nn.Module):
    def __init__(self, cin: int, cout: int, temb: int, groups: int, eps: float):
        super().__init__()
        self.norm1 = GroupNorm32(groups, cin, eps=eps)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb, cout)
        self.norm2 = GroupNorm32(groups, cout, eps=eps)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return (self.conv_shortcut(x) if self.conv_shortcut is not None else x) + h


class Downsample2D(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample2D(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        # size, not scale_factor: the exporter writes a float64 scales tensor that ONNX's Resize rejects
        return self.conv(F.interpolate(x, size=(2 * x.shape[2], 2 * x.shape[3]), mode="nearest"))


def attend(q: Tensor, k: Tensor, v: Tensor, heads: int, bias: Tensor | None = None) -> Tensor:
    """Multi-head scaled dot-product attention; k/v broadcast over q's batch when theirs is 1.

    ``bias``: added to the fp32 logits, (b, 1, 1, keys); -inf removes a key from a row's softmax.
    """
    b, n, c = q.shape
    d = c // heads
    k, v = batched(k, b), batched(v, b)
    q = q.reshape(b, n, heads, d).transpose(1, 2)
    k = k.reshape(b, -1, heads, d).transpose(1, 2)
    v = v.reshape(b, -1, heads, d).transpose(1, 2)
    # the softmax stays in the graph as one op so that precision passes can pin it to fp32
    # the softmax runs in fp32 whatever the model's dtype (a no-op in fp32 models)
    logits = fp32(torch.matmul(q, k.transpose(-1, -2))) * (d**-0.5)
    if bias is not None:
        logits = logits + bias
    w = cast(torch.softmax(logits, dim=-1), v.dtype)
    return torch.matmul(w, v).transpose(1, 2).reshape(b, n, c)


class Attention(nn.Module):
    """diffusers' ``Attention`` parameter layout (to_q, to_k, to_v, to_out.0), queries and keys split."""

    def __init__(self, dim: int, heads: int, context_dim: int | None = None):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim or dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim or dim, dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(0.0)])

    def kv(self, context: Tensor) -> KV:
        return self.to_k(context), self.to_v(context)

    def forward(self, x: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None) -> Tensor:
        return self.to_out[0](attend(self.to_q(x), k, v, self.heads, bias))


class GEGLU(nn.Module):
    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x: Tensor) -> Tensor:
        h = self.proj(x)
        inner = h.shape[-1] // 2  # slices, not chunk(): chunk exports as ONNX sequence ops
        return h[..., :inner] * F.gelu(h[..., inner:])


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.ModuleList([GEGLU(dim, dim * mult), nn.Dropout(0.0), nn.Linear(dim * mult, dim)])

    def forward(self, x: Tensor) -> Tensor:
        return self.net[2](self.net[0](x))


def reference_mask(batch: int, skip: int, tokens: int, ref_tokens: int, device: torch.device) -> Tensor:
    """attn1 logit bias (batch, 1, 1, tokens + ref_tokens): the first ``skip`` rows do not see the reference.

    A -inf logit is a zero softmax weight, so such a row attends exactly as plain self-attention.
    """
    hidden = torch.full((skip, 1, 1, ref_tokens), float("-inf"), device=device)
    ref = torch.cat([hidden, torch.zeros(batch - skip, 1, 1, ref_tokens, device=device)])
    return torch.cat([torch.zeros(batch, 1, 1, tokens, device=device), ref], dim=-1)


class BasicTransformerBlock(nn.Module):
    """Self-attention (+ reference keys/values), cross-attention (audio in the backbone), GEGLU MLP.

    ``cross=False``: no cross-attention (EchoMimic's ReferenceNet has neither attn2 nor norm2).
    """

    def __init__(self, dim: int, heads: int, context_dim: int, cross: bool = True):
        super().__init__()
        self.norm1 = LayerNorm32(dim)
        self.attn1 = Attention(dim, heads)
        if cross:
            self.norm2 = LayerNorm32(dim)
            self.attn2 = Attention(dim, heads, context_dim)
        self.norm3 = LayerNorm32(dim)
        self.ff = FeedForward(dim)

    @property
    def cross(self) -> bool:
        return hasattr(self, "attn2")

    def forward(self, h: Tensor, ctx: KV | None, ref: KV | None, tokens_out: list[Tensor] | None, ref_skip: int = 0) -> Tensor:
        n = self.norm1(h)
        if tokens_out is not None:
            tokens_out.append(n)  # the ReferenceNet's reference feature: attn1's input
        k, v = self.attn1.kv(n)
        bias = None
        if ref is not None:
            b, tokens = n.shape[:2]
            k = torch.cat([k, batched(ref[0], b)], dim=1)
            v = torch.cat([v, batched(ref[1], b)], dim=1)
            if ref_skip:
                bias = reference_mask(b, ref_skip, tokens, ref[0].shape[1], n.device)
        h = self.attn1(n, k, v, bias) + h
        if self.cross:
            h = self.attn2(self.norm2(h), *ctx) + h
        return self.ff(self.norm3(h)) + h


class Transformer2DModel(nn.Module):
    """SD1.5's spatial transformer: GroupNorm, 1x1 conv in, one transformer block, 1x1 conv out."""

    def __init__(self, c: int, heads: int, context_dim: int, groups: int, cross: bool = True):
        super().__init__()
        self.norm = GroupNorm32(groups, c, eps=1e-6)
        self.proj_in = nn.Conv2d(c, c, 1)
        self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(c, heads, context_dim, cross)])
        self.proj_out = nn.Conv2d(c, c, 1)

    def forward(self, x: Tensor, ctx: KV | None, ref: KV | None, tokens_out: list[Tensor] | None, ref_skip: int = 0) -> Tensor:
        b, c, hh, ww = x.shape
        h = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)
        h = self.transformer_blocks[0](h, ctx, ref, tokens_out, ref_skip)
        return self.proj_out(h.transpose(1, 2).reshape(b, c, hh, ww)) + x


def sinusoid_table(length: int, dim: int) -> Tensor:
    """AnimateDiff's temporal positional encoding, (1, length, dim)."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(1, length, dim)
    pe[0, :, 0::2] = torch.sin(pos * div)
    pe[0, :, 1::2] = torch.cos(pos * div)
    return pe


class PositionalEncoding(nn.Module):
    def __init__(self, dim: int, max_len: int):
        super().__init__()
        self.register_buffer("pe", sinusoid_table(max_len, dim))  # persistent: AnimateDiff checkpoints hold it


class TemporalAttention(nn.Module):
    """AnimateDiff's VersatileAttention parameter layout; temporal or per-frame cross-attention."""

    def __init__(self, dim: int, heads: int, max_len: int, context_dim: int | None = None):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim or dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim or dim, dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(0.0)])
        self.pos_encoder = PositionalEncoding(dim, max_len) if context_dim is None else None


class TemporalTransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, max_len: int, speed_dim: int):
        super().__init__()
        second = TemporalAttention(dim, heads, max_len, speed_dim or None)
        self.attention_blocks = nn.ModuleList([TemporalAttention(dim, heads, max_len), second])
        self.norms = nn.ModuleList([LayerNorm32(dim), LayerNorm32(dim)])
        self.ff = FeedForward(dim)
        self.ff_norm = LayerNorm32(dim)


class TemporalTransformer3DModel(nn.Module):
    def __init__(self, c: int, heads: int, groups: int, max_len: int, speed_dim: int):
        super().__init__()
        self.norm = GroupNorm32(groups, c, eps=1e-6)
        self.proj_in = nn.Linear(c, c)
        self.transformer_blocks = nn.ModuleList([TemporalTransformerBlock(c, heads, max_len, speed_dim)])
        self.proj_out = nn.Linear(c, c)


class MotionModule(nn.Module):
    """EMO's temporal layer (AnimateDiff motion-module names).

    First attention: temporal self-attention over [motion frames, clip frames] at
    each pixel; only the clip frames' queries are computed (their outputs are the
    ones kept), so the motion frames' keys/values are a per-clip constant.
    Second attention: each frame's pixels attend to that frame's speed tokens
    (EMO's speed layers); with ``speed_dim=0`` it is AnimateDiff's second temporal
    self-attention.

    ``concat`` (Hallo): the motion frames are prepended along the frame axis and go
    through both attentions. Their first-attention queries, keys and values and their
    tokens are per-clip constants; the second attention's keys/values of the motion
    frames depend on x_t (through the first), so they are computed in the step.
    """

    def __init__(self, c: int, heads: int, groups: int, max_len: int, speed_dim: int, concat: bool = False):
        super().__init__()
        self.concat = concat
        self.temporal_transformer = TemporalTransformer3DModel(c, heads, groups, max_len, speed_dim)

    def _tokens(self, x: Tensor) -> Tensor:
        """(B, C, h, w) -> (B, hw, C): per-frame GroupNorm then proj_in."""
        tt = self.temporal_transformer
        return tt.proj_in(tt.norm(x).flatten(2).transpose(1, 2))

    def motion_kv(self, feats: Tensor) -> tuple[Tensor, ...]:
        """Keys/values of the n motion frames, (hw, n, C): per clip, never per step.

        ``feats``: the ReferenceNet's hidden state here, (n, C, h, w); in ``concat`` mode its
        attn1 tokens of this unit's attention, (n, hw, C), and the result is (q, k, v, tokens).
        """
        if self.concat:
            return self._motion_state(feats)
        block = self.temporal_transformer.transformer_blocks[0]
        attn = block.attention_blocks[0]
        n = feats.shape[0]
        m = block.norms[0](self._tokens(feats).transpose(0, 1))  # (hw, n, C)
        m = m + attn.pos_encoder.pe[:, :n]
        return attn.to_k(m), attn.to_v(m)

    def _motion_state(self, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        block = self.temporal_transformer.transformer_blocks[0]
        attn = block.attention_blocks[0]
        n, hw, c = tokens.shape
        side = math.isqrt(hw)  # square latents, as Hallo's "b f (d1 d2) c -> b c f d1 d2" assumes
        h = self._tokens(tokens.transpose(1, 2).reshape(n, c, side, side)).transpose(0, 1)  # (hw, n, C)
        m = block.norms[0](h) + attn.pos_encoder.pe[:, :n]
        return attn.to_q(m), attn.to_k(m), attn.to_v(m), h

    def speed_kv(self, tokens: Tensor) -> KV:
        attn = self.temporal_transformer.transformer_blocks[0].attention_blocks[1]
        return attn.to_k(tokens), attn.to_v(tokens)

    def _forward_concat(self, x: Tensor, frames: int, motion: tuple[Tensor, ...]) -> Tensor:
        """Hallo: both attentions over [motion frames, clip frames]; only the clip frames are kept."""
        tt = self.temporal_transformer
        block = tt.transformer_blocks[0]
        a0, a1 = block.attention_blocks
        bf, c, hh, ww = x.shape
        g, hw = bf // frames, hh * ww
        h = self._tokens(x).reshape(g, frames, hw, c).transpose(1, 2).reshape(g * hw, frames, c)
        # one clip's motion frames for every branch (hw rows), or each branch's own (g*hw rows)
        qm, km, vm, hm = (t if t.shape[0] == g * hw else tiled(t, g) for t in motion)
        n = hm.shape[1]
        nc = block.norms[0](h) + a0.pos_encoder.pe[:, n : n + frames]
        q, k, v = (torch.cat([m, proj(nc)], dim=1) for m, proj in ((qm, a0.to_q), (km, a0.to_k), (vm, a0.to_v)))
        h = torch.cat([hm, h], dim=1) + a0.to_out[0](attend(q, k, v, a0.heads))
        n1 = block.norms[1](h) + a1.pos_encoder.pe[:, : n + frames]
        h = h[:, n:] + a1.to_out[0](attend(a1.to_q(n1[:, n:]), a1.to_k(n1), a1.to_v(n1), a1.heads))
        h = block.ff(block.ff_norm(h)) + h
        h = tt.proj_out(h).reshape(g, hw, frames, c).transpose(1, 2).reshape(bf, hw, c)
        return h.transpose(1, 2).reshape(bf, c, hh, ww) + x

    def forward(self, x: Tensor, frames: int, motion: tuple[Tensor, ...] | None, speed: KV | None) -> Tensor:
        if self.concat:
            return self._forward_concat(x, frames, motion)
        tt = self.temporal_transformer
        block = tt.transformer_blocks[0]
        bf, c, hh, ww = x.shape
        g, hw = bf // frames, hh * ww
        h = self._tokens(x).reshape(g, frames, hw, c).transpose(1, 2).reshape(g * hw, frames, c)

        a0, a1 = block.attention_blocks
        offset = 0 if motion is None else motion[0].shape[1]
        n = block.norms[0](h) + a0.pos_encoder.pe[:, offset : offset + frames]
        k, v = a0.to_k(n), a0.to_v(n)
        if motion is not None:
            k = torch.cat([tiled(motion[0], g), k], dim=1)
            v = torch.cat([tiled(motion[1], g), v], dim=1)
        h = a0.to_out[0](attend(a0.to_q(n), k, v, a0.heads)) + h

        n = block.norms[1](h)
        if speed is not None:  # per-frame cross-attention: (g*hw, f, C) -> (g*f, hw, C)
            q = n.reshape(g, hw, frames, c).transpose(1, 2).reshape(g * frames, hw, c)
            k, v = (tiled(t, g) for t in speed)
            o = attend(a1.to_q(q), k, v, a1.heads)
            o = o.reshape(g, frames, hw, c).transpose(1, 2).reshape(g * hw, frames, c)
        else:
            n = n + a1.pos_encoder.pe[:, offset : offset + frames]
            o = attend(a1.to_q(n), a1.to_k(n), a1.to_v(n), a1.heads)
        h = a1.to_out[0](o) + h
        h = block.ff(block.ff_norm(h)) + h

        h = tt.proj_out(h).reshape(g, hw, frames, c).transpose(1, 2).reshape(bf, hw, c)
        return h.transpose(1, 2).reshape(bf, c, hh, ww) + x


REGIONS = ("full", "face", "lip")  # Hallo's attn2_0, attn2_1, attn2_2 and their zero convs, in this order


class RegionAudioBlock(nn.Module):
    """Hallo's audio block: self-attention, then one cross-attention to the frame's audio tokens
    per region (full, face, lip), each masked to its region, through a 1x1 conv and weighted."""

    def __init__(self, dim: int, heads: int, context_dim: int):
        super().__init__()
        self.norm1 = LayerNorm32(dim)
        self.attn1 = Attention(dim, heads)
        self.norm2 = LayerNorm32(dim)
        self.attn2_0 = Attention(dim, heads, context_dim)
        self.attn2_1 = Attention(dim, heads, context_dim)
        self.attn2_2 = Attention(dim, heads, context_dim)
        self.norm3 = LayerNorm32(dim)
        self.ff = FeedForward(dim)
        self.zero_conv_full = nn.Conv2d(dim, dim, 1)
        self.zero_conv_face = nn.Conv2d(dim, dim, 1)
        self.zero_conv_lip = nn.Conv2d(dim, dim, 1)

    def regions(self) -> list[tuple[Attention, nn.Conv2d]]:
        return [(getattr(self, f"attn2_{i}"), getattr(self, f"zero_conv_{r}")) for i, r in enumerate(REGIONS)]

    def forward(self, h: Tensor, audio: tuple[KV, ...], masks: Tensor, scales: Tensor) -> Tensor:
        n = self.norm1(h)
        h = self.attn1(n, *self.attn1.kv(n)) + h
        n = self.norm2(h)
        for i, ((attn, conv), (k, v)) in enumerate(zip(self.regions(), audio, strict=True)):
            o = attn(n, k, v) * masks[i][None, :, None]
            # a 1x1 conv on the token grid is a linear map of the channels
            h = h + scales[i] * F.linear(o, conv.weight.flatten(1), conv.bias)
        return self.ff(self.norm3(h)) + h


class AudioModule(nn.Module):
    """Hallo's audio transformer: GroupNorm, 1x1 conv to its width, the audio block, 1x1 conv back, residual.

    Its width is the one Hallo gives it: the block's input width (``width``), not the output's.
    """

    def __init__(self, c: int, width: int, heads: int, context_dim: int, groups: int):
        super().__init__()
        self.norm = GroupNorm32(groups, c, eps=1e-6)
        self.proj_in = nn.Conv2d(c, width, 1)
        self.transformer_blocks = nn.ModuleList([RegionAudioBlock(width, heads, context_dim)])
        self.proj_out = nn.Conv2d(width, c, 1)

    def kv(self, tokens: Tensor) -> tuple[KV, ...]:
        """Keys/values of the audio tokens for each region's attention: once per clip."""
        return tuple(attn.kv(tokens) for attn, _ in self.transformer_blocks[0].regions())

    def forward(self, x: Tensor, audio: tuple[KV, ...], masks: Tensor, scales: Tensor) -> Tensor:
        b, c, hh, ww = x.shape
        h = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)
        h = self.transformer_blocks[0](h, audio, masks, scales)
        return self.proj_out(h.transpose(1, 2).reshape(b, -1, hh, ww)) + x


class Block(nn.Module):
    """One level of the UNet: resnets, optional attentions, audio and motion modules, optional resampler."""

    def __init__(
        self,
        cfg: UNetConfig,
        cins: list[int],
        cout: int,
        attention: bool,
        temporal: bool,
        resample,
        audio_widths: list[int] | None = None,
        cross: bool = True,
    ):
        super().__init__()
        temb = cfg.block_out_channels[0] * 4
        g, eps = cfg.norm_num_groups, cfg.norm_eps
        self.resnets = nn.ModuleList([ResnetBlock2D(c, cout, temb, g, eps) for c in cins])
        if attention:
            self.attentions = nn.ModuleList([Transformer2DModel(cout, cfg.num_heads, cfg.cross_attention_dim, g, cross) for _ in cins])
        if attention and audio_widths:
            self.audio_modules = nn.ModuleList([AudioModule(cout, w, cfg.num_heads, cfg.cross_attention_dim, g) for w in audio_widths])
        if temporal:
            concat = cfg.motion_frames_mode == "concat"
            self.motion_modules = nn.ModuleList(
                [MotionModule(cout, cfg.temporal_heads, g, cfg.temporal_max_len, cfg.speed_dim, concat) for _ in cins]
            )
        if resample == "down":
            self.downsamplers = nn.ModuleList([Downsample2D(cout)])
        elif resample == "up":
            self.upsamplers = nn.ModuleList([Upsample2D(cout)])


class MidBlock(nn.Module):
    def __init__(self, cfg: UNetConfig, c: int, temporal: bool, audio: bool = False, cross: bool = True):
        super().__init__()
        temb = cfg.block_out_channels[0] * 4
        g, eps = cfg.norm_num_groups, cfg.norm_eps
        self.attentions = nn.ModuleList([Transformer2DModel(c, cfg.num_heads, cfg.cross_attention_dim, g, cross)])
        self.resnets = nn.ModuleList([ResnetBlock2D(c, c, temb, g, eps) for _ in range(2)])
        if audio:
            self.audio_modules = nn.ModuleList([AudioModule(c, c, cfg.num_heads, cfg.cross_attention_dim, g)])
        if temporal:
            concat = cfg.motion_frames_mode == "concat"
            self.motion_modules = nn.ModuleList([MotionModule(c, cfg.temporal_heads, g, cfg.temporal_max_len, cfg.speed_dim, concat)])


MODES = ("plain", "reference", "backbone")


class UNet(nn.Module):
    """SD-style UNet; see the module docstring for the three modes."""

    def __init__(self, cfg: UNetConfig, mode: str = "backbone"):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unknown UNet mode {mode!r}: one of {MODES}")
        self.cfg, self.mode = cfg, mode
        temporal = mode == "backbone"
        audio = temporal and cfg.audio_modules
        cross = mode != "reference" or cfg.reference_cross_attention
        ch = cfg.block_out_channels
        levels, lpb = len(ch), cfg.layers_per_block
        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(ch[0], ch[0] * 4)

        self.down_blocks = nn.ModuleList()
        skips = [ch[0]]
        cin = ch[0]
        for i, cout in enumerate(ch):
            last = i == levels - 1
            cins = [cin] + [cout] * (lpb - 1)
            self.down_blocks.append(
                Block(cfg, cins, cout, cfg.attention_levels[i], temporal, None if last else "down", audio and cins, cross)
            )
            skips += [cout] * lpb + ([] if last else [cout])
            cin = cout
        self.mid_block = MidBlock(cfg, ch[-1], temporal, audio, cross)

        self.up_blocks = nn.ModuleList()
        rev = list(reversed(ch))
        prev = ch[-1]
        for i, cout in enumerate(rev):
            cins = []
            for _ in range(lpb + 1):
                cins.append(prev + skips.pop())
                prev = cout
            level = levels - 1 - i
            widths = [rev[min(i + 1, levels - 1)]] * (lpb + 1)  # Hallo sizes an up block's audio modules by its input_channel
            self.up_blocks.append(
                Block(cfg, cins, cout, cfg.attention_levels[level], temporal, "up" if i < levels - 1 else None, audio and widths, cross)
            )
        if mode != "reference":
            self.conv_norm_out = GroupNorm32(cfg.norm_num_groups, ch[0], eps=cfg.norm_eps)
            self.conv_out = nn.Conv2d(ch[0], cfg.out_channels, 3, padding=1)

    # -- layer inventories (forward order), used to name graph inputs -------------------
    def transformer_blocks(self) -> list[BasicTransformerBlock]:
        return [m for m in self.modules() if isinstance(m, BasicTransformerBlock)]

    def _blocks(self) -> list[nn.Module]:
        return [*self.down_blocks, self.mid_block, *self.up_blocks]

    def _runs_motion(self, block: nn.Module) -> bool:
        # Hallo runs its UNet in training mode, whose checkpointed path skips the motion
        # modules of blocks without attention (hallo issues #99, #140): they are loaded, never run
        return hasattr(block, "motion_modules") and (self.cfg.motion_in_plain_blocks or hasattr(block, "attentions"))

    def motion_modules(self) -> list[MotionModule]:
        """The motion modules that run, in forward order."""
        return [m for b in self._blocks() if self._runs_motion(b) for m in b.motion_modules]

    def audio_modules(self) -> list[AudioModule]:
        return [m for b in self._blocks() if hasattr(b, "audio_modules") for m in b.audio_modules]

    # -- per-video / per-clip projections (hoisted out of the step) --------------------
    def reference_kv(self, tokens: list[Tensor]) -> list[KV]:
        """attn1 keys/values of the reference tokens: once per video."""
        return [blk.attn1.kv(t) for blk, t in zip(self.transformer_blocks(), tokens, strict=True)]

    def context_kv(self, context: Tensor) -> list[KV | None]:
        """attn2 keys/values of a context (audio tokens per frame, or face-embedding tokens): once per clip/video.

        None for a block without attn2 (EchoMimic's ReferenceNet).
        """
        return [blk.attn2.kv(context) if blk.cross else None for blk in self.transformer_blocks()]

    def audio_kv(self, tokens: Tensor) -> list[tuple[KV, ...]]:
        """Audio modules: each region attention's keys/values of the audio tokens, once per clip."""
        return [am.kv(tokens) for am in self.audio_modules()]

    def motion_kv(self, features: list[Tensor]) -> list[tuple[Tensor, ...]]:
        """Per motion module: from the ReferenceNet's hidden states, or its tokens in ``concat`` mode."""
        return [mm.motion_kv(h) for mm, h in zip(self.motion_modules(), features, strict=True)]

    def speed_kv(self, tokens: Tensor) -> list[KV]:
        return [mm.speed_kv(tokens) for mm in self.motion_modules()]

    # -- forward ------------------------------------------------------------------------
    def forward(self, x: Tensor, t: Tensor, cond: StepCondition) -> Tensor:
        """Model output (eps or v) for x (G*f, C, h, w) at timestep t (a scalar or (N,) tensor)."""
        if self.mode == "reference":
            raise RuntimeError("the ReferenceNet has no output head: call features()")
        h = self._walk(x, t, cond, None)
        return self.conv_out(F.silu(self.conv_norm_out(h)))

    def features(self, x: Tensor, context: Tensor | None = None) -> ReferenceFeatures:
        """ReferenceNet: run at timestep 0 and collect attn1 inputs and temporal-layer inputs.

        ``context`` feeds attn2 (EMO: none, so zeros: the layer then adds its output bias).
        """
        if context is None:
            context = x.new_zeros(x.shape[0], 1, self.cfg.cross_attention_dim)
        out = ReferenceFeatures([], [])
        cond = StepCondition(ctx=self.context_kv(context), frames=x.shape[0])
        self._walk(x, torch.zeros((), device=x.device), cond, out)
        return out

    def _walk(self, x: Tensor, t: Tensor, cond: StepCondition, out: ReferenceFeatures | None) -> Tensor:
        t = t.reshape(-1).expand(x.shape[0]) if t.numel() == 1 else t
        temb = self.time_embedding(cast(timestep_embedding(t, self.cfg.block_out_channels[0]), x.dtype))
        h = self.conv_in(x)
        if cond.face is not None:
            h = h + cond.face
        counters = [0, 0, 0]  # transformer blocks, motion modules, audio modules seen so far
        tokens_out = out.tokens if out is not None else None

        def attn(block_attn: Transformer2DModel, h: Tensor) -> Tensor:
            i = counters[0]
            counters[0] += 1
            ref = cond.ref[i] if cond.ref is not None else None
            return block_attn(h, cond.ctx[i], ref, tokens_out, cond.ref_skip)

        def audio(block, j: int, h: Tensor, depth: int) -> Tensor:
            if not hasattr(block, "audio_modules"):
                return h
            i = counters[2]
            counters[2] += 1
            return block.audio_modules[j](h, cond.audio[i], cond.regions[depth], cond.region_scales)

        def temporal(block, j: int, h: Tensor) -> Tensor:
            if out is not None:
                out.hidden.append(h)
            if not self._runs_motion(block):
                return h
            i = counters[1]
            counters[1] += 1
            motion = cond.motion[i] if cond.motion is not None else None
            speed = cond.speed[i] if cond.speed is not None else None
            return block.motion_modules[j](h, cond.frames, motion, speed)

        skips = [h]
        deepest = len(self.down_blocks) - 1  # depth: the level index (Hallo's region masks are per depth)
        for depth, blk in enumerate(self.down_blocks):
            for j, res in enumerate(blk.resnets):
                h = res(h, temb)
                if hasattr(blk, "attentions"):
                    h = attn(blk.attentions[j], h)
                h = audio(blk, j, h, depth)
                h = temporal(blk, j, h)
                skips.append(h)
            if hasattr(blk, "downsamplers"):
                h = blk.downsamplers[0](h)
                skips.append(h)

        mid = self.mid_block
        h = mid.resnets[0](h, temb)
        h = attn(mid.attentions[0], h)
        h = audio(mid, 0, h, deepest)
        h = temporal(mid, 0, h)
        h = mid.resnets[1](h, temb)

        for i, blk in enumerate(self.up_blocks):
            for j, res in enumerate(blk.resnets):
                h = res(torch.cat([h, skips.pop()], dim=1), temb)
                if hasattr(blk, "attentions"):
                    h = attn(blk.attentions[j], h)
                h = audio(blk, j, h, deepest - i)
                h = temporal(blk, j, h)
            if hasattr(blk, "upsamplers"):
                h = blk.upsamplers[0](h)
        return h
