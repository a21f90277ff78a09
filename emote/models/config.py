"""Model configuration: frozen dataclasses, one preset per size of the one EMO architecture.

A config is validated once, when built, and saved beside every artifact made
from it (checkpoint, bundle manifest). It holds no torch; the runtime never imports
it: ``emote.bundle`` reads the part the runtime needs (geometry, sampler defaults).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from ..bundle import SAMPLE_RATE, WHISPER_LOOKAHEAD

VAE_SCALE_FACTOR = 8  # SD's AutoencoderKL: three 2x downsamplings
VAE_SCALING = 0.18215  # SD's latent scaling constant (latents = mean * 0.18215)
WHISPER_RATE = 50  # whisper's encoder states per second: 16 kHz / hop 160 = 100 mel frames, conv2 stride 2
WHISPER_FRAME_WINDOW = 10  # EchoMimic: whisper frames centre-4 .. centre+5 per video frame


@dataclass(frozen=True)
class UNetConfig:
    """The SD-style UNet shared by the ReferenceNet and the backbone (diffusers parameter names).

    `attention_levels[i]` says whether level i is a CrossAttn block (SD1.5: all
    but the deepest). `num_heads` is SD's legacy `attention_head_dim` (a head count).
    """

    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    attention_levels: tuple[bool, ...] = (True, True, True, False)
    layers_per_block: int = 2
    num_heads: int = 8
    cross_attention_dim: int = 768  # attn2 context: audio tokens in the backbone
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    in_channels: int = 4
    out_channels: int = 4
    # EMO additions (backbone only; the ReferenceNet never has them)
    temporal_heads: int = 8
    temporal_max_len: int = 32  # positional-encoding table length (AnimateDiff: 32)
    speed_dim: int = 0  # 0: no speed layers; else the speed tokens' width
    # Hallo's differences from EMO, as options (the defaults are EMO's; see the `hallo` preset)
    context: str = "audio"  # attn2 of the spatial blocks attends to: "audio" tokens (EMO) or "face" embedding tokens (Hallo, both UNets)
    audio_modules: bool = False  # Hallo: an audio transformer after each spatial attention, three region-masked cross-attentions
    motion_frames_mode: str = "kv"  # motion frames join the temporal layers as "kv" (EMO: keys/values of the
    # first attention) or "concat" (Hallo: ReferenceNet attn1 tokens prepended along frames, through both attentions)
    motion_in_plain_blocks: bool = True  # Hallo: False, its motion modules in blocks without attention never run
    reference_cross_attention: bool = True  # EchoMimic: False, its ReferenceNet's blocks have no attn2/norm2

    def __post_init__(self) -> None:
        if len(self.attention_levels) != len(self.block_out_channels):
            raise ValueError("attention_levels needs one entry per block_out_channels level")
        if self.context not in ("audio", "face"):
            raise ValueError(f"context {self.context!r}: one of 'audio', 'face'")
        if self.audio_modules != (self.context == "face"):
            raise ValueError("audio_modules carry the audio exactly when attn2 attends to the face (context='face')")
        if self.motion_frames_mode not in ("kv", "concat"):
            raise ValueError(f"motion_frames_mode {self.motion_frames_mode!r}: one of 'kv', 'concat'")
        if self.motion_frames_mode == "concat" and (self.motion_in_plain_blocks or self.speed_dim):
            raise ValueError("concat motion frames come from a unit's attention: no motion in plain blocks, no speed layers")
        for c in self.block_out_channels:
            if c % self.norm_num_groups or c % self.num_heads or c % self.temporal_heads:
                raise ValueError(
                    f"channel count {c} must divide by norm_num_groups={self.norm_num_groups}, "
                    f"num_heads={self.num_heads} and temporal_heads={self.temporal_heads}"
                )


@dataclass(frozen=True)
class VAEConfig:
    """diffusers AutoencoderKL arguments; 2**(levels-1) must be the /8 of SD."""

    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    norm_num_groups: int = 32
    latent_channels: int = 4

    def __post_init__(self) -> None:
        if 2 ** (len(self.block_out_channels) - 1) != VAE_SCALE_FACTOR:
            raise ValueError(f"the VAE must downsample by {VAE_SCALE_FACTOR}: give 4 levels")


@dataclass(frozen=True)
class AudioConfig:
    """The audio encoder: wav2vec2 (transformers Wav2Vec2Config fields) and the per-frame projection
    to tokens, or whisper's encoder (``encoder="whisper"``, EchoMimic: WhisperConfig fields, no projection).

    whisper: ``hidden_size`` is d_model, ``intermediate_size`` the ffn width; the tokens of a frame
    are its ``WHISPER_FRAME_WINDOW`` whisper frames x (blocks + 1) states, straight into attn2.
    """

    encoder: str = "wav2vec2"  # "wav2vec2" (EMO, Hallo) or "whisper" (EchoMimic)
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    conv_dim: int = 512  # all seven feature-extractor convs
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    do_normalize: bool = True  # zero-mean unit-variance per window, as Wav2Vec2FeatureExtractor
    window: int = 2  # m: neighbours each side of a frame (EMO: 2, so 5 frames)
    tokens: int = 32  # audio tokens per video frame (Hallo's context_tokens)
    proj_hidden: int = 512  # Hallo's intermediate_dim
    left_context: int = 8  # frames of audio before a clip fed to wav2vec2 (0.32 s at 25 fps)
    num_mel_bins: int = 80  # whisper only: log-mel bins
    max_source_positions: int = 1500  # whisper only: positional table (30 s at 50 Hz)
    # How wav2vec2 sees the audio (runtime/track_audio.py):
    # "clip": each clip's window (left_context + f + window frames), normalised on its own (EMO's
    #   presets, the demo model: what it was trained with);
    # "track": Hallo's: the whole track normalised once and run through wav2vec2 as one pass, in
    #   chunks of `chunk` frames with `chunk_context` frames of overlap each side when longer,
    #   then sliced per clip (neighbour indices clamped at the track's ends)
    windowing: str = "clip"
    chunk: int = 0  # "track": frames per wav2vec2 pass (a static graph); a track this long or shorter is one exact pass
    chunk_context: int = 0  # "track": frames each side of a chunk's kept part, when a track takes several chunks

    def __post_init__(self) -> None:
        if self.encoder not in ("wav2vec2", "whisper"):
            raise ValueError(f"audio encoder {self.encoder!r}: one of 'wav2vec2', 'whisper'")
        if self.encoder == "whisper" and self.tokens != WHISPER_FRAME_WINDOW * (self.num_hidden_layers + 1):
            raise ValueError(f"whisper tokens per frame are {WHISPER_FRAME_WINDOW} frames x (layers + 1) states")
        if self.windowing not in ("clip", "track"):
            raise ValueError(f"audio windowing {self.windowing!r}: one of 'clip', 'track'")
        if self.windowing == "track" and not (self.chunk > 2 * self.chunk_context >= 0):
            raise ValueError(f"track windowing needs chunk > 2 x chunk_context >= 0, got {self.chunk} and {self.chunk_context}")

    @property
    def right_context(self) -> int:
        if self.encoder == "whisper":
            return WHISPER_LOOKAHEAD  # the last frame's window reaches centre+5 whisper frames
        return self.window  # the look-ahead a clip waits for: its last frame's right neighbours


@dataclass(frozen=True)
class ModelConfig:
    """One preset: the whole model and its clip geometry."""

    name: str
    unet: UNetConfig
    vae: VAEConfig
    audio: AudioConfig
    resolution: int = 512  # pixels, square
    frames: int = 12  # f: frames generated per clip
    motion_frames: int = 4  # n: previous frames fed back per clip
    fps: int = 25
    face_locator_channels: tuple[int, ...] = (16, 32, 64, 128)
    face_locator_in_channels: int = 1  # the face mask
    speed_buckets: int = 9  # D: tanh speed buckets
    speed_tokens: int = 2  # tokens per frame the temporal layers attend to
    speed_default: float = 0.3  # the constant head speed used at inference (normalised 0..1)
    face_embedding_dim: int = 0  # Hallo: 512 (InsightFace's face embedding), projected to attn2 context tokens
    face_embedding_tokens: int = 4  # Hallo's clip_extra_context_tokens
    uncond_branch: str = "audio"  # guidance's unconditional branch: "audio" (EMO: zero audio) or "hallo"
    # (Hallo's: zero audio, zero face embedding, no reference attention, no face-locator features) or
    # "echomimic" (zero audio, no reference attention, no face-locator features)
    first_motion: str = "zeros"  # the first clip's motion frames: "zeros" (EMO) or the "reference" image (Hallo)
    # EchoMimic's context windows over the whole video (runtime/context_windows.py): frames two neighbouring
    # windows of `frames` share, and frames every window moves per step; 0: clips only (models with motion frames)
    context_overlap: int = 0
    context_shift: int = 0
    noise_clamp: float = 0.0  # > 0: the initial noise clipped to +-noise_clamp (EchoMimic: 1.5); 0: none
    # sampler defaults (the runtime's fast default and the published baseline)
    sampler: str = "dpmpp_2m"
    steps: int = 4
    guidance_scale: float = 3.5
    guidance_steps: int | None = None
    prediction_type: str = "epsilon"
    timestep_spacing: str = "leading"
    zero_snr: bool = False
    beta_schedule: str = "scaled_linear"  # SD's training schedule; Hallo's DDIM is built with "linear"
    set_alpha_to_one: bool = False  # DDIM's last step lands on alpha-bar 1 (diffusers' default, Hallo's) or alpha-bar_0 (SD's)
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.resolution % (VAE_SCALE_FACTOR * 2 ** (len(self.unet.block_out_channels) - 1)):
            raise ValueError(f"resolution {self.resolution} must divide by the VAE and UNet downsampling")
        if SAMPLE_RATE % self.fps:
            raise ValueError(f"fps {self.fps} must divide {SAMPLE_RATE} (one frame = a whole number of samples)")
        if self.audio.windowing == "track" and self.samples_per_frame % 320:
            raise ValueError(
                f"track windowing needs whole wav2vec2 frames (320 samples) per video frame; fps {self.fps} gives {self.samples_per_frame}"
            )
        if self.motion_frames + self.frames > self.unet.temporal_max_len:
            raise ValueError("motion_frames + frames exceed the temporal positional encoding")
        if self.unet.speed_dim and self.speed_buckets < 1:
            raise ValueError("speed layers need speed_buckets >= 1")
        if bool(self.face_embedding_dim) != (self.unet.context == "face"):
            raise ValueError("a face embedding (face_embedding_dim > 0) goes with unet.context='face', and only with it")
        if self.uncond_branch not in ("audio", "hallo", "echomimic") or (self.uncond_branch == "hallo") != (self.unet.context == "face"):
            raise ValueError(f"uncond_branch {self.uncond_branch!r}: 'audio' or 'echomimic' for EMO models, 'hallo' for context='face'")
        if (self.uncond_branch == "echomimic") != (self.audio.encoder == "whisper"):
            raise ValueError("the echomimic family (uncond_branch='echomimic') goes with the whisper audio encoder, and only with it")
        if self.audio.encoder == "whisper" and self.audio.hidden_size != self.unet.cross_attention_dim:
            raise ValueError("whisper states go straight into attn2: audio.hidden_size must equal unet.cross_attention_dim")
        if self.first_motion not in ("zeros", "reference"):
            raise ValueError(f"first_motion {self.first_motion!r}: one of 'zeros', 'reference'")
        if self.context_overlap and not (self.motion_frames == 0 and 0 < self.context_overlap < self.frames and self.context_shift >= 0):
            raise ValueError(
                f"context windows need no motion frames and 0 < context_overlap < frames ({self.frames}), got {self.context_overlap}"
            )
        if self.beta_schedule not in ("scaled_linear", "linear"):
            raise ValueError(f"beta_schedule {self.beta_schedule!r}: one of 'scaled_linear', 'linear'")

    @property
    def family(self) -> str:
        """The runtime's model family (runtime/families/): what it binds beyond the common graphs."""
        return {"hallo": "hallo", "echomimic": "echomimic"}.get(self.uncond_branch, "emo")

    @property
    def latent_size(self) -> int:
        return self.resolution // VAE_SCALE_FACTOR

    @property
    def samples_per_frame(self) -> int:
        return SAMPLE_RATE // self.fps  # 640 at 25 fps

    @property
    def audio_window_frames(self) -> int:
        """Frames of audio one clip's encoder call sees: left context + clip + look-ahead."""
        return self.audio.left_context + self.frames + self.audio.right_context

    @property
    def audio_window_samples(self) -> int:
        return self.audio_window_frames * self.samples_per_frame

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        d = dict(d)
        tuples = lambda sub, keys: {k: tuple(v) if k in keys else v for k, v in sub.items()}  # noqa: E731
        unet = UNetConfig(**tuples(d.pop("unet"), {"block_out_channels", "attention_levels"}))
        vae = VAEConfig(**tuples(d.pop("vae"), {"block_out_channels"}))
        audio = AudioConfig(**d.pop("audio"))  # older configs lack the whisper fields: the defaults are wav2vec2's
        if "face_locator_channels" in d:
            d["face_locator_channels"] = tuple(d["face_locator_channels"])
        return cls(unet=unet, vae=vae, audio=audio, **d)


