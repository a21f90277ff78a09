"""Distil the demo model into a one-step student: no unconditional pass, guidance in the weights.

    python -m training.distill --work build/distill --threads 1     # train, resuming
    python -m training.distill --work build/distill --eval          # held-out videos: lip sync, identity, PSNR vs the teacher
    python -m training.distill --work build/distill --ship          # -> emote/weights/demo-fast (the default demo weights stay)
    python -m training.distill --work build/distill --pack          # the small resumable state -> training/state/ (committed)

The teacher is the shipped demo model with its runtime defaults: DPM-Solver++ 2M, 4 trailing
steps, guidance 2.5 on the first step (5 backbone passes of a clip: 4 steps and the first
step's unconditional half). The student is the same architecture, initialised with the
teacher's weights; only its backbone trains (VAE, ReferenceNet, audio encoder, face locator
and speed encoder stay the teacher's, so both see the same conditioning). It samples with
DDIM on the same schedule, trailing, landing on x0 exactly (``set_alpha_to_one``), unguided:

- 1 step (the shipped default): x0 = student(x_T, t=999);
- 2 steps (the quality option): x_499 = alpha x0 + sigma x_T, then x0 = student(x_499, t=499).

Method: distillation of the teacher's own outputs (Luhman & Luhman 2021, "Knowledge
distillation in iterative generative models"), with a rectified-flow-style second step
(Liu et al. 2023, InstaFlow). For every training clip (a fresh person, utterance, motion
frames and noise x_T from the synthetic generator) the teacher runs its whole 4-step guided
sampler from x_T to x0_T; the student regresses x0_T:

- at t = 999 from x_T (share ``ONE_STEP``);
- at t = 499 from alpha_499 x0_in + sigma_499 x_T, where x0_in is x0_T (the straight line
  between the coupled pair) or the student's own one-step output (what two-step sampling
  feeds it), half and half.

The loss is the squared error of the predicted clean latents (mouth region x4, as the
teacher's recipe weights it). DPM-Solver++ is an ODE solver, so x0_T is a deterministic
function of x_T and the conditioning: regression learns that map and does not average over
outcomes; the teacher's guidance is in its targets, so the student needs no unconditional
pass.

Why this and not the alternatives, on 2 CPU cores (one for training): a teacher sample costs
5 backbone passes of 8 frames, about 1.0 s on one core, and the student's update (one pass,
forward and backward) about 1.2 s: the exact target of the 4-step teacher costs less than the
update it feeds, so nothing is gained from the local, one-solver-step targets that consistency
distillation (LCM) and progressive distillation use to avoid long teacher runs. LCM would add
a target-network pass and a guided solver step per item, learns consistency along the
teacher's ODE rather than the 4-step teacher's frames, converges over many thousands of large
batches and gives its weakest samples at 1 step. Progressive distillation needs two rounds
(4 -> 2 -> 1), each to convergence, for the same per-item cost. Distribution matching and
adversarial losses train a second network (a fake score model or a discriminator) beside the
student: at least twice the compute per step, and tuning this budget cannot afford. The
regression target here is exactly the model card's fidelity measure (frame PSNR against the
teacher); lip sync and identity follow the teacher's frames.

Why one step by default: on the runtime's default CPU path a demo clip (8 frames) costs
about 147 ms, 106 of them denoising (the guided step 39 ms, 3 unguided steps of 22 ms) and
41 ms decode, conditioning and audio (bench/RESULTS.md). One unguided step: about 63 ms, 2.3x
the teacher's frames per second; two: about 86 ms, 1.7x.

State: ``<work>/distill.pt`` (backbone, optimiser, EMA, step, RNG), saved every
``save_every`` steps; ``<work>/loss.jsonl`` (the shared loss log: loss, one- and two-step
parts, gradient norm, lr, process CPU seconds); ``<work>/eval.jsonl`` (every
``EVAL_EVERY`` steps: frame PSNR of the EMA student's 1- and 2-step clips against the
teacher's on held-out clips). Without ``<work>/distill.pt``, training resumes from the
committed ``training/state/distill.safetensors`` (``--pack``: the EMA backbone in float16 and
its step, about 10 MB) with a fresh optimiser, re-warmed. Nothing here measures wall time
to decide anything: the process may be paused (SIGSTOP) and resumed at any point.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from emote.bundle import SAMPLE_RATE
from emote.models.checkpoint import SHIPPED, WEIGHTS, load_checkpoint, shipped_checkpoint
from emote.models.config import preset
from emote.models.emo import ClipCondition, EMOModel
from emote.runtime.clips import ClipPlan, audio_window, clip_noise
from emote.runtime.face import crop_portrait
from emote.runtime.sampler import SamplerTable, make_sampler
from training.data import RENDER, make_sample
from training.portrait import face_box, render_portrait
from training.train import MOUTH, Run, Stage, ema_of, ema_update, lr_at, mouth_weight, pixels, window_at

STAGE = "distill"
SPEC = Stage(steps=3000, batch=4, lr=1e-4, save_every=25, warmup=50, ema=0.998)
DATA_SEED = 3  # people and speech drawn on the fly: neither the teacher's training set (seed 1) nor the held-out set (seed 2)
HELDOUT_SEED = 2  # the project's held-out people and sentences (training/evaluate.py)
ONE_STEP = 0.7  # share of items trained at t = 999 (the one-step sampler); the rest at t = 499
OWN_INPUT = 0.5  # of the t = 499 items: the input made from the student's own one-step output
REST_REFERENCE = 0.5  # share of clips whose reference is the person at rest (as a user's portrait is); else a random frame
MOTION_ZERO = 0.3  # share of clips without motion frames (every video's first clip)
DEFAULT_SPEED = 0.5  # share of clips at the runtime's constant head speed; else the data's
EVAL_EVERY = 100
EVAL_CLIPS = 8
REWARM = 20  # steps of lr warm-up after resuming without optimiser state
STATE = Path(__file__).resolve().parent / "state"
PACKED = STATE / "distill.safetensors"
TEACHER = "demo"  # the teacher's folder in emote/weights (the shipped demo model)
FAST = "demo-fast"  # the student's folder beside it


# -- samplers ------------------------------------------------------------------------------------------------
def student_config(steps: int = 1):
    """The student's preset (the teacher's architecture; DDIM, unguided, landing on x0) at ``steps``."""
    return replace(preset(FAST), steps=steps)


def table_of(cfg) -> SamplerTable:
    """The sampler of a config's defaults (the teacher's: DPM-Solver++ 4, guidance 2.5 on step 1)."""
    return make_sampler(
        cfg.sampler,
        cfg.steps,
        prediction_type=cfg.prediction_type,
        spacing=cfg.timestep_spacing,
        zero_snr=cfg.zero_snr,
        guidance_scale=cfg.guidance_scale,
        guidance_steps=cfg.guidance_steps,
        beta_schedule=cfg.beta_schedule,
        set_alpha_to_one=cfg.set_alpha_to_one,
    )


def sample(model: EMOModel, table: SamplerTable, x: torch.Tensor, ref, clip: ClipCondition, uncond) -> torch.Tensor:
    """The runtime's step loop in torch: each row does guidance, x0 and the solver update (deterministic tables)."""
    if table.is_stochastic:
        raise ValueError("deterministic samplers only")
    x0_prev = torch.zeros_like(x)
    for row, guided in zip(table.rows, table.guided, strict=True):
        t, a_x, a_o, c_x, c_0, c_p, _, g = (float(v) for v in row)
        out = model.model_output(x, torch.tensor(t), ref, clip, g if guided else None, uncond)
        x0 = a_x * x + a_o * out
        x = c_x * x + c_0 * x0 + c_p * x0_prev
        x0_prev = x0
    return x


