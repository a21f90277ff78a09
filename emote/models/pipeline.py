"""The PyTorch reference pipeline: EMO's inference as published, eager, fp32.

It is the baseline of every speed and fidelity figure, so it is written to be
right, not fast: diffusers' schedulers do the sampling (an independent oracle for
the runtime's coefficient tables), and every projection of the conditioning is
recomputed inside each step as an eager implementation with attention hooks does
(ReferenceNet once per clip, keys/values per step). Clip planning, audio windows
and noise come from ``emote.runtime.clips`` so that the runtime cuts the same clips.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from ..runtime.clips import ClipPlan, ClipWindows, audio_window, clip_noise
from ..runtime.families.echomimic import clip_index, whisper_index, window_positions
from ..runtime.sampler import FAMILIES
from .emo import ClipCondition, EMOModel


@dataclass(frozen=True)
class SamplerSpec:
    """Sampler settings shared by the reference pipeline and the runtime."""

    family: str = "ddim"
    steps: int = 40
    guidance_scale: float = 3.5
    guidance_steps: int | None = None  # guide only the first k steps (None: all)
    prediction_type: str = "epsilon"
    spacing: str = "leading"
    zero_snr: bool = False
    beta_schedule: str = "scaled_linear"  # SD's; EchoMimic trains on "linear"
    set_alpha_to_one: bool = False  # DDIM's last step to alpha-bar 1 (EchoMimic's, Hallo's) or alpha-bar_0 (SD's)

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"unknown sampler {self.family!r}: one of {', '.join(FAMILIES)}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")

    def guided(self, step: int) -> bool:
        return self.guidance_scale > 1.0 and (self.guidance_steps is None or step < self.guidance_steps)


def diffusers_scheduler(spec: SamplerSpec):
    """The diffusers scheduler of ``spec`` with SD's training schedule."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, LCMScheduler

    common = dict(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule=spec.beta_schedule,
        prediction_type=spec.prediction_type,
        timestep_spacing=spec.spacing,
        steps_offset=1,
        rescale_betas_zero_snr=spec.zero_snr,
    )
    if spec.family == "ddim":
        return DDIMScheduler(clip_sample=False, set_alpha_to_one=spec.set_alpha_to_one, **common)
    if spec.family == "dpmpp_2m":
        return DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2, **common)
    if spec.family == "euler":
        return EulerDiscreteScheduler(**common)
    return LCMScheduler(**common)


