"""Checkpoints: bit-exact round trip; corrupt or mismatched files give one clear error."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from emote.errors import EmoteError
from emote.models.checkpoint import load_checkpoint, save_checkpoint
from emote.models.config import preset


def test_round_trip_is_bit_exact(tiny_model, tmp_path):
    path = save_checkpoint(tiny_model, tmp_path / "ck")
    loaded = load_checkpoint(path, expect=preset("tiny"))
    a, b = tiny_model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert loaded.config == tiny_model.config


def test_missing_unexpected_and_misshaped_keys_are_named(tiny_model, tmp_path):
    path = save_checkpoint(tiny_model, tmp_path / "ck")
    state = load_file(path / "model.safetensors")
    del state["backbone.conv_in.weight"]
    state["backbone.extra.weight"] = torch.zeros(1)
    state["vae.decoder.conv_out.bias"] = torch.zeros(7)
    save_file(state, path / "model.safetensors", metadata={"format": "emote-checkpoint/1"})
    with pytest.raises(EmoteError) as e:
        load_checkpoint(path)
    msg = str(e.value)
    assert "\n" not in msg
    assert "1 missing (backbone.conv_in.weight)" in msg
    assert "1 unexpected (backbone.extra.weight)" in msg
    assert "vae.decoder.conv_out.bias [7] != [3]" in msg


@pytest.mark.parametrize("damage", ["truncated", "garbage header", "empty"])
def test_corrupt_file(tiny_model, tmp_path, damage):
    path = save_checkpoint(tiny_model, tmp_path / "ck")
    weights = path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes({"truncated": data[: len(data) // 2], "garbage header": b"\xff" * 64 + data[64:], "empty": b""}[damage])
    with pytest.raises(EmoteError, match=f"checkpoint {path} is corrupt") as e:
        load_checkpoint(path)
    assert "\n" not in str(e.value)


def test_unreadable_config(tiny_model, tmp_path):
    path = save_checkpoint(tiny_model, tmp_path / "ck")
    (path / "config.json").write_text("{not json")
    with pytest.raises(EmoteError, match="config.json is unreadable"):
        load_checkpoint(path)


def test_wrong_preset_and_missing_folder(tiny_model, tmp_path):
    path = save_checkpoint(tiny_model, tmp_path / "ck")
    with pytest.raises(EmoteError, match="is for preset 'tiny', not 'demo'"):
        load_checkpoint(path, expect=preset("demo"))
    with pytest.raises(EmoteError, match="is not a checkpoint: no config.json"):
        load_checkpoint(tmp_path / "nothing")
    cfg = json.loads((path / "config.json").read_text())
    cfg["format"] = "other/9"
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(EmoteError, match="format"):
        load_checkpoint(path)


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset 'huge': choose one of tiny, demo, demo-fast, emo-sd15"):
        preset("huge")
