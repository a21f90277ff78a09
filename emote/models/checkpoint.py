"""Checkpoints: a folder with ``model.safetensors`` (every component) and ``config.json``.

Loading builds the model on the meta device and assigns the stored tensors
(no random initialisation, no second copy in memory), after checking every key
and shape: a mismatch is one ``EmoteError`` naming the missing, unexpected and
mis-shaped keys.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..bundle import Bundle, file_sha256
from ..errors import EmoteError
from ..folders import FolderKind, read_manifest, staged_folder
from .config import ModelConfig
from .emo import EMOModel, build_model

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
FORMAT = "emote-checkpoint/1"
CHECKPOINT = FolderKind("checkpoint", CONFIG, FORMAT, "write one with `emote import-hallo` or training/train.py")


def save_checkpoint(model: EMOModel, path: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write ``path/`` atomically (a temp folder renamed into place).

    ``dtype`` (e.g. torch.float16) stores the floating-point weights in that type to
    ship them small; loading always gives the float32 model of those stored values.
    """
    path = Path(path)
    with staged_folder(path, CHECKPOINT, force=True, option="output folder") as tmp:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        if dtype is not None:
            state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        save_file(state, tmp / WEIGHTS, metadata={"format": FORMAT, "preset": model.config.name})
        (tmp / CONFIG).write_text(json.dumps({"format": FORMAT, "model": model.config.to_dict()}, indent=1))
        for f in tmp.iterdir():
            f.chmod(0o644)
    return path


def read_config(path: str | Path) -> ModelConfig:
    path = Path(path)
    data = read_manifest(path, CHECKPOINT)
    if not (path / WEIGHTS).is_file():
        raise EmoteError(f"checkpoint {path} is incomplete: {WEIGHTS} is missing")
    try:
        return ModelConfig.from_dict(data["model"])
    except (ValueError, KeyError, TypeError) as e:
        raise EmoteError(f"checkpoint {path}: unreadable {CONFIG} ({e})") from None


def _summary(label: str, keys: list[str]) -> str:
    shown = ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
    return f"{len(keys)} {label} ({shown})"


def check_state(expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]], source: str) -> None:
    """Raise one EmoteError naming missing, unexpected and mis-shaped keys."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    misshaped = sorted(f"{k} {list(found[k])} != {list(expected[k])}" for k in set(expected) & set(found) if found[k] != expected[k])
    problems = [
        _summary(label, keys) for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)) if keys
    ]
    if problems:
        raise EmoteError(f"{source} does not match the model: " + "; ".join(problems))


def _as_float32(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.is_floating_point() else t


def load_checkpoint(path: str | Path, expect: ModelConfig | None = None, device: str = "cpu") -> EMOModel:
    """The model stored in ``path``; with ``expect``, its config must equal that preset's."""
    path = Path(path)
    cfg = read_config(path)
    if expect is not None and cfg != expect:
        diff = [k for k, v in expect.to_dict().items() if cfg.to_dict().get(k) != v]
        raise EmoteError(f"checkpoint {path} is for preset {cfg.name!r}, not {expect.name!r} (differs in: {', '.join(diff)})")
    model = build_model(cfg, device="meta")
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    try:
        with safe_open(path / WEIGHTS, framework="pt", device=device) as f:
            found = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 - safe_open is not iterable
            check_state(expected, found, f"checkpoint {path}")
            # weights may be stored in float16 to ship small: the model computes in float32
            state = {k: _as_float32(f.get_tensor(k)) for k in f.keys()}  # noqa: SIM118 - safe_open is not iterable
    except (SafetensorError, OSError, ValueError) as e:
        raise EmoteError(f"checkpoint {path} is corrupt: {e}") from None
    model.load_state_dict(state, assign=True)
    return model.eval()


SHIPPED = Path(__file__).resolve().parent.parent / "weights"


def shipped_checkpoint(preset_name: str) -> Path | None:
    """The checkpoint shipped inside the package for a preset (the trained demo model), if any."""
    path = SHIPPED / preset_name
    return path if (path / WEIGHTS).is_file() else None


def resolve_model(preset_name: str, checkpoint: str | Path | None = None, seed: int = 0) -> tuple[EMOModel, dict]:
    """The model to export and where its weights came from (recorded in the bundle's manifest).

    A checkpoint if given (it must be of ``preset_name``); else the shipped weights of
    the preset; else random weights from ``seed`` (the video will be noise).
    """
    from .config import preset

    try:
        cfg = preset(preset_name)
    except ValueError as e:
        raise EmoteError(str(e)) from None
    if checkpoint is None:
        checkpoint = shipped_checkpoint(preset_name)
        source = "shipped"
    else:
        source = "checkpoint"
    if checkpoint is None:
        return build_model(cfg, seed=seed), {"source": "random", "seed": seed}
    model = load_checkpoint(checkpoint)
    if model.config.name != cfg.name:
        raise EmoteError(f"checkpoint {checkpoint} is for preset {model.config.name!r}, not {preset_name!r}")
    info = {"source": source, "sha256": file_sha256(Path(checkpoint) / WEIGHTS)}
    if source == "checkpoint":
        info["path"] = str(checkpoint)
    return model, info


def model_for_bundle(bundle: Bundle, checkpoint: str | Path | None = None) -> EMOModel:
    """Rebuild the PyTorch model a bundle was exported from (for `emote verify`)."""
    from .config import ModelConfig

    cfg = ModelConfig.from_dict(bundle.model)
    weights = bundle.weights
    if checkpoint is None and weights["source"] == "random":
        return build_model(cfg, seed=weights["seed"])
    if checkpoint is None:
        checkpoint = shipped_checkpoint(cfg.name) if weights["source"] == "shipped" else weights.get("path")
        if checkpoint is None or not Path(checkpoint).exists():
            raise EmoteError(f"the bundle was exported from checkpoint {weights.get('path')}: pass --checkpoint PATH")
    model = load_checkpoint(checkpoint)
    if "sha256" in weights and file_sha256(Path(checkpoint) / WEIGHTS) != weights["sha256"]:
        raise EmoteError(f"checkpoint {checkpoint} is not the one this bundle was exported from (sha256 differs)")
    return model.with_geometry(frames=cfg.frames, resolution=cfg.resolution)
