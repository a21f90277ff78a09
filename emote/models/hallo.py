"""Hallo's released weights -> an emote checkpoint of the ``hallo`` preset (`emote import-hallo`).

Hallo (github.com/fudan-generative-vision/hallo, MIT) ships ``net.pth``: ``torch.save`` of
its ``Net``'s state dict, five modules under five prefixes. Our one architecture holds
the same tensors under the same diffusers/AnimateDiff names, below our component names:

| net.pth prefix    | ours                 | what it holds                                        |
| ----------------- | -------------------- | ---------------------------------------------------- |
| reference_unet.   | reference_net.       | SD1.5 UNet without its output head                   |
| denoising_unet.   | backbone.            | SD1.5 UNet + AnimateDiff v2 motion modules + audio modules |
| face_locator.     | face_locator.        | face-mask convolutions                               |
| imageproj.        | face_projection.     | face embedding -> 4 attn2 context tokens             |
| audioproj.        | audio_encoder.proj.  | wav2vec2 features -> 32 audio tokens per frame       |

The VAE (``sd-vae-ft-mse``) and wav2vec2 (``wav2vec2-base-960h``) come from their own
folders, as Hallo loads them. ``net.pth`` already holds the motion modules (Hallo trained
them further from AnimateDiff's ``mm_sd_v15_v2.ckpt``): a ``--motion-module`` file is
only used for motion-module tensors that ``net.pth`` lacks. Every tensor lands in fp32.
A key that has no place in the model is reported by name, never dropped in silence.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import EmoteError

NET_PREFIXES = {
    "reference_unet.": "reference_net.",
    "denoising_unet.": "backbone.",
    "face_locator.": "face_locator.",
    "imageproj.": "face_projection.",
    "audioproj.": "audio_encoder.proj.",
}
# wav2vec2 tensors that exist only for training: SpecAugment's mask embedding
TRAINING_ONLY = ("masked_spec_embed",)


def ours_from_hallo(key: str) -> str | None:
    """Our name of a ``net.pth`` key; None when its prefix is not one of Hallo's five modules."""
    for theirs, ours in NET_PREFIXES.items():
        if key.startswith(theirs):
            return ours + key[len(theirs) :]
    return None


def hallo_from_ours(key: str) -> str | None:
    """The ``net.pth`` name of one of our keys; None for the parts net.pth does not hold (VAE, wav2vec2)."""
    for theirs, ours in NET_PREFIXES.items():
        if key.startswith(ours) and not key.startswith("audio_encoder.wav2vec2."):
            return theirs + key[len(ours) :]
    return None


@dataclass
class ImportReport:
    """What went where: tensors placed per source, keys with no place, keys not needed at inference."""

    placed: dict[str, int] = field(default_factory=dict)
    unplaced: list[str] = field(default_factory=list)
    training_only: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = ["placed " + ", ".join(f"{n} tensors from {src}" for src, n in self.placed.items())]
        out += self.notes
        if self.training_only:
            out.append(f"not used at inference (training only): {', '.join(self.training_only)}")
        if self.unplaced:
            out.append(f"{len(self.unplaced)} key(s) with no place in the model, left out: {', '.join(self.unplaced)}")
        return out