def _tiny() -> ModelConfig:
    return ModelConfig(
        name="tiny",
        unet=UNetConfig(
            block_out_channels=(32, 64),
            attention_levels=(True, False),
            layers_per_block=1,
            num_heads=2,
            cross_attention_dim=32,
            norm_num_groups=8,
            temporal_heads=2,
            temporal_max_len=16,
            speed_dim=16,
        ),
        vae=VAEConfig(block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=4),
        audio=AudioConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            conv_dim=32,
            num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=4,
            tokens=4,
            proj_hidden=64,
            left_context=4,
        ),
        resolution=64,
        frames=4,
        motion_frames=2,
        face_locator_channels=(8, 8, 16, 16),
        speed_buckets=5,
        sampler="dpmpp_2m",
        steps=4,
        guidance_scale=2.0,
    )


def _demo() -> ModelConfig:
    # Sized for real time on a 2-core CPU: ~2.7 GFLOP per frame all in at the default
    # sampler (4 DPM-Solver++ steps, the first guided: 5 backbone passes of 0.42 GFLOP,
    # VAE decode 0.49, per-clip work 0.17), counted with torch's FlopCounterMode.
    return ModelConfig(
        name="demo",
        unet=UNetConfig(
            block_out_channels=(32, 64, 128),
            attention_levels=(True, True, False),
            layers_per_block=1,
            num_heads=2,
            cross_attention_dim=64,
            norm_num_groups=8,
            temporal_heads=2,
            temporal_max_len=16,
            speed_dim=32,
        ),
        vae=VAEConfig(block_out_channels=(8, 16, 32, 32), layers_per_block=1, norm_num_groups=4),
        audio=AudioConfig(
            hidden_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=128,
            conv_dim=64,
            num_conv_pos_embeddings=32,
            num_conv_pos_embedding_groups=8,
            tokens=8,
            proj_hidden=128,
            left_context=8,
        ),
        resolution=128,
        frames=8,
        motion_frames=2,
        face_locator_channels=(16, 16, 32, 32),
        speed_buckets=9,
        sampler="dpmpp_2m",
        steps=4,
        guidance_scale=2.5,
        guidance_steps=1,
        # v-prediction on a zero-terminal-SNR schedule with trailing timesteps: the
        # first of 4 steps starts from pure noise (Lin et al. 2023), as Hallo samples
        prediction_type="v_prediction",
        timestep_spacing="trailing",
        zero_snr=True,
    )


