"""Parity: every graph of a bundle against its PyTorch module, on random and on real inputs.

``compare`` is the reusable core (two dicts of arrays -> one row per output with
max abs error, max relative error and SQNR); ``verify_bundle`` runs each graph in
a backend and in PyTorch on the same inputs. Definitions:
- relative error = max |got - ref| / max |ref| (norm-wise: element-wise ratios explode near 0);
- SQNR = 10 log10(sum ref^2 / sum (got - ref)^2) dB (inf when equal).
Tolerances per precision are in ``TOLERANCES``; uint8 image outputs may differ by
one level where a value sits on a rounding boundary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import precision as policy
from ..bundle import Bundle
from ..engines.base import Backend
from ..engines.fidelity import psnr_db, sqnr_db  # noqa: F401 - parity's measures, imported from here by its callers
from ..errors import EmoteError
from ..models.emo import EMOModel
from .graphs import Graph, all_graphs


@dataclass(frozen=True)
class Tolerance:
    max_rel: float | None  # None: not checked
    min_sqnr_db: float
    max_uint8_levels: int = 1


TOLERANCES = {
    "fp32": Tolerance(max_rel=1e-3, min_sqnr_db=60.0),
    "fp16": Tolerance(max_rel=None, min_sqnr_db=35.0, max_uint8_levels=8),
    "bf16": Tolerance(max_rel=None, min_sqnr_db=25.0, max_uint8_levels=16),
    "int8": Tolerance(max_rel=None, min_sqnr_db=20.0, max_uint8_levels=32),
}


@dataclass(frozen=True)
class ParityRow:
    graph: str
    output: str
    inputs: str  # "random" or "real"
    max_abs: float
    max_rel: float
    sqnr_db: float
    ok: bool

    def line(self) -> str:
        mark = "ok  " if self.ok else "FAIL"
        return (
            f"{mark} {self.graph:<18} {self.output:<16} {self.inputs:<6} "
            f"max_abs {self.max_abs:9.3g}  max_rel {self.max_rel:9.3g}  sqnr {self.sqnr_db:7.1f} dB"
        )


def compare(
    graph: str, ref: dict[str, np.ndarray], got: dict[str, np.ndarray], precision: str = "fp32", inputs: str = "random"
) -> list[ParityRow]:
    tol = TOLERANCES[precision]
    rows = []
    for name, r in ref.items():
        g = got[name]
        if g.shape != r.shape:
            rows.append(ParityRow(graph, name, inputs, math.inf, math.inf, -math.inf, False))
            continue
        diff = np.abs(g.astype(np.float64) - r.astype(np.float64))
        max_abs = float(diff.max()) if diff.size else 0.0
        scale = float(np.abs(r.astype(np.float64)).max()) if r.size else 0.0
        max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
        s = sqnr_db(r, g)
        if r.dtype == np.uint8:
            ok = max_abs <= tol.max_uint8_levels and s >= min(tol.min_sqnr_db, 40.0)
        else:
            ok = s >= tol.min_sqnr_db and (tol.max_rel is None or max_rel <= tol.max_rel)
        rows.append(ParityRow(graph, name, inputs, max_abs, max_rel, s, ok))
    return rows


def torch_outputs(graph: Graph, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    graph.eval()
    args = [torch.from_numpy(feeds[s.name]) for s in graph.inputs()]
    with torch.no_grad():
        out = graph(*args)
    out = out if isinstance(out, tuple) else (out,)
    return {n: o.numpy() for n, o in zip(graph.output_names(), out, strict=True)}


def real_inputs(model: EMOModel) -> dict[str, dict[str, np.ndarray]]:
    """Inputs of every graph made from the example portrait and speech, chained as the pipeline would."""
    from ..runtime.clips import audio_window
    from ..runtime.examples import example_inputs
    from ..runtime.sampler import make_sampler
    from .graphs import AudioEncoderGraph, ClipConditionGraph, ReferenceGraph, VAEEncoderGraph, track_windowing

    cfg = model.config
    portrait, audio = example_inputs(cfg.resolution)
    from ..models.pipeline import ReferencePipeline

    plan = ReferencePipeline(model).plan(len(audio))
    n, f = cfg.motion_frames, cfg.frames
    face_mask, video = hallo_video_inputs(cfg, portrait.mask)
    feeds: dict[str, dict[str, np.ndarray]] = {}
    if track_windowing(cfg):
        feeds.update(track_feeds(model, audio))
    else:
        clip = min(1, plan.clips - 1)
        feeds["audio_encoder"] = {"audio": audio_window(audio, plan, clip)}
        if cfg.audio.encoder == "whisper":  # EchoMimic: each frame's whisper rows in the window
            from ..runtime.families.echomimic import clip_index, window_positions
            from ..runtime.whisper_mel import segments, track_log_mel

            feeds["audio_encoder"]["audio_index"] = clip_index(plan, clip, len(audio))
            feeds["audio_encoder"]["audio_positions"] = window_positions(plan, clip, cfg.audio.max_source_positions)
            feeds["audio_segment"] = {
                "mel": next(segments(track_log_mel(audio, cfg.audio.num_mel_bins), cfg.audio.max_source_positions))[0]
            }
    feeds["reference_net"] = {"reference": portrait.image[None], **video}
    # the portrait's latent stands for the motion frames' (EchoMimic has none: no vae_encoder to feed)
    feeds["vae_encoder"] = {"frames": np.repeat(portrait.image[None], max(n, 1), axis=0)}
    tokens = torch_outputs(AudioEncoderGraph(model), feeds["audio_encoder"])["audio_tokens"]
    latents = torch_outputs(VAEEncoderGraph(model), feeds["vae_encoder"])["latents"]
    if not n:
        del feeds["vae_encoder"]
    feeds["clip_condition"] = {
        "audio_tokens": tokens,
        "motion_latents": latents[:n],
        "face_mask": face_mask[None, None].astype(np.float32),
        "speed": np.full((f,), cfg.speed_default, np.float32),
        **video,
    }
    cond = torch_outputs(ClipConditionGraph(model), feeds["clip_condition"])
    cond.update(torch_outputs(ReferenceGraph(model), feeds["reference_net"]))
    table = make_sampler("ddim", 10, guidance_scale=cfg.guidance_scale)
    rng = np.random.default_rng(1)
    x = rng.standard_normal(latents.shape[1:], dtype=np.float32)
    step = {
        "x": np.broadcast_to(x, (f, *x.shape)).copy(),
        "row": table.rows[3],
        "x0_prev": np.repeat(latents[:1], f, 0),
        "noise": np.zeros((f, *x.shape), np.float32),
        **cond,
        **video,
    }
    feeds["denoise_step"] = step
    feeds["denoise_step_cond"] = step
    feeds["vae_decoder"] = {"latents": np.repeat(latents[:1], f, axis=0)}
    return feeds


class _Recording:
    """A torch graph behind the engine interface (``run``) that keeps the first feeds it was given."""

    def __init__(self, graph):
        self.graph, self.feeds = graph, None

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.feeds is None:
            self.feeds = {k: np.array(v) for k, v in feeds.items()}
        return torch_outputs(self.graph, feeds)


def track_feeds(model: EMOModel, audio: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    """ "track" windowing: the real inputs of audio_stats, audio_features (their first call over ``audio``) and
    audio_encoder (clip 1's windows of the whole track's features), as the runtime makes them."""
    from ..runtime.clips import ClipWindows
    from ..runtime.track_audio import TrackAudio, clip_windows
    from .graphs import AudioFeaturesGraph, AudioStatsGraph

    cfg = model.config
    f, m = cfg.frames, cfg.audio.window
    stats, chunk = _Recording(AudioStatsGraph(model)), _Recording(AudioFeaturesGraph(model))
    track = TrackAudio(stats, chunk, chunk=cfg.audio.chunk, context=cfg.audio.chunk_context, samples_per_frame=cfg.samples_per_frame)
    plan = ClipWindows(f, cfg.motion_frames, cfg.fps, cfg.audio.left_context, m).plan(len(audio), ceil=True)
    features = track.track(audio, plan.clips * f)
    windows = clip_windows(features, 0, min(1, plan.clips - 1), f, m, len(features) - 1)
    return {"audio_stats": stats.feeds, "audio_features": chunk.feeds, "audio_encoder": {"audio_windows": windows}}


def hallo_video_inputs(cfg, mask: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The face locator's mask and, for Hallo, its per-video inputs as the runtime makes them.

    No face-recognition model ships with emote: the face embedding here is a fixed random
    vector (parity needs the same input on both sides, not a real identity).
    """
    if cfg.uncond_branch != "hallo":
        return mask, {}
    from ..runtime.regions import region_masks

    face_mask, levels = region_masks(mask, cfg.latent_size, len(cfg.unet.block_out_channels))
    video = {f"region_mask_{d}": m for d, m in enumerate(levels)}
    video["region_scales"] = np.ones(3, np.float32)
    video["face_embedding"] = np.random.default_rng(3).standard_normal((1, cfg.face_embedding_dim), dtype=np.float32)
    return face_mask, video