def load_state_file(path: Path, option: str) -> dict[str, torch.Tensor]:
    """A torch-saved state dict (``.pth``/``.ckpt``/``.pt``) or a ``.safetensors`` file, memory-mapped where possible."""
    if not path.is_file():
        raise EmoteError(f"{option} {path}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # the legacy (pre-zip) format cannot be memory-mapped
                state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for a file that is not a checkpoint
        raise EmoteError(f"{option} {path} is not a readable checkpoint ({type(e).__name__}: {e})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # Lightning-style wrapper
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise EmoteError(f"{option} {path} does not hold a state dict (a mapping of names to tensors)")
    return state


def _pretrained(cls, folder: Path, option: str, what: str):
    if not (folder / "config.json").is_file():
        raise EmoteError(f"{option} {folder}: expected a {what} folder with config.json (as its save_pretrained writes it)")
    try:
        return cls.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as e:
        raise EmoteError(f"{option} {folder}: cannot load {what} ({e})") from None


def import_hallo(
    net: str | Path,
    sd_vae: str | Path,
    wav2vec2: str | Path,
    out: str | Path,
    *,
    motion_module: str | Path | None = None,
    preset_name: str = "hallo",
    allow_unplaced: bool = False,
    force: bool = False,
) -> ImportReport:
    """Map Hallo's files into one checkpoint folder ``out`` of ``preset_name``; returns what was placed where."""
    from diffusers import AutoencoderKL
    from transformers import Wav2Vec2Model

    from ..bundle import file_sha256
    from ..folders import check_target
    from .checkpoint import CHECKPOINT, check_state, save_checkpoint
    from .config import preset
    from .emo import build_model

    net, sd_vae, wav2vec2, out = Path(net), Path(sd_vae), Path(wav2vec2), Path(out)
    check_target(out, CHECKPOINT, force, "-o")  # before minutes of loading
    try:
        cfg = preset(preset_name)
    except ValueError as e:
        raise EmoteError(str(e)) from None
    if cfg.uncond_branch != "hallo":
        raise EmoteError(f"preset {preset_name!r} is not a Hallo model: use --preset hallo (or hallo-tiny)")
    expected = {k: tuple(v.shape) for k, v in build_model(cfg, device="meta").state_dict().items()}
    report = ImportReport()
    state: dict[str, torch.Tensor] = {}

    def place(source: str, ours: str | None, theirs: str, tensor: torch.Tensor) -> None:
        if ours is None or ours not in expected:
            report.unplaced.append(f"{source}:{theirs}")
            return
        state[ours] = tensor
        report.placed[source] = report.placed.get(source, 0) + 1

    for key, tensor in load_state_file(net, "--net").items():
        place("net.pth", ours_from_hallo(key), key, tensor)

    motion_keys = [k for k in expected if ".motion_modules." in k]
    if motion_module is not None:
        mm = load_state_file(Path(motion_module), "--motion-module")
        used = 0
        for key, tensor in mm.items():
            key = key.removeprefix("module.")
            ours = "backbone." + key
            if ours in state:
                continue  # net.pth holds Hallo's trained version of this tensor
            if ".motion_modules." in key and ours in expected:
                place("motion module", ours, key, tensor)
                used += 1
            else:
                report.unplaced.append(f"motion module:{key}")
        if not used:
            report.notes.append(
                f"net.pth holds all {len(motion_keys)} motion-module tensors (Hallo's fine-tuned AnimateDiff v2): "
                f"--motion-module {motion_module} was not needed"
            )

    vae = _pretrained(AutoencoderKL, sd_vae, "--sd-vae", "diffusers AutoencoderKL")
    for key, tensor in vae.state_dict().items():
        place("sd-vae", "vae." + key, key, tensor)
    w2v = _pretrained(Wav2Vec2Model, wav2vec2, "--wav2vec2", "transformers Wav2Vec2Model")
    for key, tensor in w2v.state_dict().items():
        if key in TRAINING_ONLY:
            report.training_only.append(f"wav2vec2:{key}")
            continue
        place("wav2vec2", "audio_encoder.wav2vec2." + key, key, tensor)

    found = {k: tuple(v.shape) for k, v in state.items()}
    missing_motion = [k for k in motion_keys if k not in found]
    if missing_motion and motion_module is None:
        raise EmoteError(
            f"net.pth lacks {len(missing_motion)} motion-module tensors (e.g. {missing_motion[0]}): "
            "pass --motion-module mm_sd_v15_v2.ckpt (AnimateDiff v2)"
        )
    check_state(expected, found, "Hallo's files")  # missing or mis-shaped: one error naming them
    if report.unplaced and not allow_unplaced:
        shown = ", ".join(report.unplaced[:8]) + (f" and {len(report.unplaced) - 8} more" if len(report.unplaced) > 8 else "")
        raise EmoteError(
            f"{len(report.unplaced)} key(s) have no place in the {preset_name} model: {shown} "
            "(another Hallo version? pass --allow-unplaced to import without them)"
        )

    model = build_model(cfg, device="meta")
    model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, assign=True, strict=True)
    model.config = dataclasses.replace(cfg, extra={"imported_from": "hallo", "net": net.name, "net_sha256": file_sha256(net)})
    save_checkpoint(model, out)  # written beside and renamed into place: replaces a checkpoint only when complete
    return report