def _demo_fast() -> ModelConfig:
    # The demo model distilled to one step (training/distill.py): the same architecture and
    # conditioning, sampled with one unguided DDIM step from pure noise at t = 999, landing on
    # x0 (guidance is in the weights): 1 backbone pass a clip against the teacher's 5.
    return dataclasses.replace(
        _demo(), name="demo-fast", sampler="ddim", steps=1, guidance_scale=1.0, guidance_steps=None, set_alpha_to_one=True
    )


def _emo_sd15() -> ModelConfig:
    # EMO's published configuration: SD1.5 UNet, SD VAE, wav2vec2-base, 12 + 4 frames, DDIM 40.
    return ModelConfig(
        name="emo-sd15",
        unet=UNetConfig(speed_dim=768),
        vae=VAEConfig(),
        audio=AudioConfig(),
        resolution=512,
        frames=12,
        motion_frames=4,
        sampler="ddim",
        steps=40,
        guidance_scale=3.5,
    )


# Hallo's structure (fudan-generative-vision/hallo, scripts/inference.py): EMO's options that differ.
HALLO_UNET = dict(
    speed_dim=0,
    context="face",
    audio_modules=True,
    motion_frames_mode="concat",
    motion_in_plain_blocks=False,
)


def _hallo() -> ModelConfig:
    # Hallo's released net.pth: SD1.5 UNets + AnimateDiff v2 motion modules + audio modules,
    # sd-vae-ft-mse, wav2vec2-base-960h; the defaults of its configs/inference/default.yaml.
    return ModelConfig(
        name="hallo",
        unet=UNetConfig(**HALLO_UNET),
        vae=VAEConfig(),
        # 5 frames x 12 layers x 768 -> 32 tokens of 768 (Hallo's AudioProjModel); wav2vec2 over the whole
        # track as Hallo runs it, in passes of 30 s (750 frames: LibriSpeech's longest utterances, what
        # wav2vec2-base-960h was fine-tuned on) overlapping by 5 s (125 frames: its positional conv's span)
        audio=AudioConfig(windowing="track", chunk=750, chunk_context=125),
        resolution=512,
        frames=16,
        motion_frames=2,
        fps=25,
        face_locator_channels=(16, 32, 64, 128),
        face_locator_in_channels=3,  # Hallo feeds its face mask as an RGB image
        face_embedding_dim=512,
        face_embedding_tokens=4,
        uncond_branch="hallo",
        first_motion="reference",
        sampler="ddim",
        steps=40,
        guidance_scale=3.5,
        prediction_type="v_prediction",
        timestep_spacing="trailing",
        zero_snr=True,
        beta_schedule="linear",
        set_alpha_to_one=True,
    )