def verify_bundle(
    bundle_path: str | Path,
    model: EMOModel,
    backend: Backend,
    precision: str = "fp32",
    inputs: tuple[str, ...] = ("random", "real"),
    graphs: list[str] | None = None,
) -> list[ParityRow]:
    """Every graph of the bundle in ``backend`` against ``model`` in PyTorch; one row per output.

    Each graph runs as the precision policy picks its file for ``precision`` on ``backend``;
    graphs without a low-precision variant are skipped below fp32 (they run in fp32).
    """
    bundle = Bundle.open(bundle_path)
    graph_prec = policy.graph_precision(backend.name, precision)  # OpenVINO's bf16/fp16: the fp32 graphs, hinted
    if graph_prec != "fp32" and not bundle.has(policy.STEP, graph_prec):
        raise EmoteError(f"{bundle.describe()} has no {graph_prec} graphs: make them with {policy.HOW[graph_prec]}")
    real = real_inputs(model) if "real" in inputs else {}
    rows: list[ParityRow] = []
    for g in all_graphs(model):  # the fp32 PyTorch graphs are the reference for every precision
        if graphs and g.name not in graphs:
            continue
        spec = policy.graph_for(bundle, g.name, backend.name, precision)
        if graph_prec != "fp32" and spec.precision == "fp32":
            continue  # graphs without a low-precision variant run in fp32: verified at fp32
        engine = backend.load(spec)
        for kind in inputs:
            feeds = g.example(np.random.default_rng(7)) if kind == "random" else real[g.name]
            ref = torch_outputs(g, feeds)
            got = engine.run({k: feeds[k] for k in engine.inputs})
            rows += compare(g.name, ref, got, precision, kind)
        del engine
        backend.close()  # one graph in memory at a time: emo-sd15's four largest hold 17 GB together
    return rows
