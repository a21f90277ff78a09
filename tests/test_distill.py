"""The distillation recipe's pieces: its torch step loop is the runtime's, the student's sampler lands on x0,
and one training step on the shipped teacher runs, saves and resumes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from emote.models.checkpoint import load_checkpoint
from emote.models.config import ModelConfig, preset
from emote.runtime.sampler import apply_row
from training import distill


class Recorded:
    """A stand-in model whose output is a fixed function of x (so a loop can be replayed in numpy)."""

    def __init__(self):
        self.calls = []

    def model_output(self, x, t, ref, clip, guidance, uncond=None):
        self.calls.append((float(t), guidance))
        return torch.tanh(x * 0.7 + float(t) / 1000.0)


def test_torch_loop_is_the_runtime_step_graph_update():
    cfg = preset("demo")
    table = distill.table_of(cfg)  # the teacher: DPM-Solver++ 2M, 4 steps, guided first step
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 4, 4, 4), dtype=np.float32))
    model = Recorded()
    got = distill.sample(model, table, x, None, None, None)
    xs, x0_prev = x.numpy(), np.zeros_like(x.numpy())
    for row in table.rows:
        out = np.tanh(xs * 0.7 + row[0] / 1000.0)
        xs, x0_prev = apply_row(row, xs, out, x0_prev, np.zeros_like(xs))
    np.testing.assert_allclose(got.numpy(), xs, rtol=1e-5, atol=1e-5)
    assert [g for _, g in model.calls] == [2.5, None, None, None]


def test_student_sampler_is_unguided_ddim_landing_on_x0():
    cfg = distill.student_config(1)
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    one = distill.table_of(cfg)
    assert one.family == "ddim" and not one.guided.any() and list(one.timesteps) == [999]
    x = torch.randn(2, 4, 4, 4)
    model = Recorded()
    out = model.model_output(x, torch.tensor(999.0), None, None, None)
    # zero terminal SNR, v-prediction: at t = 999, x0 = -v, returned as is (set_alpha_to_one)
    torch.testing.assert_close(distill.sample(Recorded(), one, x, None, None, None), -out)
    two = distill.table_of(distill.student_config(2))
    assert list(two.timesteps) == [999, 499] and not two.guided.any()


@pytest.mark.slow
def test_one_training_step_saves_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setattr(distill, "PACKED", tmp_path / "none.safetensors")
    spec = distill.SPEC.__class__(steps=1, batch=1, lr=1e-5, save_every=1, warmup=1, ema=0.9)
    distill.train(tmp_path, spec, eval_every=0)
    state = torch.load(tmp_path / "distill.pt", map_location="cpu", weights_only=False)
    assert state["step"] == 1
    record = json.loads((tmp_path / "loss.jsonl").read_text().splitlines()[-1])
    assert record["stage"] == "distill" and np.isfinite(record["loss"])
    teacher, student, step = distill.trained_student(tmp_path)
    assert step == 1 and student.config.steps == 1 and student.config.guidance_scale == 1.0
    moved = sum(float((a - b).abs().sum()) for a, b in zip(teacher.backbone.parameters(), student.backbone.parameters()))
    assert moved > 0  # the backbone trained; the frozen parts are the teacher's
    assert all(torch.equal(a, b) for a, b in zip(teacher.reference_net.parameters(), student.reference_net.parameters()))


def test_a_new_checkpoint_keeps_the_hand_written_model_card(tmp_path):
    from emote.models.emo import build_model
    from training.ship import save_keeping_card

    dest = tmp_path / "demo-fast"
    model = build_model(preset("tiny"), seed=0)
    save_keeping_card(model, dest)
    (dest / "README.md").write_text("# Model card\nfigures\n")
    save_keeping_card(model, dest)  # a re-ship replaces the folder
    assert (dest / "README.md").read_text() == "# Model card\nfigures\n"
    assert load_checkpoint(dest, expect=preset("tiny")) is not None