def _hallo_tiny() -> ModelConfig:
    # The structure of `hallo` (every key of Hallo's net.pth) at toy widths: CI round trips.
    # Four levels of distinct widths, so that the same layers change width (conv_shortcut) as in SD1.5.
    return ModelConfig(
        name="hallo-tiny",
        unet=UNetConfig(
            block_out_channels=(16, 32, 64, 64),
            num_heads=2,
            cross_attention_dim=32,
            norm_num_groups=8,
            temporal_heads=2,
            temporal_max_len=16,
            **HALLO_UNET,
        ),
        vae=VAEConfig(block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=4),
        audio=AudioConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            conv_dim=32,
            num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=4,
            tokens=4,
            proj_hidden=64,
            left_context=4,
            windowing="track",
            chunk=40,  # 1.6 s: the example speech takes several chunks
            chunk_context=8,
        ),
        resolution=64,
        frames=4,
        motion_frames=2,
        face_locator_channels=(4, 8, 8, 16),
        face_locator_in_channels=3,
        face_embedding_dim=16,
        face_embedding_tokens=4,
        uncond_branch="hallo",
        first_motion="reference",
        sampler="ddim",
        steps=4,
        guidance_scale=3.5,
        prediction_type="v_prediction",
        timestep_spacing="trailing",
        zero_snr=True,
        beta_schedule="linear",
        set_alpha_to_one=True,
    )