# -- inputs: drawn from the synthetic generator ------------------------------------------------------------
@dataclass(frozen=True)
class ClipInputs:
    """One clip's inputs as the runtime gives them: reference latent, motion latents, audio window, speed, mask, noise."""

    reference: torch.Tensor  # (1, 4, h, w)
    motion: torch.Tensor  # (n, 4, h, w)
    window: torch.Tensor  # (1, S)
    speed: torch.Tensor  # (f,)
    face_mask: torch.Tensor  # (1, 1, R, R)
    noise: torch.Tensor  # (f, 4, h, w): x_T


@torch.no_grad()
def draw_inputs(model: EMOModel, seed: int, index: int, rng: np.random.Generator) -> ClipInputs:
    """A clip of person ``index`` of data set ``seed`` (training.data.make_sample): only the frames it needs are rendered."""
    cfg = model.config
    f, n, r, h = cfg.frames, cfg.motion_frames, cfg.resolution, cfg.latent_size
    s = make_sample(seed, index)
    box = face_box(s.params, RENDER)

    def frame(k: int) -> tuple[np.ndarray, np.ndarray]:
        full = render_portrait(s.params, RENDER, s.mouth_open[k], s.mouth_wide[k], s.eye_open[k], s.yaw[k], s.pitch[k])
        return crop_portrait(full, box, r)

    start = int(rng.integers(0, max(1, s.frames - f + 1)))
    if rng.random() < REST_REFERENCE:  # the person at rest: mouth closed, eyes open, facing the camera
        image, mask = crop_portrait(render_portrait(s.params, RENDER, 0.0, 0.5, 1.0, 0.0, 0.0), box, r)
    else:
        image, mask = frame(int(rng.integers(s.frames)))
    if start >= n and rng.random() >= MOTION_ZERO:
        motion = model.encode_image(pixels(np.stack([frame(k)[0] for k in range(start - n, start)])))
    else:
        motion = torch.zeros(n, 4, h, h)
    plan = ClipPlan(f, n, cfg.fps, cfg.audio.left_context, cfg.audio.right_context, frames=max(s.frames, f))
    speed = np.zeros(f, np.float32) + cfg.speed_default
    if rng.random() >= DEFAULT_SPEED:
        part = s.speed[start : start + f]
        speed[: len(part)] = part
    return ClipInputs(
        reference=model.encode_image(pixels(image[None])),
        motion=motion,
        window=torch.from_numpy(window_at(s.audio, plan, start)),
        speed=torch.from_numpy(speed),
        face_mask=torch.from_numpy(mask)[None, None],
        noise=torch.from_numpy(rng.standard_normal((f, 4, h, h), dtype=np.float32)),
    )


