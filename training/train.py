"""The demo model's training recipe: the VAE, then the EMO model in stages, on the CPU, resumable.

    python -m training.train --data build/data/train --work build/train          # every stage, resuming
    python -m training.train --data build/data/train --work build/train --stage video
    python -m training.train --data build/data/train --work build/train --ship   # -> emote/weights/demo

| stage  | trains                                          | on                                                          |
| ------ | ----------------------------------------------- | ----------------------------------------------------------- |
| vae    | the AutoencoderKL                               | single frames: L1 (mouth region x4) + a light KL            |
| encode | (nothing)                                       | every frame -> its latent, once; latents scaled to unit std |
| image  | ReferenceNet, backbone's spatial layers, face locator | (reference, target) frames of one person; no audio; temporal layers held at identity |
| audio  | the audio encoder (wav2vec2 + projection)       | clip audio windows -> each frame's mouth opening and width, through a linear head dropped after |
| reader | a latent-space mouth reader (frozen after)      | every frame's latent -> its mouth opening (the data's ground truth) |
| video  | everything but the VAE                          | clips of f frames with n motion frames, their audio window and head speed |

As EMO trains: an image stage teaches the backbone to copy the reference's
appearance (ReferenceNet attention), then a video stage adds the temporal layers,
the audio and the speed layers. Between them, an audio stage stands in for the
self-supervised pre-training of the real wav2vec2 (960 h of speech, not downloadable
here): from scratch, the video stage's diffusion loss alone left the audio path
unused. From step 500 of the video stage, a lip-sync expert loss (Wav2Lip's idea, in
latent space: the reader stage's small CNN reads the mouth of the predicted clean latents,
which must read as the true frames' do) pushes the mouth to follow the audio.
Diffusion: v-prediction on SD's schedule rescaled
to zero terminal SNR (the demo preset's sampler), min-SNR-5 loss weights (Hang et
al. 2023), the mouth region weighted x4 (a few latent pixels decide lip sync),
audio tokens zeroed 10% of the time (the unconditional branch of guidance), motion
frames zeroed 25% of the time (the first clip of a video has none). An EMA of the
weights is what ships.

Each stage keeps ``<work>/<stage>.pt`` (weights, optimiser, EMA, step, RNG), saved
every ``save_every`` steps and at the end, and resumes from it; ``<work>/loss.jsonl``
logs every step. ``--ship`` writes the EMA weights as a float16 safetensors
checkpoint (``emote.models.checkpoint``) into ``emote/weights/demo``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from emote.models.config import ModelConfig, preset
from emote.models.emo import EMOModel, build_model
from emote.models.unet import MotionModule, StepCondition
from emote.runtime.clips import ClipPlan
from emote.runtime.sampler import alphas_cumprod
from training.data import Dataset

PRESET = "demo"
MOUTH = (slice(54, 92), slice(34, 94))  # rows, columns of the mouth in a 128 px crop (all poses), see training/data.py
MOUTH_WEIGHT = 4.0
SYNC_FROM = 500  # video steps before the lip-sync expert loss joins (train_video says why)
SYNC_WEIGHT = 0.2  # the sync loss's weight beside the diffusion loss (about 0.02 by then)
AUDIO_DROP = 0.10
MOTION_DROP = 0.25
MIN_SNR_GAMMA = 5.0


@dataclass(frozen=True)
class Stage:
    steps: int
    batch: int  # frames (vae), pairs (image) or clips (video) per optimiser step
    lr: float
    save_every: int = 100
    warmup: int = 100
    ema: float = 0.0  # 0: no EMA


RECIPE = {
    "vae": Stage(steps=6000, batch=16, lr=6e-4, save_every=250),
    "decoder": Stage(steps=1500, batch=16, lr=2e-4, save_every=250, warmup=50),
    "image": Stage(steps=1500, batch=24, lr=2e-4, ema=0.999),
    "audio": Stage(steps=2000, batch=8, lr=1e-3, save_every=200, warmup=50),
    "reader": Stage(steps=1500, batch=256, lr=2e-3, save_every=500, warmup=50),
    "video": Stage(steps=1500, batch=4, lr=1e-4, ema=0.998),
}


# -- bookkeeping ---------------------------------------------------------------------------------------------
class Run:
    """One stage's state on disk: resumable, atomic saves, a loss log and a progress bar."""

    def __init__(self, work: Path, stage: str, spec: Stage):
        self.work, self.stage, self.spec = work, stage, spec
        self.path = work / f"{stage}.pt"
        self.log = open(work / "loss.jsonl", "a")  # noqa: SIM115 - a stage-long log, flushed at every step
        self.step = 0
        self.started = time.time()

    def load(self, modules: dict, optimiser, ema: dict | None) -> bool:
        if not self.path.exists():
            return False
        state = torch.load(self.path, map_location="cpu", weights_only=False)
        for name, m in modules.items():
            m.load_state_dict(state["modules"][name])
        optimiser.load_state_dict(state["optimiser"])
        if ema is not None:
            for k, v in state["ema"].items():
                ema[k].copy_(v)
        self.step = state["step"]
        torch.set_rng_state(state["torch_rng"])
        return True

    def save(self, modules: dict, optimiser, ema: dict | None, rng: np.random.Generator) -> None:
        state = {
            "modules": {name: m.state_dict() for name, m in modules.items()},
            "optimiser": optimiser.state_dict(),
            "ema": ema,
            "step": self.step,
            "torch_rng": torch.get_rng_state(),
            "np_rng": rng.bit_generator.state,
        }
        tmp = self.path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.path)

    def progress(self, bar, modules: dict, optimiser, ema: dict | None, rng: np.random.Generator, **shown: float) -> None:
        """After an optimiser step: the progress bar, and a save every ``save_every`` steps and at the end."""
        bar.update()
        bar.set_postfix({k: f"{v:.4f}" for k, v in shown.items()})
        if self.step % self.spec.save_every == 0 or self.step == self.spec.steps:
            self.save(modules, optimiser, ema, rng)

    def record(self, **values) -> None:
        self.log.write(json.dumps({"stage": self.stage, "step": self.step, "time": round(time.time() - self.started, 1), **values}) + "\n")
        self.log.flush()


