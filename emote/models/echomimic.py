"""EchoMimic v1's released weights -> an emote checkpoint of an ``echomimic`` preset (`emote import-echomimic`).

EchoMimic (github.com/antgroup/echomimic, Apache-2.0) ships four ``torch.save`` state dicts in
``pretrained_weights/``, each under the diffusers/AnimateDiff names our one architecture uses:

| file                                  | ours            | what it holds                                         |
| ------------------------------------- | --------------- | ----------------------------------------------------- |
| reference_unet.pth                    | reference_net.  | SD1.5 UNet without attn2/norm2 and without its head   |
| denoising_unet.pth (_acc: distilled)  | backbone.       | SD1.5 UNet, attn2 to_k/to_v on whisper's 384 wide tokens |
| motion_module.pth (_acc: distilled)   | backbone.       | 21 AnimateDiff motion modules (every block, mid included) |
| face_locator.pth                      | face_locator.   | face-mask convolutions                                |

EchoMimic multiplies every attn2 output by ``audio_feature_ratio`` = 3.0; attn2 is linear in its
output projection, so the ratio is folded into ``attn2.to_out.0`` here (weight and bias x 3).
EchoMimic loads ``denoising_unet.pth`` with ``strict=False``, which keeps the base UNet's weight for
any key the file lacks; here a missing key is an error unless ``--base-unet`` names the base UNet
folder explicitly, and then each filled key is listed. The VAE comes from ``sd-vae-ft-mse``, whisper-
tiny from OpenAI's ``tiny.pt`` (as EchoMimic ships it, ``audio_processor/whisper_tiny.pt``) or a
transformers folder; only whisper's encoder is kept. Every tensor lands in fp32.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import torch

from ..errors import EmoteError
from .hallo import ImportReport, _pretrained, load_state_file

AUDIO_RATIO = 3.0  # EchoMimic's audio_feature_ratio (src/models/mutual_self_attention.py)
FILES = {"reference_unet": "reference_net.", "denoising_unet": "backbone.", "motion_module": "backbone.", "face_locator": "face_locator."}
ACC = ("denoising_unet", "motion_module")  # the distilled files: <name>_acc.pth
HALLO_PREFIXES = ("reference_unet.", "denoising_unet.", "face_locator.", "imageproj.", "audioproj.")

# OpenAI whisper's encoder names <-> transformers' WhisperEncoder names ({}: a block index)
WHISPER_NAMES = (
    ("encoder.conv1.", "conv1."),
    ("encoder.conv2.", "conv2."),
    ("encoder.positional_embedding", "embed_positions.weight"),
    ("encoder.blocks.{}.attn.query.", "layers.{}.self_attn.q_proj."),
    ("encoder.blocks.{}.attn.key.", "layers.{}.self_attn.k_proj."),
    ("encoder.blocks.{}.attn.value.", "layers.{}.self_attn.v_proj."),
    ("encoder.blocks.{}.attn.out.", "layers.{}.self_attn.out_proj."),
    ("encoder.blocks.{}.attn_ln.", "layers.{}.self_attn_layer_norm."),
    ("encoder.blocks.{}.mlp.0.", "layers.{}.fc1."),
    ("encoder.blocks.{}.mlp.2.", "layers.{}.fc2."),
    ("encoder.blocks.{}.mlp_ln.", "layers.{}.final_layer_norm."),
    ("encoder.ln_post.", "layer_norm."),
)


def _rename(key: str, src: int) -> str | None:
    for names in WHISPER_NAMES:
        theirs, ours = names[src], names[1 - src]
        m = re.match(re.escape(theirs).replace(r"\{\}", r"(\d+)"), key)
        if m and (theirs.endswith(".") or m.end() == len(key)):
            return ours.format(*m.groups()) + key[m.end() :]
    return None


def whisper_from_openai(key: str) -> str | None:
    """transformers' name of an OpenAI whisper encoder key; None for the decoder's and unknown keys."""
    return _rename(key, 0)


def openai_from_whisper(key: str) -> str | None:
    """OpenAI's name of a transformers WhisperEncoder key (the inverse)."""
    return _rename(key, 1)


def _whisper_state(path: Path, report: ImportReport) -> dict[str, torch.Tensor]:
    """whisper-tiny's encoder tensors under transformers' names, from tiny.pt or a transformers folder."""
    if path.is_dir():
        from transformers import WhisperModel

        model = _pretrained(WhisperModel, path, "--whisper", "transformers whisper model")
        return dict(model.encoder.state_dict())
    if not path.is_file():
        raise EmoteError(f"--whisper {path}: no such file or folder")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for a file that is not a checkpoint
        raise EmoteError(f"--whisper {path} is not a readable checkpoint ({type(e).__name__}: {e})") from None
    state = data.get("model_state_dict") if isinstance(data, dict) else None
    if not isinstance(state, dict):
        raise EmoteError(f"--whisper {path} is not OpenAI's whisper checkpoint (no model_state_dict; a transformers folder also works)")
    out, decoder = {}, 0
    for key, tensor in state.items():
        ours = whisper_from_openai(key)
        if ours is not None:
            out[ours] = tensor
        elif key.startswith("decoder."):
            decoder += 1
        else:
            report.unplaced.append(f"whisper:{key}")
    report.notes.append(f"whisper: the encoder is kept, {decoder} decoder tensors are not used")
    return out