@dataclass(frozen=True)
class Features:
    """The outputs of the frozen parts (shared by teacher and student): what the backbone's projections read."""

    ref_tokens: list
    audio_tokens: torch.Tensor
    motion_hidden: list
    speed_tokens: torch.Tensor | None
    face: torch.Tensor


@torch.no_grad()
def features(model: EMOModel, c: ClipInputs) -> Features:
    return Features(
        ref_tokens=model.reference_net.features(c.reference).tokens,
        audio_tokens=model.encode_audio(c.window),
        # contiguous: the ReferenceNet's hidden states come out channels-last, and torch 2.13's
        # group_norm backward crashes (SIGSEGV) on a channels-last input that needs no gradient
        motion_hidden=[t.contiguous() for t in model.reference_net.features(c.motion).hidden],
        speed_tokens=model.speed_encoder(c.speed) if model.speed_encoder is not None else None,
        face=model.face_locator(c.face_mask),
    )


def conditioned(model: EMOModel, feats: Features) -> tuple[list, ClipCondition]:
    """The backbone's own keys/values of the features (as ``reference`` and ``clip_condition`` make them)."""
    bb = model.backbone
    clip = ClipCondition(
        audio=bb.context_kv(feats.audio_tokens),
        motion=bb.motion_kv(feats.motion_hidden),
        speed=bb.speed_kv(feats.speed_tokens) if feats.speed_tokens is not None else None,
        face=feats.face,
    )
    return bb.reference_kv(feats.ref_tokens), clip