# EchoMimic v1's structure (antgroup/echomimic, configs/inference/inference_v2.yaml): EMO's options that differ.
ECHOMIMIC_UNET = dict(speed_dim=0, reference_cross_attention=False)
# Its DDIM (inference_v2.yaml): linear betas, v-prediction, zero terminal SNR, trailing spacing
ECHOMIMIC_SAMPLER = dict(
    sampler="ddim",
    prediction_type="v_prediction",
    timestep_spacing="trailing",
    zero_snr=True,
    beta_schedule="linear",
    set_alpha_to_one=True,
)
# whisper-tiny (EchoMimic's audio encoder): 4 blocks of 384, 6 heads; 5 states x 10 frames = 50 tokens
WHISPER_TINY = AudioConfig(
    encoder="whisper", hidden_size=384, num_hidden_layers=4, num_attention_heads=6, intermediate_size=1536, tokens=50, left_context=2
)


def _echomimic(name: str = "echomimic", steps: int = 30, guidance: float = 2.5) -> ModelConfig:
    # EchoMimic v1: SD1.5 UNets (ReferenceNet without attn2), motion modules in every block,
    # whisper-tiny into attn2, 12-frame windows at 512 px; infer_audio2vid.py: 30 steps, cfg 2.5.
    return ModelConfig(
        name=name,
        unet=UNetConfig(cross_attention_dim=384, **ECHOMIMIC_UNET),
        vae=VAEConfig(),
        audio=WHISPER_TINY,
        resolution=512,
        frames=12,
        motion_frames=0,  # EchoMimic has no motion frames: overlapping context windows instead
        context_overlap=3,  # infer_audio2vid.py: 12-frame windows overlapping by 3,
        context_shift=2,  # moved by 2 x the step index (pipeline_echo_mimic_acc.py:495)
        noise_clamp=1.5,  # its initial latents: randn clamped to +-1.5 (prepare_latents)
        fps=25,
        face_locator_channels=(16, 32, 96, 256),
        uncond_branch="echomimic",
        steps=steps,
        guidance_scale=guidance,
        **ECHOMIMIC_SAMPLER,
    )