def weight_files(weights: Path, acc: bool) -> dict[str, Path]:
    """EchoMimic's four files in ``weights``, the distilled ones with ``acc``."""
    if not weights.is_dir():
        raise EmoteError(f"--weights {weights}: not a folder (EchoMimic's pretrained_weights/)")
    names = {f: weights / (f"{f}_acc.pth" if acc and f in ACC else f"{f}.pth") for f in FILES}
    lacking = [p.name for p in names.values() if not p.is_file()]
    if lacking:
        raise EmoteError(f"--weights {weights} lacks {', '.join(lacking)}")
    return names


def import_echomimic(
    weights: str | Path,
    out: str | Path,
    *,
    acc: bool = False,
    sd_vae: str | Path | None = None,
    whisper: str | Path | None = None,
    base_unet: str | Path | None = None,
    preset_name: str | None = None,
    force: bool = False,
) -> ImportReport:
    """Map EchoMimic's files into one checkpoint folder ``out``; returns what was placed where."""
    from diffusers import AutoencoderKL

    from ..bundle import file_sha256
    from ..folders import check_target
    from .checkpoint import CHECKPOINT, check_state, save_checkpoint
    from .config import preset
    from .emo import build_model

    weights, out = Path(weights), Path(out)
    sd_vae = Path(sd_vae) if sd_vae is not None else weights / "sd-vae-ft-mse"
    whisper = Path(whisper) if whisper is not None else weights / "audio_processor" / "whisper_tiny.pt"
    preset_name = preset_name or ("echomimic-acc" if acc else "echomimic")
    check_target(out, CHECKPOINT, force, "-o")  # before minutes of loading
    try:
        cfg = preset(preset_name)
    except ValueError as e:
        raise EmoteError(str(e)) from None
    if cfg.family != "echomimic":
        raise EmoteError(f"preset {preset_name!r} is not an EchoMimic model: use echomimic, echomimic-acc or echomimic-tiny")
    files = weight_files(weights, acc)
    expected = {k: tuple(v.shape) for k, v in build_model(cfg, device="meta").state_dict().items()}
    report = ImportReport()
    state: dict[str, torch.Tensor] = {}

    for name, path in files.items():
        loaded = load_state_file(path, f"--weights {path.name}:")
        if all(k.startswith(HALLO_PREFIXES) for k in loaded):
            raise EmoteError(
                f"{path} holds Hallo's net.pth keys ({next(iter(loaded))}, ...), not EchoMimic's {name}: use emote import-hallo"
            )
        prefix = FILES[name]
        for key, tensor in loaded.items():
            ours = prefix + key
            if ours in state:
                raise EmoteError(f"{path.name}: {key} is also in another of EchoMimic's files")
            state[ours] = tensor
        report.placed[path.name] = len(loaded)

    if base_unet is not None:
        from diffusers import UNet2DConditionModel

        base = _pretrained(UNet2DConditionModel, Path(base_unet), "--base-unet", "diffusers UNet2DConditionModel").state_dict()
        filled = []
        for key, tensor in base.items():
            ours = "backbone." + key
            if ours in expected and ours not in state and ".motion_modules." not in ours and tuple(tensor.shape) == expected[ours]:
                state[ours] = tensor
                filled.append(key)
        if filled:
            report.placed["base UNet (keys denoising_unet.pth lacks)"] = len(filled)
            report.notes.append(f"filled from --base-unet {base_unet}: {', '.join(filled)}")

    vae = _pretrained(AutoencoderKL, sd_vae, "--sd-vae", "diffusers AutoencoderKL")
    for key, tensor in vae.state_dict().items():
        state["vae." + key] = tensor
    report.placed["sd-vae"] = len(vae.state_dict())
    encoder = _whisper_state(whisper, report)
    for key, tensor in encoder.items():
        state["audio_encoder.whisper." + key] = tensor
    report.placed["whisper"] = len(encoder)

    found = {k: tuple(v.shape) for k, v in state.items()}
    check_state(expected, found, "EchoMimic's files")  # missing, unexpected or mis-shaped: one error naming them
    if report.unplaced:
        raise EmoteError(f"{len(report.unplaced)} key(s) have no place in the {preset_name} model: {', '.join(report.unplaced[:8])}")

    folded = 0
    for key in state:
        if key.startswith("backbone.") and ".attn2.to_out.0." in key:
            state[key] = state[key].to(torch.float32) * AUDIO_RATIO  # attn2(x) x 3 == attn2 with to_out x 3
            folded += 1
    report.notes.append(f"audio_feature_ratio {AUDIO_RATIO} folded into {folded} attn2.to_out.0 tensors")

    model = build_model(cfg, device="meta")
    model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, assign=True, strict=True)
    denoising = files["denoising_unet"]
    extra = {"imported_from": "echomimic", "denoising_unet": denoising.name, "denoising_unet_sha256": file_sha256(denoising)}
    model.config = dataclasses.replace(cfg, extra=extra)
    save_checkpoint(model, out)  # written beside and renamed into place: replaces a checkpoint only when complete
    return report