# -- models ---------------------------------------------------------------------------------------------------
def load_teacher() -> EMOModel:
    path = shipped_checkpoint(TEACHER)
    if path is None:
        raise SystemExit("the teacher (emote/weights/demo) is missing: `make weights` trains it first")
    return load_checkpoint(path).requires_grad_(False).eval()


def student_of(teacher: EMOModel) -> EMOModel:
    """A copy of the teacher whose backbone trains; everything else stays frozen (and shared in value)."""
    student = copy.deepcopy(teacher)
    student.requires_grad_(False)
    student.backbone.requires_grad_(True)
    return student.eval()  # no dropout or batch statistics anywhere: eval mode trains the same


@torch.no_grad()
def load_backbone(model: EMOModel, ema: dict[str, torch.Tensor]) -> None:
    named = dict(model.backbone.named_parameters())
    for k, v in ema.items():
        named[k].copy_(v)


# -- evaluation -----------------------------------------------------------------------------------------------
def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


class ClipEval:
    """Frame PSNR of the student's 1- and 2-step clips against the teacher's, on held-out clips (fixed noise).

    Held-out people and sentences (seed 2), the teacher's clips computed once per process.
    """

    def __init__(self, teacher: EMOModel, clips: int = EVAL_CLIPS):
        rng = np.random.default_rng([HELDOUT_SEED, 999])
        self.teacher, self.inputs, self.feats, self.frames = teacher, [], [], []
        table, uncond = table_of(teacher.config), teacher.uncond_audio_kv()
        with torch.no_grad():
            for i in range(clips):
                c = draw_inputs(teacher, HELDOUT_SEED, i, rng)
                feats = features(teacher, c)
                x0 = sample(teacher, table, c.noise, *conditioned(teacher, feats), uncond)
                self.inputs.append(c)
                self.feats.append(feats)
                self.frames.append(teacher.decode_latents(x0).numpy())

    @torch.no_grad()
    def __call__(self, student: EMOModel) -> dict:
        out = {}
        for steps in (1, 2):
            table = table_of(student_config(steps))
            whole, mouth = [], []
            for c, feats, ref_frames in zip(self.inputs, self.feats, self.frames, strict=True):
                x0 = sample(student, table, c.noise, *conditioned(student, feats), None)
                frames = self.teacher.decode_latents(x0).numpy()
                whole.append(psnr(frames, ref_frames))
                mouth.append(psnr(frames[:, MOUTH[0], MOUTH[1]], ref_frames[:, MOUTH[0], MOUTH[1]]))
            out[f"psnr{steps}"] = round(float(np.mean(whole)), 3)
            out[f"mouth_psnr{steps}"] = round(float(np.mean(mouth)), 3)
        return out


@torch.no_grad()
def generate(
    model: EMOModel, table: SamplerTable, image: np.ndarray, mask: np.ndarray, audio: np.ndarray, seed: int = 0, uncond=None
) -> np.ndarray:
    """A whole video as the runtime makes it (clip plan, windows, noise, motion frames), in torch."""
    cfg = model.config
    f, n, h = cfg.frames, cfg.motion_frames, cfg.latent_size
    plan = ClipPlan.for_samples(
        len(audio), clip_frames=f, motion_frames=n, fps=cfg.fps, left_context=cfg.audio.left_context, lookahead=cfg.audio.right_context
    )
    reference = model.encode_image(pixels(image[None]))
    motion = torch.zeros(n, 4, h, h)
    speed = torch.full((f,), cfg.speed_default)
    out = np.empty((plan.frames, cfg.resolution, cfg.resolution, 3), np.uint8)
    for c in range(plan.clips):
        inputs = ClipInputs(
            reference,
            motion,
            torch.from_numpy(audio_window(audio, plan, c)),
            speed,
            torch.from_numpy(mask)[None, None],
            torch.from_numpy(clip_noise(seed, c, (f, 4, h, h))),
        )
        x0 = sample(model, table, inputs.noise, *conditioned(model, features(model, inputs)), uncond)
        frames = model.decode_latents(x0).numpy()
        keep = plan.kept(c)
        out[c * f : c * f + keep] = frames[:keep]
        motion = model.encode_image(pixels(frames[f - n :]))
    return out