def _echomimic_acc() -> ModelConfig:
    # The distilled weights (infer_audio2vid_acc.py): 6 trailing DDIM steps (999, 832, ..., 166), cfg 1.0
    return _echomimic("echomimic-acc", steps=6, guidance=1.0)


def _echomimic_tiny() -> ModelConfig:
    # The structure of `echomimic` (every key kind of its five files) at the smallest widths that keep it:
    # two levels (one CrossAttn, one plain: both block kinds, a mid block, conv_shortcut where widths change),
    # one layer per block, whisper of 2 blocks of 16.
    return ModelConfig(
        name="echomimic-tiny",
        unet=UNetConfig(
            block_out_channels=(8, 16),
            attention_levels=(True, False),
            layers_per_block=1,
            num_heads=2,
            cross_attention_dim=16,
            norm_num_groups=4,
            temporal_heads=2,
            temporal_max_len=16,
            **ECHOMIMIC_UNET,
        ),
        vae=VAEConfig(block_out_channels=(4, 8, 8, 8), layers_per_block=1, norm_num_groups=2),
        audio=AudioConfig(
            encoder="whisper",
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=32,
            tokens=30,
            left_context=2,
            num_mel_bins=80,
            max_source_positions=64,
        ),
        resolution=32,
        frames=4,
        motion_frames=0,
        context_overlap=1,  # 4-frame windows: a 9-frame video takes 3 of them, as 33 frames take 4 of 12
        context_shift=2,
        noise_clamp=1.5,
        fps=25,
        face_locator_channels=(4, 4, 4, 8),
        uncond_branch="echomimic",
        steps=4,
        guidance_scale=2.5,
        **ECHOMIMIC_SAMPLER,
    )


PRESETS = {
    "tiny": _tiny,
    "demo": _demo,
    "demo-fast": _demo_fast,
    "emo-sd15": _emo_sd15,
    "hallo": _hallo,
    "hallo-tiny": _hallo_tiny,
    "echomimic": _echomimic,
    "echomimic-acc": _echomimic_acc,
    "echomimic-tiny": _echomimic_tiny,
}


def preset(name: str) -> ModelConfig:
    """The named preset; an unknown name is a ValueError listing the valid ones."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}") from None