def lr_at(step: int, spec: Stage) -> float:
    """Linear warm-up, then cosine decay to a tenth."""
    if step < spec.warmup:
        return spec.lr * (step + 1) / spec.warmup
    p = (step - spec.warmup) / max(1, spec.steps - spec.warmup)
    return spec.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(p, 1.0))))


def ema_of(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in params.items()}


@torch.no_grad()
def ema_update(ema: dict[str, torch.Tensor], params: dict[str, torch.Tensor], decay: float, step: int) -> None:
    """EMA with the usual warm-up: early on the average forgets the random initialisation quickly."""
    decay = min(decay, (1 + step) / (10 + step))
    for k, p in params.items():
        ema[k].lerp_(p.detach(), 1.0 - decay)


def pixels(frames: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def mouth_weight(shape: tuple[int, ...], scale: int) -> torch.Tensor:
    """1 everywhere, MOUTH_WEIGHT on the mouth region (at 1/scale of the crop's resolution)."""
    w = torch.ones(shape[-2:])
    rows, cols = MOUTH
    w[rows.start // scale : -(-rows.stop // scale), cols.start // scale : -(-cols.stop // scale)] = MOUTH_WEIGHT
    return w


# -- stage: VAE ------------------------------------------------------------------------------------------------
def train_vae(model: EMOModel, data: Dataset, work: Path, spec: Stage) -> None:
    vae = model.vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=spec.lr, betas=(0.9, 0.99), weight_decay=0.0)
    run = Run(work, "vae", spec)
    rng = np.random.default_rng(100)
    if run.load({"vae": vae}, opt, None):
        rng = np.random.default_rng([100, run.step])
    weight = mouth_weight((data.meta["resolution"],) * 2, 1)
    total = data.meta["total_frames"]
    bar = tqdm(total=spec.steps, initial=run.step, desc="vae", unit="step")
    while run.step < spec.steps:
        idx = np.sort(rng.integers(total, size=spec.batch))
        x = pixels(data.frames[idx])
        if rng.random() < 0.5:
            x = x.flip(-1)
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        l1 = ((rec - x).abs() * weight).mean() / weight.mean()
        kl = post.kl().mean() / x[0].numel()
        loss = l1 + 1e-3 * kl
        for g in opt.param_groups:
            g["lr"] = lr_at(run.step, spec)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        run.step += 1
        run.record(loss=float(loss), l1=float(l1), kl=float(kl))
        run.progress(bar, {"vae": vae}, opt, None, rng, l1=float(l1))
    bar.close()
    vae.eval()


def train_decoder(model: EMOModel, data: Dataset, work: Path, spec: Stage) -> None:
    """Sharpen the decoder on the frozen encoder's latents: runs beside the image and video stages.

    The latents the diffusion model learns are fixed once encoded; the decoder that
    turns them into pixels can keep learning while the UNet trains (one core each).
    """
    vae = model.vae
    vae.requires_grad_(False)
    parts = {"decoder": vae.decoder, "post_quant_conv": vae.post_quant_conv}
    params = [p for m in parts.values() for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=spec.lr, betas=(0.9, 0.99), weight_decay=0.0)
    run = Run(work, "decoder", spec)
    rng = np.random.default_rng(150)
    if run.load(parts, opt, None):
        rng = np.random.default_rng([150, run.step])
    weight = mouth_weight((data.meta["resolution"],) * 2, 1)
    total = data.meta["total_frames"]
    vae.decoder.train()
    bar = tqdm(total=spec.steps, initial=run.step, desc="decoder", unit="step")
    while run.step < spec.steps:
        x = pixels(data.frames[np.sort(rng.integers(total, size=spec.batch))])
        with torch.no_grad():
            z = vae.encode(x).latent_dist.sample()
        l1 = ((vae.decode(z).sample - x).abs() * weight).mean() / weight.mean()
        for g in opt.param_groups:
            g["lr"] = lr_at(run.step, spec)
        opt.zero_grad(set_to_none=True)
        l1.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        run.step += 1
        run.record(loss=float(l1), l1=float(l1))
        run.progress(bar, parts, opt, None, rng, l1=float(l1))
    bar.close()
    vae.decoder.eval()


# -- stage: latents ------------------------------------------------------------------------------------------
@torch.no_grad()
def latent_scale(model: EMOModel, data: Dataset, samples: int = 2048) -> float:
    """k such that k x the scaled latents (mean x 0.18215) have unit std, as SD's have."""
    idx = np.sort(np.random.default_rng(7).choice(data.meta["total_frames"], min(samples, data.meta["total_frames"]), replace=False))
    means = torch.cat([model.encode_image(pixels(data.frames[idx[i : i + 64]])) for i in range(0, len(idx), 64)])
    return 1.0 / float(means.std())


@torch.no_grad()
def apply_latent_scale(model: EMOModel, k: float) -> None:
    """Multiply the encoder's mean channels (quant_conv) by k and divide the decoder's input
    (post_quant_conv) by k: the autoencoder is unchanged, its latents are k times larger."""
    vae, c = model.vae, model.vae.config.latent_channels
    vae.quant_conv.weight[:c] *= k
    vae.quant_conv.bias[:c] *= k
    vae.quant_conv.bias[c:] += 2.0 * math.log(k)  # log-variance of a k-times larger latent
    vae.post_quant_conv.weight /= k


@torch.no_grad()
def encode_latents(model: EMOModel, data: Dataset, work: Path) -> np.ndarray:
    path = work / "latents.f16"
    h = model.config.latent_size
    shape = (data.meta["total_frames"], 4, h, h)
    if (work / "latents.done").exists():
        return np.memmap(path, np.float16, "r", shape=shape)
    out = np.memmap(path, np.float16, "w+", shape=shape)
    for i in tqdm(range(0, shape[0], 128), desc="encode", unit="batch"):
        out[i : i + 128] = model.encode_image(pixels(data.frames[i : i + 128])).numpy().astype(np.float16)
    out.flush()
    (work / "latents.done").write_text("")
    return np.memmap(path, np.float16, "r", shape=shape)


# -- diffusion -----------------------------------------------------------------------------------------------
class Diffusion:
    """The demo preset's training schedule: SD's betas rescaled to zero terminal SNR, v-prediction."""

    def __init__(self, cfg: ModelConfig):
        ac = alphas_cumprod(1000, "scaled_linear", 0.00085, 0.012, cfg.zero_snr)
        self.alpha = torch.from_numpy(np.sqrt(ac)).float()
        self.sigma = torch.from_numpy(np.sqrt(1.0 - ac)).float()
        self.v_prediction = cfg.prediction_type == "v_prediction"

    def noised(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x_t, the regression target and its min-SNR loss weight, for timesteps t (one per item of x0)."""
        shape = (-1,) + (1,) * (x0.dim() - 1)
        a, s = self.alpha[t].view(shape), self.sigma[t].view(shape)
        xt = a * x0 + s * noise
        snr = (self.alpha[t] / self.sigma[t].clamp_min(1e-8)) ** 2
        if self.v_prediction:
            return xt, a * noise - s * x0, torch.clamp(snr, max=MIN_SNR_GAMMA) / (snr + 1)
        return xt, noise, torch.clamp(snr, max=MIN_SNR_GAMMA) / snr.clamp_min(1e-8)

    def clean(self, xt: torch.Tensor, out: torch.Tensor, t: int) -> torch.Tensor:
        """The model's prediction of x0 from its output at timestep t."""
        a, s = self.alpha[t], self.sigma[t]
        return a * xt - s * out if self.v_prediction else (xt - s * out) / a.clamp_min(1e-4)


def weighted_mse(out: torch.Tensor, target: torch.Tensor, w_t: torch.Tensor, w_px: torch.Tensor) -> torch.Tensor:
    per = ((out - target) ** 2 * w_px).mean(dim=tuple(range(1, out.dim()))) / w_px.mean()
    return (per * w_t).mean()


def face_masks(data: Dataset, samples: np.ndarray, resolution: int) -> torch.Tensor:
    m = torch.zeros(len(samples), 1, resolution, resolution)
    for j, i in enumerate(samples):
        x, y, w, h = data.index["face_box"][i]
        m[j, 0, y : y + h, x : x + w] = 1.0
    return m


def freeze_motion_modules(model: EMOModel) -> list[MotionModule]:
    """Hold the temporal layers at identity (AnimateDiff: zero output projection) and out of training."""
    mms = model.backbone.motion_modules()
    for mm in mms:
        out = mm.temporal_transformer.proj_out
        torch.nn.init.zeros_(out.weight)
        torch.nn.init.zeros_(out.bias)
        mm.requires_grad_(False)
    return mms


# -- stage: image --------------------------------------------------------------------------------------------
def train_image(model: EMOModel, data: Dataset, latents: np.ndarray, work: Path, spec: Stage) -> None:
    cfg = model.config
    diff = Diffusion(cfg)
    run = Run(work, "image", spec)
    model.train()
    freeze_motion_modules(model)
    model.vae.requires_grad_(False)
    model.audio_encoder.requires_grad_(False)
    if model.speed_encoder is not None:
        model.speed_encoder.requires_grad_(False)
    params = {k: p for k, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW(params.values(), lr=spec.lr, betas=(0.9, 0.99), weight_decay=0.01)
    ema = ema_of(params)
    rng = np.random.default_rng(200)
    if run.load({"model": model}, opt, ema):
        rng = np.random.default_rng([200, run.step])
    w_px = mouth_weight((cfg.latent_size,) * 2, 8)
    starts, counts = data.index["frame_start"], data.index["frame_count"]
    uncond = [tuple(t.detach() for t in kv) for kv in model.uncond_audio_kv()]  # no audio in this stage
    speed_tokens = torch.full((1,), cfg.speed_default)
    bar = tqdm(total=spec.steps, initial=run.step, desc="image", unit="step")
    while run.step < spec.steps:
        samples = rng.integers(len(data), size=spec.batch)
        ref_idx = starts[samples] + rng.integers(counts[samples])
        tgt_idx = starts[samples] + rng.integers(counts[samples])
        ref = torch.from_numpy(latents[ref_idx].astype(np.float32))
        x0 = torch.from_numpy(latents[tgt_idx].astype(np.float32))
        t = torch.from_numpy(rng.integers(0, 1000, size=spec.batch))
        noise = torch.from_numpy(rng.standard_normal(x0.shape, dtype=np.float32))
        xt, target, w_t = diff.noised(x0, t, noise)
        speed = model.backbone.speed_kv(model.speed_encoder(speed_tokens)) if model.speed_encoder is not None else None
        cond = StepCondition(
            ctx=uncond,
            ref=model.backbone.reference_kv(model.reference_net.features(ref).tokens),  # (B, R, C): one per frame
            speed=speed,
            face=model.face_locator(face_masks(data, samples, cfg.resolution)),
            frames=1,  # every item its own one-frame clip
        )
        out = model.backbone(xt, t.float(), cond)
        loss = weighted_mse(out, target, w_t, w_px)
        step_update(run, opt, params, ema, loss, spec)
        run.progress(bar, {"model": model}, opt, ema, rng, loss=float(loss))
    bar.close()
    load_ema(model, ema)


def step_update(run: Run, opt, params: dict, ema: dict, loss: torch.Tensor, spec: Stage, **extra) -> None:
    for g in opt.param_groups:
        g["lr"] = lr_at(run.step, spec)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0)
    opt.step()
    ema_update(ema, params, spec.ema, run.step)
    run.step += 1
    run.record(loss=float(loss), grad_norm=float(norm), **extra)


@torch.no_grad()
def load_ema(model: EMOModel, ema: dict[str, torch.Tensor]) -> None:
    named = dict(model.named_parameters())
    for k, v in ema.items():
        named[k].copy_(v)


# -- stage: audio --------------------------------------------------------------------------------------------
def train_audio(model: EMOModel, data: Dataset, work: Path, spec: Stage) -> None:
    """The audio encoder learns to hear articulation before it drives the video.

    The demo's wav2vec2 starts from random weights, where EMO's starts pre-trained on 960 h
    of speech. Without this stage the video stage did not use the audio: after 300 steps,
    zeroing the audio tokens changed the backbone's output by 0.06 % of its power, no more
    at the mouth than elsewhere (lip sync r = 0.02 on held-out speech). Here a linear head
    reads each frame's mouth opening and width (the data's ground truth, which the
    generator drew from the same audio) from the clip's audio tokens; only the encoder is
    kept, and the video stage goes on training it with everything else.
    """
    cfg, f = model.config, model.config.frames
    enc = model.audio_encoder
    enc.train()
    head = torch.nn.Linear(cfg.audio.tokens * cfg.unet.cross_attention_dim, 2)
    params = {f"audio_encoder.{k}": p for k, p in enc.named_parameters()} | {f"head.{k}": p for k, p in head.named_parameters()}
    for p in params.values():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params.values(), lr=spec.lr, betas=(0.9, 0.99), weight_decay=0.01)
    run = Run(work, "audio", spec)
    ema = ema_of(params)  # unused (spec.ema 0: the last weights are kept), saved for the same file layout
    rng = np.random.default_rng(200)
    if run.load({"audio_encoder": enc, "head": head}, opt, ema):
        rng = np.random.default_rng([200, run.step])
    counts = data.index["frame_count"]
    usable = np.flatnonzero(counts >= f)
    bar = tqdm(total=spec.steps, initial=run.step, desc="audio", unit="step")
    while run.step < spec.steps:
        preds, targets = [], []
        for _ in range(spec.batch):
            i = int(rng.choice(usable))
            s = int(rng.integers(0, counts[i] - f + 1))
            plan = ClipPlan(f, cfg.motion_frames, cfg.fps, cfg.audio.left_context, cfg.audio.right_context, frames=int(counts[i]))
            tokens = model.encode_audio(torch.from_numpy(window_at(data.sample_audio(i), plan, s)))
            preds.append(head(tokens.flatten(1)))
            truth = np.stack([data.control("mouth_open", i)[s : s + f], data.control("mouth_wide", i)[s : s + f]], 1)
            targets.append(torch.from_numpy(truth.astype(np.float32)))
        loss = F.mse_loss(torch.cat(preds), torch.cat(targets))
        step_update(run, opt, params, ema, loss, spec)
        run.progress(bar, {"audio_encoder": enc, "head": head}, opt, ema, rng, loss=float(loss))
    bar.close()


# -- stage: reader -------------------------------------------------------------------------------------------
class LatentMouthReader(torch.nn.Module):
    """(N, 4, h, w) latents -> (N,) mouth opening: the lip-sync expert of the video stage, in latent space."""

    def __init__(self):
        super().__init__()
        rows, cols = MOUTH
        self.rows, self.cols = slice(rows.start // 8, -(-rows.stop // 8)), slice(cols.start // 8, -(-cols.stop // 8))
        act = torch.nn.SiLU()
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(4, 32, 3, padding=1),
            act,
            torch.nn.Conv2d(32, 48, 3, 2, 1),
            act,
            torch.nn.Conv2d(48, 64, 3, 2, 1),
            act,
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
            torch.nn.Linear(64, 1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(z[:, :, self.rows, self.cols])).squeeze(1)


def train_reader(data: Dataset, latents: np.ndarray, work: Path, spec: Stage) -> None:
    """The latent mouth reader: trained on every frame's latent and mouth opening, checked on the last 5 % of people.

    Latents get noise of a random level (up to 0.5 of their unit std), as the predicted
    clean latents it reads during the video stage are blurred guesses early in sampling.
    """
    reader = LatentMouthReader()
    params = dict(reader.named_parameters())
    opt = torch.optim.AdamW(params.values(), lr=spec.lr, weight_decay=1e-4)
    run = Run(work, "reader", spec)
    ema = ema_of(params)
    rng = np.random.default_rng(400)
    if run.load({"reader": reader}, opt, ema):
        rng = np.random.default_rng([400, run.step])
    truth = data.index["mouth_open"].astype(np.float32)
    split = int(data.index["frame_start"][int(len(data) * 0.95)])  # frames of the last 5 % of samples: held out
    bar = tqdm(total=spec.steps, initial=run.step, desc="reader", unit="step")
    while run.step < spec.steps:
        idx = np.sort(rng.integers(0, split, spec.batch))
        z = torch.from_numpy(latents[idx].astype(np.float32))
        z = z + torch.randn_like(z) * torch.from_numpy(rng.uniform(0, 0.5, (spec.batch, 1, 1, 1)).astype(np.float32))
        loss = F.mse_loss(reader(z), torch.from_numpy(truth[idx]))
        step_update(run, opt, params, ema, loss, spec)
        run.progress(bar, {"reader": reader}, opt, ema, rng, loss=float(loss))
    bar.close()
    with torch.no_grad():
        held = np.arange(split, len(truth))
        pred = torch.cat([reader(torch.from_numpy(latents[held[i : i + 4096]].astype(np.float32))) for i in range(0, len(held), 4096)])
    r = float(np.corrcoef(pred.numpy(), truth[held])[0, 1])
    (work / "reader.json").write_text(json.dumps({"heldout_frames": int(len(held)), "pearson": round(r, 4)}))
    print(f"latent mouth reader: Pearson {r:.3f} on {len(held)} held-out frames")


def load_reader(work: Path) -> LatentMouthReader:
    reader = LatentMouthReader()
    reader.load_state_dict(torch.load(work / "reader.pt", map_location="cpu", weights_only=False)["modules"]["reader"])
    return reader.eval().requires_grad_(False)


# -- stage: video --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClipBatch:
    """One training clip: its latents, motion latents, reference latent, audio window, speed and face mask."""

    x0: torch.Tensor  # (f, 4, h, w)
    motion: torch.Tensor  # (n, 4, h, w)
    reference: torch.Tensor  # (1, 4, h, w)
    window: torch.Tensor  # (1, S)
    speed: torch.Tensor  # (f,)
    face_mask: torch.Tensor  # (1, 1, R, R)
    drop_audio: bool


def draw_clip(data: Dataset, latents: np.ndarray, cfg: ModelConfig, rng: np.random.Generator) -> ClipBatch:
    f, n = cfg.frames, cfg.motion_frames
    counts = data.index["frame_count"]
    while True:
        i = int(rng.integers(len(data)))
        if counts[i] >= f:
            break
    start, count = int(data.index["frame_start"][i]), int(counts[i])
    s = int(rng.integers(0, count - f + 1))
    x0 = latents[start + s : start + s + f]
    if s >= n and rng.random() >= MOTION_DROP:
        motion = latents[start + s - n : start + s].astype(np.float32)
    else:
        motion = np.zeros((n, *x0.shape[1:]), np.float32)  # a video's first clip
    ref = latents[start + int(rng.integers(count))][None]
    plan = ClipPlan(f, n, cfg.fps, cfg.audio.left_context, cfg.audio.right_context, frames=count)
    window = window_at(data.sample_audio(i), plan, s)
    return ClipBatch(
        x0=torch.from_numpy(x0.astype(np.float32)),
        motion=torch.from_numpy(motion),
        reference=torch.from_numpy(ref.astype(np.float32)),
        window=torch.from_numpy(window),
        speed=torch.from_numpy(data.control("speed", i)[s : s + f].copy()),
        face_mask=face_masks(data, np.array([i]), cfg.resolution),
        drop_audio=bool(rng.random() < AUDIO_DROP),
    )


def window_at(audio: np.ndarray, plan: ClipPlan, first_frame: int) -> np.ndarray:
    """The audio window of a clip starting at any frame (the runtime's windows start at multiples of f)."""
    spf = plan.samples_per_frame
    start = (first_frame - plan.left_context) * spf
    out = np.zeros(plan.window_samples, np.float32)
    lo, hi = max(start, 0), min(start + plan.window_samples, len(audio))
    if hi > lo:
        out[lo - start : hi - start] = audio[lo:hi]
    return out[None]


def train_video(model: EMOModel, data: Dataset, latents: np.ndarray, work: Path, spec: Stage) -> None:
    cfg = model.config
    diff = Diffusion(cfg)
    run = Run(work, "video", spec)
    model.train()
    model.vae.requires_grad_(False)
    params = {k: p for k, p in model.named_parameters() if not k.startswith("vae.")}
    for p in params.values():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params.values(), lr=spec.lr, betas=(0.9, 0.99), weight_decay=0.01)
    ema = ema_of(params)
    rng = np.random.default_rng(300)
    if run.load({"model": model}, opt, ema):
        rng = np.random.default_rng([300, run.step])
    w_px = mouth_weight((cfg.latent_size,) * 2, 8)
    # The lip-sync expert loss (from SYNC_FROM on): the diffusion loss alone gives the few
    # mouth latents too little weight; the frozen latent reader reads the mouth of the
    # predicted clean latents, which must read as the true latents do. At high noise the
    # prediction can know the mouth only from the audio.
    reader = load_reader(work)
    bar = tqdm(total=spec.steps, initial=run.step, desc="video", unit="step")
    while run.step < spec.steps:
        losses, syncs = [], []
        for _ in range(spec.batch):
            c = draw_clip(data, latents, cfg, rng)
            t = int(rng.integers(0, 1000))
            noise = torch.from_numpy(rng.standard_normal(c.x0.shape, dtype=np.float32))
            xt, target, w_t = diff.noised(c.x0, torch.full((cfg.frames,), t), noise)
            tokens = model.encode_audio(c.window)
            if c.drop_audio:
                tokens = torch.zeros_like(tokens)
            clip = model.clip_condition(tokens, c.motion, c.face_mask, c.speed)
            out = model.model_output(xt, torch.tensor(float(t)), model.reference(c.reference), clip, None)
            loss = weighted_mse(out, target, w_t, w_px)
            if run.step >= SYNC_FROM and not c.drop_audio:
                sync = F.mse_loss(reader(diff.clean(xt, out, t)), reader(c.x0))
                syncs.append(float(sync))
                loss = loss + SYNC_WEIGHT * sync
            losses.append(loss)
        loss = torch.stack(losses).mean()
        step_update(run, opt, params, ema, loss, spec, **({"sync": float(np.mean(syncs))} if syncs else {}))
        run.progress(bar, {"model": model}, opt, ema, rng, loss=float(loss))
    bar.close()
    load_ema(model, ema)


# -- the whole recipe ------------------------------------------------------------------------------------------
def trained_model(work: Path, upto: str) -> EMOModel:
    """The model as it stands after stage ``upto`` (loaded from the stage files; EMA weights)."""
    model = build_model(preset(PRESET), seed=0)
    vae_state = torch.load(work / "vae.pt", map_location="cpu", weights_only=False)
    model.vae.load_state_dict(vae_state["modules"]["vae"])
    k_path = work / "latent_scale.json"
    if k_path.exists():
        apply_latent_scale(model, json.loads(k_path.read_text())["k"])
    if upto in ("image", "audio", "video"):
        name = "image" if upto == "audio" else upto
        stage = torch.load(work / f"{name}.pt", map_location="cpu", weights_only=False)
        model.load_state_dict(stage["modules"]["model"])
        load_ema(model, stage["ema"])
    if upto == "audio":  # the image stage's model with the audio stage's encoder
        stage = torch.load(work / "audio.pt", map_location="cpu", weights_only=False)
        model.audio_encoder.load_state_dict(stage["modules"]["audio_encoder"])
    if upto != "vae" and (work / "decoder.pt").exists():  # the sharpened decoder (same encoder, same latents)
        parts = torch.load(work / "decoder.pt", map_location="cpu", weights_only=False)["modules"]
        model.vae.decoder.load_state_dict(parts["decoder"])
        model.vae.post_quant_conv.load_state_dict(parts["post_quant_conv"])
    return model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description="Train the demo preset (CPU, resumable).")
    ap.add_argument("--data", default="build/data/train", help="data set from `python -m training.data`")
    ap.add_argument("--work", default="build/train", help="stage states, latents and the loss log")
    ap.add_argument("--stage", choices=["all", "vae", "encode", "decoder", "image", "audio", "reader", "video"], default="all")
    ap.add_argument("--ship", action="store_true", help="write the trained EMA weights to emote/weights/demo")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--steps", type=int, help="override every trained stage's step count (smoke runs)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.ship:
        from training.ship import ship

        ship(trained_model(work, "video"), work)
        return
    data = Dataset.open(args.data)
    recipe = {k: replace(v, steps=args.steps, warmup=min(v.warmup, args.steps)) for k, v in RECIPE.items()} if args.steps else RECIPE
    stages = ["vae", "encode", "image", "audio", "reader", "video"] if args.stage == "all" else [args.stage]
    model = build_model(preset(PRESET), seed=0)
    for stage in stages:
        if stage == "vae":
            train_vae(model, data, work, recipe["vae"])
        elif stage == "decoder":
            train_decoder(trained_model(work, "vae"), data, work, recipe["decoder"])
        elif stage == "encode":
            model = trained_model(work, "vae")
            k_path = work / "latent_scale.json"
            if not k_path.exists():
                k = latent_scale(model, data)
                apply_latent_scale(model, k)
                k_path.write_text(json.dumps({"k": k}))
            encode_latents(model, data, work)
        elif stage == "audio":
            train_audio(trained_model(work, "image"), data, work, recipe["audio"])
        elif stage == "reader":
            train_reader(data, encode_latents(trained_model(work, "vae"), data, work), work, recipe["reader"])
        else:
            latents = encode_latents(trained_model(work, "vae"), data, work)
            model = trained_model(work, "audio" if stage == "video" else "vae")
            train = train_image if stage == "image" else train_video
            train(model, data, latents, work, recipe[stage])


if __name__ == "__main__":
    main()