@torch.no_grad()
def evaluate_videos(teacher: EMOModel, student: EMOModel, samples: int, out: Path | None = None) -> dict:
    """Held-out people and speech (seed 2, utterances of 2 s or more, as training/evaluate.py picks them):
    lip sync and identity (emote.bench.lipsync.score) of the teacher and of the student at 1 and 2 steps,
    and the student's frame PSNR against the teacher's video. PyTorch fp32, the runtime's clip loop."""
    from emote.bench.lipsync import MouthEstimator, score
    from training.evaluate import MIN_SECONDS, portrait_of

    reader = MouthEstimator()
    variants = {"teacher": (teacher, table_of(teacher.config), teacher.uncond_audio_kv())}
    for steps in (1, 2):
        variants[f"student{steps}"] = (student, table_of(student_config(steps)), None)
    rows, i = [], 0
    while len(rows) < samples:
        s = make_sample(HELDOUT_SEED, i)
        i += 1
        if len(s.audio) < MIN_SECONDS * SAMPLE_RATE:
            continue
        portrait = portrait_of(s.params, teacher.config.resolution)
        row, videos = {"sample": i - 1, "seconds": round(len(s.audio) / SAMPLE_RATE, 2)}, {}
        for name, (model, table, uncond) in variants.items():
            videos[name] = generate(model, table, portrait.image, portrait.mask, s.audio, uncond=uncond)
            sc = score(videos[name], s.audio, portrait.image, portrait.mask, reader)
            row[name] = {"lipsync": round(sc.correlation, 4), "identity": round(sc.identity, 4)}
            if name != "teacher":
                row[name]["psnr"] = round(psnr(videos[name], videos["teacher"]), 3)
        rows.append(row)
        print(json.dumps(row), flush=True)
    summary = {"samples": rows}
    for name in variants:
        summary[name] = {k: round(float(np.mean([r[name][k] for r in rows])), 4) for k in rows[0][name]}
    if out is not None:
        out.write_text(json.dumps(summary, indent=1))
    return summary


# -- training -------------------------------------------------------------------------------------------------
def x0_loss(pred: torch.Tensor, target: torch.Tensor, w_px: torch.Tensor) -> torch.Tensor:
    return ((pred - target) ** 2 * w_px).mean() / w_px.mean()


