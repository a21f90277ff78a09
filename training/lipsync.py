"""The lip-sync expert: a small CNN that reads the mouth opening of a 128 px portrait frame.

    python -m training.lipsync --data build/data/train --heldout build/data/heldout --work build/train

SyncNet plays this role for real faces; here the generator knows the truth, so the
reader is trained on it: frames of the synthetic data set (``training.data``) and
the same frames through the demo model's trained VAE (so that it also reads the
softer mouths of generated frames), with small shifts, brightness and contrast
changes and noise; target: the generator's per-frame mouth opening. Writes
``emote/weights/lipsync/mouth.onnx`` (uint8 frames in, opening out; the mouth
region is cut inside the graph) and prints its accuracy on held-out people.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from emote.bench.lipsync import MODEL, MOUTH_REGION, pearson
from training.data import Dataset

STEPS, BATCH, LR = 2500, 64, 2e-3
VAE_FRAMES = 6000  # frames passed through the VAE once, as the "generated" half of every batch


class MouthNet(nn.Module):
    """uint8 (N, 128, 128, 3) -> (N,) mouth opening in [0, 1]."""

    def __init__(self):
        super().__init__()

        def block(a, b, stride):
            return [nn.Conv2d(a, b, 3, stride, 1), nn.BatchNorm2d(b), nn.ReLU()]

        self.net = nn.Sequential(
            *block(3, 16, 1),
            *block(16, 32, 2),
            *block(32, 32, 1),
            *block(32, 64, 2),
            *block(64, 64, 2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(64, 1),
            nn.Sigmoid(),
        )

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        rows, cols = MOUTH_REGION
        x = frames[:, rows, cols].permute(0, 3, 1, 2).float() / 127.5 - 1.0
        return self.net(x)[:, 0]


def augment(batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shifts of up to 3 px, brightness and contrast, sensor noise: what generated frames vary in."""
    out = np.empty_like(batch)
    for i, f in enumerate(batch):
        f = np.roll(f, (int(rng.integers(-3, 4)), int(rng.integers(-3, 4))), axis=(0, 1)).astype(np.float32)
        f = (f - 128.0) * rng.uniform(0.8, 1.2) + 128.0 + rng.uniform(-20, 20)
        f += rng.normal(0, rng.uniform(0, 4), f.shape)
        out[i] = np.clip(f, 0, 255).astype(np.uint8)
    return out


@torch.no_grad()
def vae_frames(work: Path, data: Dataset, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A fixed subset of frames through the trained VAE (encode, decode) and their frame indices."""
    from training.train import pixels, trained_model

    cache = work / "lipsync_vae_frames.npz"
    if cache.exists():
        with np.load(cache) as z:
            return z["frames"], z["index"]
    model = trained_model(work, "vae")
    idx = np.sort(rng.choice(data.meta["total_frames"], VAE_FRAMES, replace=False))
    frames = np.concatenate(
        [
            model.decode_latents(model.encode_image(pixels(data.frames[idx[i : i + 64]]))).numpy()
            for i in tqdm(range(0, len(idx), 64), desc="VAE round trips", unit="batch")
        ]
    )
    np.savez(cache, frames=frames, index=idx)
    return frames, idx


def evaluate(net: MouthNet, data: Dataset) -> dict:
    net.eval()
    with torch.no_grad():
        pred = np.concatenate(
            [
                net(torch.from_numpy(np.ascontiguousarray(data.frames[i : i + 256]))).numpy()
                for i in range(0, data.meta["total_frames"], 256)
            ]
        )
    truth = data.index["mouth_open"]
    net.train()
    return {"pearson": round(pearson(pred, truth), 4), "mae": round(float(np.abs(pred - truth).mean()), 4), "frames": int(len(truth))}


def export(net: MouthNet, path: Path) -> None:
    net.eval()
    example = torch.zeros(8, 128, 128, 3, dtype=torch.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "mouth.onnx"
        torch.onnx.export(
            net,
            (example,),
            str(out),
            input_names=["frames"],
            output_names=["opening"],
            dynamic_shapes={"frames": {0: torch.export.Dim("n", min=1, max=100000)}},
            dynamo=True,
            external_data=False,
            opset_version=18,
        )
        os.replace(out, path)


def main() -> None:
    ap = argparse.ArgumentParser(description="Train the mouth-opening reader of the lip-sync measure.")
    ap.add_argument("--data", default="build/data/train")
    ap.add_argument("--heldout", default="build/data/heldout")
    ap.add_argument("--work", default="build/train")
    ap.add_argument("--out", default=str(MODEL))
    args = ap.parse_args()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    data, work = Dataset.open(args.data), Path(args.work)
    vae_imgs, vae_idx = vae_frames(work, data, rng)
    truth = data.index["mouth_open"]
    net = MouthNet()
    opt = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=STEPS)
    bar = tqdm(range(STEPS), desc="mouth reader", unit="step")
    for _ in bar:
        half = BATCH // 2
        raw = np.sort(rng.integers(data.meta["total_frames"], size=half))
        gen = rng.integers(len(vae_idx), size=BATCH - half)
        frames = np.concatenate([data.frames[raw], vae_imgs[gen]])
        target = torch.from_numpy(np.concatenate([truth[raw], truth[vae_idx[gen]]]))
        loss = nn.functional.mse_loss(net(torch.from_numpy(augment(frames, rng))), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{float(loss):.4f}")
    report = {"train": evaluate(net, data)}
    if Path(args.heldout).exists():
        report["heldout"] = evaluate(net, Dataset.open(args.heldout))
    export(net, Path(args.out))
    (work / "lipsync_report.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