def to_pixels(frames: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


class ReferencePipeline:
    """``pipe(image, mask, audio) -> frames``: one portrait and 16 kHz audio to uint8 video frames."""

    def __init__(self, model: EMOModel, sampler: SamplerSpec | None = None):
        self.model = model.eval()
        self.sampler = sampler or SamplerSpec(guidance_scale=model.config.guidance_scale)
        if self.sampler.family == "lcm":
            raise ValueError("the reference pipeline draws no per-step noise: LCM runs in the runtime only")

    def plan(self, n_samples: int, hop: int | None = None) -> ClipPlan:
        c = self.model.config
        windows = ClipWindows(c.frames, c.motion_frames, c.fps, c.audio.left_context, c.audio.right_context, hop)
        return windows.plan(n_samples)

    @torch.no_grad()
    def __call__(
        self,
        image: np.ndarray,
        mask: np.ndarray,
        audio: np.ndarray,
        *,
        seed: int = 0,
        speed: float | None = None,
        progress: bool = False,
        hop: int | None = None,
        schedule: str = "clips",
    ) -> np.ndarray:
        """image (R, R, 3) uint8, mask (R, R) float32, audio float32 at 16 kHz -> (frames, R, R, 3) uint8.

        ``hop``: frames each clip keeps (the runtime's live latency option, runtime.clips); ``schedule``
        "windows": EchoMimic's context windows over the whole video (models without motion frames)."""
        if self.model.config.uncond_branch == "hallo":
            from ..errors import EmoteError

            raise EmoteError(
                f"the PyTorch reference pipeline runs the EMO and EchoMimic presets, not {self.model.config.name!r}: "
                "Hallo models run in the bundle runtime (emote generate)"
            )
        m, cfg, spec = self.model, self.model.config, self.sampler
        plan = self.plan(len(audio), hop)
        f, n, h = cfg.frames, cfg.motion_frames, cfg.latent_size
        speed_t = torch.full((f,), cfg.speed_default if speed is None else speed)
        face_mask = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
        ref_latent = m.encode_image(to_pixels(image[None]))
        motion_latents = torch.zeros(n, 4, h, h)  # the first clip has no previous frames
        out = np.empty((plan.frames, cfg.resolution, cfg.resolution, 3), np.uint8)
        if schedule == "windows":
            return self._windows(audio, face_mask, ref_latent, seed, out, progress)

        bar = tqdm(total=plan.clips * spec.steps, desc="reference", unit="step", disable=not progress)
        for c in range(plan.clips):
            tokens = self._tokens(audio, plan, c)
            ref_tokens = m.reference_net.features(ref_latent).tokens
            motion_hidden = m.reference_net.features(motion_latents).hidden if n else None
            speed_tokens = m.speed_encoder(speed_t) if m.speed_encoder is not None else None
            face = m.face_locator(face_mask)

            scheduler = diffusers_scheduler(spec)
            scheduler.set_timesteps(spec.steps)
            x = torch.from_numpy(clip_noise(seed, c, (f, 4, h, h), cfg.noise_clamp)) * scheduler.init_noise_sigma
            for i, t in enumerate(scheduler.timesteps):
                # as published: every key/value projected again inside the step
                clip = ClipCondition(
                    audio=m.backbone.context_kv(tokens),
                    motion=m.backbone.motion_kv(motion_hidden) if n else None,
                    speed=m.backbone.speed_kv(speed_tokens) if speed_tokens is not None else None,
                    face=face,
                )
                ref = m.backbone.reference_kv(ref_tokens)
                g = spec.guidance_scale if spec.guided(i) else None
                eps = m.model_output(scheduler.scale_model_input(x, t), t.float(), ref, clip, g)
                x = scheduler.step(eps, t, x).prev_sample
                bar.update()
            frames = m.decode_latents(x).numpy()
            keep, start, length = plan.kept(c), plan.start(c), plan.step
            out[start : start + keep] = frames[:keep]
            if n:
                motion_latents = m.encode_image(to_pixels(frames[length - n : length]))
        bar.close()
        return out

    def _tokens(self, audio: np.ndarray, plan: ClipPlan, clip: int) -> torch.Tensor:
        """The clip's audio tokens, (f, T, D): from its audio window, as the runtime cuts it."""
        m = self.model
        window = torch.from_numpy(audio_window(audio, plan, clip))
        if m.config.audio.encoder == "whisper":  # EchoMimic: each frame's whisper frames, clamped to the track
            positions = window_positions(plan, clip, m.config.audio.max_source_positions)
            return m.encode_audio(window, torch.from_numpy(clip_index(plan, clip, len(audio))), torch.from_numpy(positions))
        return m.encode_audio(window)

    def _windows(self, audio, face_mask, ref_latent, seed: int, out: np.ndarray, progress: bool) -> np.ndarray:
        """EchoMimic's denoising loop (pipeline_echo_mimic_acc.py): every frame's audio tokens (whisper: its file
        path, the whole track in 30 s segments), the whole video's latents; at step i the
        model runs on each window of ``uniform_windows`` moved by shift x i, a frame's prediction is the mean
        of its windows', and the scheduler steps every frame with it. A video shorter than a window is
        padded to one clip (the runtime's graphs are static)."""
        m, cfg, spec = self.model, self.model.config, self.sampler
        if not cfg.context_overlap:
            raise ValueError(f"{cfg.name} has no context windows (context_overlap 0)")
        plan = self.plan(len(audio))
        f, h = cfg.frames, cfg.latent_size
        length = max(plan.frames, f)
        if cfg.audio.encoder == "whisper":  # EchoMimic's file path: the whole track in 30 s segments
            states = m.audio_encoder.segment_states(torch.from_numpy(np.ascontiguousarray(audio, np.float32))[None])
            tokens = m.audio_encoder.frame_tokens(states, torch.from_numpy(whisper_index(0, length, cfg.fps, 0, len(states))))
        else:
            tokens = torch.cat([self._tokens(audio, plan, c) for c in range(plan.clips)])[:length]
        ref = m.backbone.reference_kv(m.reference_net.features(ref_latent).tokens)
        face = m.face_locator(face_mask)
        scheduler = diffusers_scheduler(spec)
        scheduler.set_timesteps(spec.steps)
        noise = np.concatenate([clip_noise(seed, c, (f, 4, h, h), cfg.noise_clamp) for c in range(plan.clips)])[:length]
        x = torch.from_numpy(noise) * scheduler.init_noise_sigma
        bar = tqdm(total=spec.steps, desc="reference (windows)", unit="step", disable=not progress)
        for i, t in enumerate(scheduler.timesteps):
            total, count = torch.zeros_like(x), torch.zeros(length)
            g = spec.guidance_scale if spec.guided(i) else None
            for window in uniform_windows(length, f, cfg.context_overlap):
                index = [(k + cfg.context_shift * i) % length for k in window]
                clip = ClipCondition(audio=m.backbone.context_kv(tokens[index]), motion=None, speed=None, face=face)
                total[index] += m.model_output(scheduler.scale_model_input(x[index], t), t.float(), ref, clip, g)
                count[index] += 1
            x = scheduler.step(total / count[:, None, None, None], t, x).prev_sample
            bar.update()
        bar.close()
        for c in range(plan.clips):
            latents = x[c * f : c * f + f]
            latents = torch.cat([latents, latents.new_zeros(f - len(latents), *latents.shape[1:])])
            out[plan.start(c) : plan.start(c) + plan.kept(c)] = m.decode_latents(latents).numpy()[: plan.kept(c)]
        return out


def uniform_windows(frames: int, size: int, overlap: int) -> list[list[int]]:
    """EchoMimic's context windows at step 0: its "uniform" schedule with stride 1, closed loop, as it calls
    it: windows of ``size`` frames from 0 every ``size - overlap`` frames while before ``frames``, wrapping
    modulo ``frames``; a video no longer than a window is one window of all its frames."""
    if frames <= size:
        return [list(range(frames))]
    return [[e % frames for e in range(j, j + size)] for j in range(0, frames, size - overlap)]