def train(work: Path, spec: Stage = SPEC, eval_every: int = EVAL_EVERY) -> None:
    teacher = load_teacher()
    student = student_of(teacher)
    cfg = teacher.config
    params = {k: p for k, p in student.backbone.named_parameters()}
    opt = torch.optim.AdamW(params.values(), lr=spec.lr, betas=(0.9, 0.99), weight_decay=0.0)
    ema = ema_of(params)
    run = Run(work, STAGE, spec)
    rng = np.random.default_rng(500)
    rewarm_from = None
    if run.load({"backbone": student.backbone}, opt, ema):
        rng = np.random.default_rng([500, run.step])
    elif packed_matches():  # a fresh machine: the committed EMA, a fresh optimiser
        run.step = unpack(ema)
        load_backbone(student, ema)
        rng, rewarm_from = np.random.default_rng([500, run.step]), run.step
        print(f"resumed from {PACKED.name} at step {run.step} (fresh optimiser)", file=sys.stderr)
    t_table, uncond = table_of(cfg), teacher.uncond_audio_kv()
    one, two = table_of(student_config(1)).rows[0], table_of(student_config(2)).rows
    w_px = mouth_weight((cfg.latent_size,) * 2, 8)
    shadow = copy.deepcopy(student).requires_grad_(False)  # the EMA weights, for evaluation
    evaluator = ClipEval(teacher) if eval_every else None
    eval_log = work / "eval.jsonl"

    def evaluate() -> None:
        load_backbone(shadow, ema)
        row = {"step": run.step, **evaluator(shadow)}
        with open(eval_log, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(json.dumps(row), file=sys.stderr, flush=True)

    if evaluator is not None and run.step == 0 and not eval_log.exists():
        evaluate()  # the starting point: the teacher's weights sampled in 1 and 2 unguided steps
    bar = tqdm(total=spec.steps, initial=run.step, desc=STAGE, unit="step", mininterval=30)
    while run.step < spec.steps:
        lr = lr_at(run.step, spec) * (1.0 if rewarm_from is None else min(1.0, (run.step - rewarm_from + 1) / REWARM))
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        parts: dict[str, list[float]] = {"one": [], "two": []}
        for _ in range(spec.batch):
            c = draw_inputs(teacher, DATA_SEED, int(rng.integers(2**31)), rng)
            feats = features(teacher, c)
            with torch.no_grad():
                target = sample(teacher, t_table, c.noise, *conditioned(teacher, feats), uncond)
            ref, clip = conditioned(student, feats)
            if rng.random() < ONE_STEP:
                row, x, kind = one, c.noise, "one"
            else:
                if rng.random() < OWN_INPUT:
                    with torch.no_grad():
                        t0, a_x, a_o = (float(v) for v in two[0][:3])
                        x0_in = a_x * c.noise + a_o * student.model_output(c.noise, torch.tensor(t0), ref, clip, None)
                else:
                    x0_in = target
                row, x, kind = two[1], float(two[0][3]) * c.noise + float(two[0][4]) * x0_in, "two"
            t, a_x, a_o = (float(v) for v in row[:3])
            pred = a_x * x + a_o * student.model_output(x, torch.tensor(t), ref, clip, None)
            loss = x0_loss(pred, target, w_px)
            (loss / spec.batch).backward()
            parts[kind].append(loss.item())
        norm = torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0)
        opt.step()
        ema_update(ema, params, spec.ema, run.step)
        run.step += 1
        values = [v for p in parts.values() for v in p]
        run.record(
            loss=float(np.mean(values)),
            **{k: round(float(np.mean(v)), 6) for k, v in parts.items() if v},
            grad_norm=round(float(norm), 4),
            lr=lr,
            cpu=round(time.process_time(), 1),
        )
        run.progress(bar, {"backbone": student.backbone}, opt, ema, rng, loss=float(np.mean(values)))
        if evaluator is not None and (run.step % eval_every == 0 or run.step == spec.steps):
            evaluate()
    bar.close()


# -- the committed state and the shipped weights ----------------------------------------------------------------
def pack(work: Path) -> Path:
    """The EMA backbone (float16) and its step into training/state/: enough to continue on a fresh machine."""
    from safetensors.torch import save_file

    state = torch.load(work / f"{STAGE}.pt", map_location="cpu", weights_only=False)
    STATE.mkdir(exist_ok=True)
    tensors = {k: v.detach().to(torch.float16).contiguous() for k, v in state["ema"].items()}
    save_file(tensors, PACKED, metadata={"step": str(state["step"]), "stage": STAGE, "teacher_sha256": teacher_sha256()})
    PACKED.chmod(0o644)
    print(f"wrote {PACKED} (step {state['step']}, {PACKED.stat().st_size / 2**20:.1f} MiB)")
    return PACKED


def teacher_sha256() -> str:
    from emote.bundle import file_sha256

    return file_sha256(shipped_checkpoint(TEACHER) / WEIGHTS)


def packed_matches() -> bool:
    """The committed state exists and was distilled from these teacher weights (a retrained teacher starts afresh)."""
    if not PACKED.exists():
        return False
    from safetensors import safe_open

    with safe_open(PACKED, framework="pt") as f:
        return f.metadata().get("teacher_sha256") == teacher_sha256()


