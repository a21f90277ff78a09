"""Ship the trained demo model: float16 safetensors under the package, with the facts of its training.

``ship(model, work)`` writes ``emote/weights/demo/`` (``model.safetensors`` in float16,
``config.json``) through ``emote.models.checkpoint.save_checkpoint`` and
``training.json`` beside it: the data set, every stage's steps and wall time (read
from ``<work>/loss.jsonl``), the VAE's latent scale. The model card (README.md in
that folder) quotes these and the evaluation's figures.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from emote.models.checkpoint import SHIPPED, WEIGHTS, save_checkpoint
from emote.models.emo import EMOModel

BUDGET_BYTES = 25 * 1024 * 1024  # the limit for shipped weights


def stage_facts(work: Path) -> dict:
    """Steps, sessions and wall seconds of each stage, from the loss log.

    Each record's ``time`` counts from the start of its session; a resumed session
    starts its clock again, so a stage's wall time is the sum of its sessions' last times.
    """
    facts: dict[str, dict] = {}
    for line in (work / "loss.jsonl").read_text().splitlines():
        r = json.loads(line)
        s = facts.setdefault(r["stage"], {"steps": 0, "sessions": 1, "closed": 0.0, "clock": 0.0})
        if r["time"] < s["clock"]:  # a new session
            s["sessions"] += 1
            s["closed"] += s["clock"]
        s["clock"], s["steps"], s["last_loss"] = r["time"], r["step"], round(r["loss"], 5)
    return {
        k: {"steps": v["steps"], "sessions": v["sessions"], "seconds": round(v["closed"] + v["clock"], 1), "last_loss": v["last_loss"]}
        for k, v in facts.items()
    }


def save_keeping_card(model: EMOModel, dest: Path) -> None:
    """The float16 checkpoint into ``dest``, keeping the model card (README.md, written by hand) a
    previous one had: a new checkpoint replaces the folder, and the card's figures must be updated."""
    card = dest / "README.md"
    kept = card.read_text() if card.is_file() else None
    save_checkpoint(model, dest, dtype=torch.float16)
    if kept is not None:
        card.write_text(kept)


def ship(model: EMOModel, work: Path, data_meta: dict | None = None) -> Path:
    dest = SHIPPED / model.config.name
    save_keeping_card(model, dest)
    size = sum(f.stat().st_size for f in dest.iterdir() if f.is_file())
    if size > BUDGET_BYTES:
        raise SystemExit(f"{dest} holds {size / 2**20:.1f} MiB, over the {BUDGET_BYTES / 2**20:.0f} MiB budget")
    facts = {
        "preset": model.config.name,
        "parameters": model.component_parameters(),
        "weights_bytes": (dest / WEIGHTS).stat().st_size,
        "stages": stage_facts(work),
        "latent_scale": json.loads((work / "latent_scale.json").read_text())["k"] if (work / "latent_scale.json").exists() else None,
        "data": data_meta,
    }
    (dest / "training.json").write_text(json.dumps(facts, indent=1))
    print(f"wrote {dest} ({size / 2**20:.1f} MiB)")
    return dest