def unpack(ema: dict[str, torch.Tensor]) -> int:
    from safetensors import safe_open

    with safe_open(PACKED, framework="pt") as f:
        for k in f.keys():  # noqa: SIM118 - safe_open is not iterable
            ema[k].copy_(f.get_tensor(k).float())
        return int(f.metadata()["step"])


def trained_student(work: Path) -> tuple[EMOModel, EMOModel, int]:
    """(teacher, student with the EMA backbone, step): from <work>/distill.pt, else the committed state."""
    teacher = load_teacher()
    student = student_of(teacher).requires_grad_(False)
    path = work / f"{STAGE}.pt"
    if path.exists():
        state = torch.load(path, map_location="cpu", weights_only=False)
        load_backbone(student, state["ema"])
        step = state["step"]
    elif packed_matches():
        ema = {k: v.detach().clone() for k, v in student.backbone.named_parameters()}
        step = unpack(ema)
        load_backbone(student, ema)
    else:
        raise SystemExit(f"no distillation state: neither {path} nor a {PACKED.name} of these teacher weights")
    student.config = student_config(1)
    return teacher, student, step


def ship(work: Path, dest: Path = SHIPPED / FAST) -> Path:
    """The student (1-step defaults in its config) as float16 safetensors in ``dest``, with its training facts."""
    from training.ship import BUDGET_BYTES, save_keeping_card, stage_facts

    teacher, student, step = trained_student(work)
    save_keeping_card(student, dest)
    size = sum(f.stat().st_size for f in dest.iterdir() if f.is_file())
    if size > BUDGET_BYTES:
        raise SystemExit(f"{dest} holds {size / 2**20:.1f} MiB, over the {BUDGET_BYTES / 2**20:.0f} MiB budget")
    teacher_facts = json.loads((shipped_checkpoint(TEACHER) / "training.json").read_text())
    evals = [json.loads(line) for line in (work / "eval.jsonl").read_text().splitlines()] if (work / "eval.jsonl").exists() else []
    facts = {
        "preset": student.config.name,
        "parameters": student.component_parameters(),
        "weights_bytes": (dest / WEIGHTS).stat().st_size,
        "distilled_from": {
            "weights": f"emote/weights/{TEACHER}",
            "sha256": teacher_sha256(),
            "sampler": {k: getattr(teacher.config, k) for k in ("sampler", "steps", "guidance_scale", "guidance_steps")},
        },
        "distill": {**stage_facts(work).get(STAGE, {}), "ema_step": step, "last_eval": evals[-1] if evals else None}
        if (work / "loss.jsonl").exists()
        else {"ema_step": step},
        "teacher_stages": teacher_facts.get("stages"),
    }
    (dest / "training.json").write_text(json.dumps(facts, indent=1))
    print(f"wrote {dest} ({size / 2**20:.1f} MiB, step {step})")
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description="Distil the demo model into a one-step student (CPU, resumable).")
    ap.add_argument("--work", default="build/distill", help="state, loss log and evaluations")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, help="override the step count (smoke runs)")
    ap.add_argument("--eval-every", type=int, default=EVAL_EVERY, help="held-out clip PSNR every N steps (0: never)")
    ap.add_argument("--eval", action="store_true", help="held-out videos: lip sync, identity, PSNR against the teacher")
    ap.add_argument("--samples", type=int, default=4, help="held-out videos for --eval")
    ap.add_argument("--ship", action="store_true", help=f"write the student to emote/weights/{FAST}")
    ap.add_argument("--pack", action="store_true", help="write the small resumable state to training/state/")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.pack:
        pack(work)
    elif args.ship:
        ship(work)
    elif args.eval:
        teacher, student, step = trained_student(work)
        summary = evaluate_videos(teacher, student, args.samples, work / f"videos-{step}.json")
        print(json.dumps({"step": step, **{k: v for k, v in summary.items() if k != "samples"}}, indent=1))
    else:
        spec = replace(SPEC, steps=args.steps, warmup=min(SPEC.warmup, args.steps)) if args.steps else SPEC
        train(work, spec, args.eval_every)


if __name__ == "__main__":
    main()
